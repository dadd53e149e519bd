"""Flan-T5 text encoder for TextSynch (spec §2.1), run through HF `transformers` as SELVA does.

The published model is `google/flan-t5-base`, loaded from a local folder of its hub files. The
`tiny` variant builds a small T5 encoder with seeded random weights and a small Unigram tokenizer
made here, so the same `encode` path runs offline and gives the same ids and features every run.
"""

import math
import string
from collections import Counter
from pathlib import Path

import torch
import transformers
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

from ..errors import CheckpointError, PromptError, UsageError
from ..variants import T5Config, Variant
from .checkpoint import load_strict

# Seed of the `tiny` variant's T5 weights.
TINY_SEED = 6

# T5's fixed special ids: pad 0, eos 1, unk 2.
PAD, EOS, UNK = "<pad>", "</s>", "<unk>"

# The text the tiny tokenizer's vocabulary is counted from: prompts like SELVA's.
_TINY_CORPUS = """
a dog barks in the distance while cars pass by on a busy street
the sound of rain falling on a tin roof with thunder rumbling
a man is speaking to a crowd and people are clapping their hands
birds are chirping and singing in the forest in the morning
an engine starts and a motorcycle accelerates down the road
a baby is crying and a woman talks softly to calm it down
water is running from a tap and dishes clatter in a kitchen sink
a train horn blows as the train passes over the railway tracks
someone plays a guitar and sings a song with a drum beat
wind is blowing through the trees and leaves are rustling
footsteps on a wooden floor and a door closes with a loud bang
a cat meows and purrs while a clock ticks in the quiet room
sheep bleating on a farm with a cow mooing and a rooster crowing
an airplane flies overhead with a loud roaring jet engine noise
people laughing and glasses clinking at a party with music playing
a helicopter hovers and its blades are chopping the air
waves crash on the beach and seagulls call over the ocean
typing on a keyboard and a phone ringing in an office
"""


def hf_config(config: T5Config) -> transformers.T5Config:
    """The transformers config of a Flan-T5 encoder with `config`'s geometry (flan-t5-base's
    gated-GELU feed-forward, 32 relative-position buckets up to distance 128, eps 1e-6)."""
    return transformers.T5Config(
        vocab_size=config.vocab_size,
        d_model=config.d_model,
        d_kv=config.d_kv,
        d_ff=config.d_ff,
        num_layers=config.num_layers,
        num_heads=config.num_heads,
        relative_attention_num_buckets=32,
        relative_attention_max_distance=128,
        feed_forward_proj="gated-gelu",
        layer_norm_epsilon=1e-6,
        dropout_rate=0.0,
        tie_word_embeddings=False,
        is_encoder_decoder=True,
        use_cache=False,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )


def random_official_state(config: T5Config, seed: int) -> dict[str, torch.Tensor]:
    """A deterministic random `T5EncoderModel` state dict (the layout of flan-t5's
    model.safetensors, encoder keys only), scaled like T5's own initialisation."""
    g = torch.Generator().manual_seed(seed)

    def normal(*shape: int, std: float) -> torch.Tensor:
        return torch.randn(*shape, generator=g) * std

    d, inner, ff = config.d_model, config.num_heads * config.d_kv, config.d_ff
    state = {"shared.weight": normal(config.vocab_size, d, std=1.0)}
    state["encoder.embed_tokens.weight"] = state["shared.weight"]  # tied in the module
    for i in range(config.num_layers):
        att = f"encoder.block.{i}.layer.0."
        mlp = f"encoder.block.{i}.layer.1."
        # T5 attention has no 1/sqrt(d_kv) logit scale: it lives in the q initialisation.
        state[att + "SelfAttention.q.weight"] = normal(inner, d, std=(d * config.d_kv) ** -0.5)
        state[att + "SelfAttention.k.weight"] = normal(inner, d, std=d**-0.5)
        state[att + "SelfAttention.v.weight"] = normal(inner, d, std=d**-0.5)
        state[att + "SelfAttention.o.weight"] = normal(d, inner, std=inner**-0.5)
        if i == 0:  # only the first block owns the relative-position bias table
            state[att + "SelfAttention.relative_attention_bias.weight"] = normal(
                32, config.num_heads, std=0.5
            )
        state[att + "layer_norm.weight"] = 1 + normal(d, std=0.05)
        state[mlp + "DenseReluDense.wi_0.weight"] = normal(ff, d, std=d**-0.5)
        state[mlp + "DenseReluDense.wi_1.weight"] = normal(ff, d, std=d**-0.5)
        state[mlp + "DenseReluDense.wo.weight"] = normal(d, ff, std=ff**-0.5)
        state[mlp + "layer_norm.weight"] = 1 + normal(d, std=0.05)
    state["encoder.final_layer_norm.weight"] = 1 + normal(d, std=0.05)
    return state


