"""Every network of a VATT variant, constructed and loaded from the official files.

The official inference loads, in this order (VATT.md §3): the base LLM folder
(`from_pretrained`), the LoRA + video_proj delta into the PeftModel (`load_state_dict(strict=
False)`), then the Lightning checkpoint into the whole V2TA (`strict=False`; VATT Audio under
`audio_token_decoder.`, and the frozen LLM under `encoder.` if Lightning saved it), and the
codebook file into VATT Audio. Later files override earlier ones, as there. Unlike there, every
key of every file must be understood and every weight must arrive: anything else is refused in
one line naming the file and the keys.

Memory of the weights (parameter and buffer counts of these modules, `parameter_counts`, times
bytes; GB = 1e9 bytes; activations are small: at most 74 LLM positions, 2 x ~560 VATT Audio rows):
  network                       count     fp32      fp16/bf16
  eva02-L image tower           304.4 M   1.22 GB   0.61 GB
  Vicuna-7B converter           6.619 B   26.5 GB   13.2 GB  (the base file's 131 M lm_head is
                                                               not kept: VATT replaces it; the
                                                               file itself is 13.5 GB in fp16)
  gemma-2b converter            2.510 B   10.0 GB   5.0 GB   (0.524 B of it: word embeddings)
  VATT Audio (LLaMA / Gemma)    417.5 / 415.4 M  1.67 GB  0.83 GB  (incl. 1.05 M codebooks)
  Encodec 16 kHz                57.9 M    0.23 GB   0.12 GB  (the decoder, 28.4 M, is what runs)
The converter runs once per prompt and can be released before the audio stage, so the peak is
the converter alone: VATT-LLaMA needs about 13.2 GB in fp16 (a 16 GB GPU), VATT-Gemma about
5.0 GB; eva02 + VATT Audio + Encodec together about 1.6 GB in fp16. (Counted, not measured on
a GPU.)
"""

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..errors import CheckpointError, UsageError
from ..variants import Variant, VattConfig, VattConverterConfig
from . import eva02 as eva02_mod
from . import vatt_audio as audio_mod
from . import vatt_converter as conv_mod
from .checkpoint import StateDict, load_object, read_hf_folder, read_state_dict
from .encodec import Encodec
from .encodec import random_official_state as random_encodec_state
from .eva02 import Eva02Vision
from .vatt_audio import VattAudio
from .vatt_converter import PromptTokenizer, VattConverter

AUDIO_PREFIX = "audio_token_decoder."
# Fixed seeds of tiny-vatt's locally made weights, one per network.
TINY_VATT_SEEDS = {"image": 21, "converter": 22, "audio": 23, "encodec": 24}


@dataclass
class VattNetworks:
    image: Eva02Vision
    converter: VattConverter
    audio: VattAudio
    encodec: Encodec
    tokenizer: PromptTokenizer


def read_lightning(path: str | Path) -> tuple[StateDict, StateDict]:
    """A VATT Lightning checkpoint's `state_dict` -> (VT2AModel keys without the
    `audio_token_decoder.` prefix, the LLM keys `encoder.*` as stored; empty if not saved)."""
    state = read_state_dict(path, entry="state_dict")
    audio = {k[len(AUDIO_PREFIX) :]: v for k, v in state.items() if k.startswith(AUDIO_PREFIX)}
    # Gemma's V2TA also holds its word embeddings (`embed_tokens.weight`); the official code
    # loads word_embeds.pth after the checkpoint, so that copy is never used.
    llm = {k: v for k, v in state.items() if k.startswith("encoder.") or k == "embed_tokens.weight"}
    other = [k for k in state if k not in llm and not k.startswith(AUDIO_PREFIX)]
    if not audio or other:
        found = ", ".join(other[:3] or list(state)[:3])
        raise CheckpointError(
            f"{path} is not a VATT checkpoint: expected audio_token_decoder.* and encoder.* keys, "
            f"found {found}{' ...' if len(state) > 3 else ''}"
        )
    return audio, llm


def read_codebooks(path: str | Path) -> torch.Tensor:
    """`meta_pretrain_vgg_encodec_embed.pt` -> [K, V, latent]: a tensor of that shape or a list
    of K [V, latent] tensors (the official code only indexes it, codec[k])."""
    obj = load_object(path)
    if isinstance(obj, (list, tuple)) and obj and all(isinstance(t, torch.Tensor) for t in obj):
        if len({tuple(t.shape) for t in obj}) == 1 and obj[0].dim() == 2:
            obj = torch.stack(list(obj))
    if not isinstance(obj, torch.Tensor) or obj.dim() != 3:
        what = tuple(obj.shape) if isinstance(obj, torch.Tensor) else type(obj).__name__
        raise CheckpointError(f"{path} is not a codebook file ([K, V, latent] tensor): {what}")
    return obj


def read_word_embeds(path: str | Path) -> torch.Tensor:
    """Gemma's `word_embeds.pth` -> [vocab, hidden]."""
    obj = load_object(path)
    if not isinstance(obj, torch.Tensor) or obj.dim() != 2:
        raise CheckpointError(f"{path} is not a word-embedding matrix [vocab, hidden]")
    return obj