def _tiny_vocab(size: int) -> list[tuple[str, float]]:
    """A Unigram vocabulary of `size` pieces: T5's specials, every printable ASCII character (so
    only non-ASCII text meets <unk>), then the most useful word pieces of `_TINY_CORPUS`, each
    scored by its log frequency. Counting and sorting make it the same on every run."""
    words = Counter("▁" + w for w in _TINY_CORPUS.split())
    counts: Counter[str] = Counter()
    for word, n in words.items():
        for i in range(len(word)):
            for j in range(i + 2, min(len(word), i + 8) + 1):
                counts[word[i:j]] += n
    chars = ["▁", *string.printable[:94]]
    room = size - 3 - len(chars)
    # Longer frequent pieces save the most tokens; the piece itself breaks ties.
    pieces = sorted(counts.items(), key=lambda kv: (-kv[1] * (len(kv[0]) - 1), kv[0]))[:room]
    total = sum(counts.values())
    vocab = [(PAD, 0.0), (EOS, 0.0), (UNK, 0.0)]
    vocab += [(c, math.log(1 / total) - 1.0) for c in chars]
    vocab += [(p, math.log(n / total)) for p, n in pieces]
    return vocab


def tiny_tokenizer(config: T5Config) -> transformers.PreTrainedTokenizerFast:
    """A T5-style tokenizer with `config.vocab_size` pieces, made locally: Unigram over the
    pieces of `_tiny_vocab`, T5's metaspace pre-tokenizer, no lowercasing, `</s>` appended."""
    tok = Tokenizer(models.Unigram(_tiny_vocab(config.vocab_size), unk_id=2, byte_fallback=False))
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.WhitespaceSplit(),
            pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True),
        ]
    )
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    tok.post_processor = processors.TemplateProcessing(
        single=["$A", EOS], pair=["$A", EOS, "$B", EOS], special_tokens=[(EOS, 1)]
    )
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token=PAD,
        eos_token=EOS,
        unk_token=UNK,
        model_max_length=config.max_length,
    )