def converter_config(folder: Path, config: VattConverterConfig) -> VattConverterConfig:
    """The base LLM folder's config.json checked against `config`; its RMSNorm eps is the one
    used (1e-6 or 1e-5 depending on the Vicuna release, unverified)."""
    path = folder / "config.json"
    try:
        hf = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"cannot read {path}: {e}") from e
    expected = {
        "hidden_size": config.hidden,
        "num_hidden_layers": config.layers,
        "num_attention_heads": config.heads,
        "intermediate_size": config.intermediate,
        "vocab_size": config.vocab_size,
    }
    wrong = [f"{k} {hf.get(k)} (expected {v})" for k, v in expected.items() if hf.get(k) != v]
    if wrong:
        raise CheckpointError(f"{path} is not the {config.family} base of VATT: {', '.join(wrong)}")
    return dataclasses.replace(config, rms_eps=float(hf.get("rms_norm_eps", config.rms_eps)))


def converter_state(
    config: VattConverterConfig,
    files: list[tuple[str, Mapping[str, torch.Tensor]]],
    word_embeds: torch.Tensor | None,
) -> dict[str, torch.Tensor]:
    """The converter's weights from (source, official state) pairs in the official load order,
    later ones overriding earlier ones; Gemma's word embeddings come from their own file."""
    state: dict[str, torch.Tensor] = {}
    for source, part in files:
        state.update(conv_mod.runtime_state(part, config, source))
    if word_embeds is not None:
        state["embed_tokens.weight"] = word_embeds
    return state


def parameter_counts(config: VattConfig) -> dict[str, int]:
    """Parameters (and buffers) of each network of `config`, counted on the meta device."""

    def count(module: nn.Module) -> int:
        return sum(t.numel() for t in module.state_dict().values())

    with torch.device("meta"):
        return {
            "image": count(Eva02Vision(config.image)),
            "converter": count(VattConverter(config.converter)),
            "audio": count(VattAudio(config.audio)),
            "encodec": count(Encodec(config.encodec)),
        }


def construct(config: VattConfig) -> tuple[Eva02Vision, VattConverter, VattAudio, Encodec]:
    """The networks of `config` on the meta device (nothing allocated until weights are
    assigned by `load_official`)."""
    with torch.device("meta"):
        return (
            Eva02Vision(config.image),
            VattConverter(config.converter),
            VattAudio(config.audio),
            Encodec(config.encodec),
        )


def build_vatt_networks(variant: Variant, paths: dict[str, Path]) -> VattNetworks:
    """Construct every network of a VATT `variant` and load its weights (in the files' dtype,
    on the CPU). `paths` maps weight roles to local files, "llm" to the base model's folder
    (`weights.resolve`); tiny-vatt makes its weights locally from fixed seeds, in the official
    layouts, through the same loaders."""
    if not variant.vatt:
        raise UsageError(f"variant {variant.name} is not a VATT variant")
    config: VattConfig = variant.generator
    if variant.random_weights:
        return _random_networks(variant.name, config)
    c = config.converter
    folder = Path(paths["llm"])
    conv_config = converter_config(folder, c)
    audio_state, llm_ckpt = read_lightning(paths["vatt"])
    delta = read_state_dict(paths["llm_delta"])
    if c.family == "gemma":
        delta = conv_mod.gemma_delta_keys(delta)
    files = [(str(folder), read_hf_folder(folder)), (str(paths["llm_delta"]), delta)]
    if llm_ckpt:
        files.append((str(paths["vatt"]), llm_ckpt))
    words = read_word_embeds(paths["word_embeds"]) if c.family == "gemma" else None
    config = dataclasses.replace(config, converter=conv_config)
    image, converter, audio, encodec = construct(config)
    converter.load_official(converter_state(conv_config, files, words), "VATT converter files")
    audio.load_official(audio_state, read_codebooks(paths["codebooks"]), str(paths["vatt"]))
    encodec.load_official(
        read_state_dict(paths["encodec"], entry="best_state"), str(paths["encodec"])
    )
    image.load_official(read_state_dict(paths["eva02"]), str(paths["eva02"]))
    return VattNetworks(image, converter, audio, encodec, _tokenizer(conv_config, folder))


def _tokenizer(config: VattConverterConfig, folder: Path) -> PromptTokenizer:
    if config.family == "llama":
        text_ids = conv_mod.sentencepiece_ids(folder / "tokenizer.model", config.bos_id)
    else:
        import transformers

        tok = transformers.AutoTokenizer.from_pretrained(folder, local_files_only=True)
        text_ids = lambda text: tok(text)["input_ids"]  # noqa: E731
    return PromptTokenizer(text_ids, config)


def _random_networks(name: str, config: VattConfig) -> VattNetworks:
    seeds = TINY_VATT_SEEDS
    image, converter, audio, encodec = construct(config)
    image.load_official(
        eva02_mod.random_official_state(config.image, seeds["image"]), f"{name} random eva02"
    )
    peft, words = conv_mod.random_official_state(config.converter, seeds["converter"])
    source = f"{name} random converter"
    converter.load_official(
        converter_state(
            config.converter,
            [(source, peft)],
            words if config.converter.family == "gemma" else None,
        ),
        source,
    )
    state, codebooks = audio_mod.random_official_state(config.audio, seeds["audio"])
    audio.load_official(state, codebooks, f"{name} random VATT Audio")
    # VATT embeds its tokens with the Encodec codebooks: the same tables here.
    encodec_state = random_encodec_state(config.encodec, seeds["encodec"], codebooks)
    encodec.load_official(encodec_state, f"{name} random Encodec")
    tokenizer = PromptTokenizer(conv_mod.tiny_tokenizer(config.converter), config.converter)
    return VattNetworks(image, converter, audio, encodec, tokenizer)