class T5TextEncoder:
    """Flan-T5 tokenizer + encoder, called the way SELVA calls them (spec §2.1)."""

    def __init__(
        self,
        model: transformers.T5EncoderModel | None,
        tokenizer: transformers.PreTrainedTokenizerFast | None,
        pad_to: int | None = None,
    ):
        self.model = model.eval() if model is not None else None  # None: tokenizer only
        self.tokenizer = tokenizer  # None: the model only (the family holds the tokenizer)
        if tokenizer is not None:
            tokenizer.padding_side = "right"
        self.pad_to = pad_to  # T5Config.pad_to

    @property
    def device(self) -> torch.device:
        return self.model.device

    def to(
        self, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> "T5TextEncoder":
        """Move and/or cast the whole encoder (the demo casts every layer, `wo` included)."""
        self.model.to(device=device, dtype=dtype)
        return self

    def tokenize(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids [B, L] int64 and mask [B, L] bool (True = real token), right-padded with 0
        to the longest prompt (or to `pad_to`), truncated to `model_max_length` (or `pad_to`),
        `</s>` last."""
        if not prompts or not all(isinstance(p, str) for p in prompts):
            raise PromptError("prompts must be a non-empty list of strings")
        batch = self.tokenizer(
            prompts,
            max_length=self.pad_to or self.tokenizer.model_max_length,
            padding="max_length" if self.pad_to else True,
            truncation=True,
            return_tensors="pt",
        )
        return batch["input_ids"], batch["attention_mask"] == 1

    @torch.inference_mode()
    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """ids: [B, L] int64, mask: [B, L] bool -> last_hidden_state [B, L, D] float32.
        Padded rows hold non-zero states; only the mask excludes them downstream."""
        out = self.model(
            input_ids=ids.to(self.device), attention_mask=mask.to(self.device, torch.long)
        )
        return out.last_hidden_state.float()

    def encode(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """prompts -> (features [B, L, D] float32 on the model's device, mask [B, L] bool on the
        CPU). A bf16 model's output is widened to fp32 exactly."""
        ids, mask = self.tokenize(prompts)
        return self.forward(ids, mask), mask


def _check_geometry(found: transformers.T5Config, config: T5Config, source: str) -> None:
    wrong = [
        f"{k}={getattr(found, k)} (expected {getattr(config, k)})"
        for k in ("d_model", "num_layers", "num_heads", "d_kv", "d_ff", "vocab_size")
        if getattr(found, k) != getattr(config, k)
    ]
    if wrong:
        raise CheckpointError(f"{source} is not the expected Flan-T5 encoder: {', '.join(wrong)}")


def from_folder(folder: str | Path, config: T5Config, tokenizer: bool = True) -> T5TextEncoder:
    """Load `T5EncoderModel` (fp32) and the tokenizer from a folder of the hub files
    (config.json, model.safetensors, tokenizer.json, tokenizer_config.json, ...), strictly: the
    geometry must be `config`'s and every encoder weight must be in the file, with its shape.

    The tokenizer is tokenizer.json as published, which is what SELVA's `T5TokenizerFast`
    (transformers 4) runs. transformers 5's T5 tokenizer class instead rebuilds the pipeline
    from the vocabulary and drops the file's own pre-tokenizer, so it is not used."""
    folder = Path(folder)
    source = f"Flan-T5 folder {folder}"
    if not (folder / "config.json").is_file():
        raise CheckpointError(f"{source} has no config.json")
    try:
        hf = transformers.T5Config.from_pretrained(folder, local_files_only=True)
        _check_geometry(hf, config, source)
        model, info = transformers.T5EncoderModel.from_pretrained(
            folder, config=hf, dtype=torch.float32, local_files_only=True, output_loading_info=True
        )
        tokenizer = (
            transformers.PreTrainedTokenizerFast.from_pretrained(folder, local_files_only=True)
            if tokenizer
            else None
        )
    except (OSError, ValueError, RuntimeError) as e:  # a misshaped weight is a RuntimeError
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"cannot load {source}: {first}") from e
    # from_pretrained fills absent weights with random ones and only logs it; refuse instead.
    missing = sorted(info["missing_keys"])
    if missing:
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise CheckpointError(f"{source}: model.safetensors lacks {', '.join(missing[:5])}{more}")
    return T5TextEncoder(model, tokenizer, config.pad_to)


def random_encoder(
    config: T5Config, seed: int = TINY_SEED, tokenizer: bool = True
) -> T5TextEncoder:
    """A T5 encoder with `random_official_state(config, seed)` weights and the tiny tokenizer."""
    model = transformers.T5EncoderModel(hf_config(config))
    load_strict(model, random_official_state(config, seed), f"random T5 weights (seed {seed})")
    return T5TextEncoder(model, tiny_tokenizer(config) if tokenizer else None, config.pad_to)


def load_t5(
    variant: Variant, weights_dir: str | Path | None = None, tokenizer: bool = True
) -> T5TextEncoder:
    """The Flan-T5 encoder of `variant` (fp32, CPU): made locally for a random-weight variant,
    else loaded from `weights_dir`, the folder of its Flan-T5 hub files. `tokenizer=False`:
    the model alone (the runtime's families hold the tokenizer, whatever backend runs it)."""
    if variant.t5 is None:
        raise UsageError(f"variant {variant.name} takes no Flan-T5 prompt encoder")
    if variant.random_weights:
        return random_encoder(variant.t5, tokenizer=tokenizer)
    if weights_dir is None:
        raise UsageError(f"variant {variant.name} needs the folder of its Flan-T5 files")
    return from_folder(weights_dir, variant.t5, tokenizer)


def load_tokenizer(variant: Variant, weights_dir: str | Path | None = None) -> T5TextEncoder:
    """Only the tokenizer of `variant`'s Flan-T5 (for backends that run the encoder from engines):
    a `T5TextEncoder` whose `tokenize` works and that holds no model."""
    if variant.t5 is None:
        raise UsageError(f"variant {variant.name} takes no Flan-T5 prompt encoder")
    if variant.random_weights:
        return T5TextEncoder(None, tiny_tokenizer(variant.t5), variant.t5.pad_to)
    try:
        tokenizer = transformers.PreTrainedTokenizerFast.from_pretrained(
            weights_dir, local_files_only=True
        )
    except (OSError, ValueError) as e:
        raise CheckpointError(f"cannot load the Flan-T5 tokenizer from {weights_dir}: {e}") from e
    return T5TextEncoder(None, tokenizer, variant.t5.pad_to)
