"""The golden VATT cases' configurations and networks, read from each case's json and tensors
(golden README "VATT cases"), loaded through the runtime's own loaders."""

import dataclasses
import io
import json
from pathlib import Path

import sentencepiece
import torch
from golden import load_case
from safetensors.torch import save_file
from selva_rt.runtime.models.encodec import Encodec
from selva_rt.runtime.models.eva02 import Eva02Vision
from selva_rt.runtime.models.vatt_audio import VattAudio
from selva_rt.runtime.models.vatt_converter import VattConverter, runtime_state
from selva_rt.runtime.variants import (
    TINY_VATT,
    EncodecConfig,
    Eva02Config,
    MaskGitConfig,
    Variant,
    VattAudioConfig,
    VattConfig,
    VattConverterConfig,
)


def state(tensors: dict[str, torch.Tensor], prefix: str = "state.") -> dict[str, torch.Tensor]:
    return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}


def audio_config(meta: dict) -> VattAudioConfig:
    """VattAudioConfig from `VT2AModel(**constructor_kwargs)` (the kwargs' own names)."""
    return VattAudioConfig(**meta["constructor_kwargs"])


def sampler_config(meta: dict) -> MaskGitConfig:
    a = meta["sampler_args"]
    return MaskGitConfig(
        steps=a["sampling_steps"],
        cfg=a["cfg_coef"],
        mask_temperature=a["mask_temperature"],
        sampling_temperature=a["sampling_temperature"],
    )


def converter_config(meta: dict) -> VattConverterConfig:
    """VattConverterConfig from the case's LlamaConfig / GemmaConfig kwargs."""
    k = meta["constructor_kwargs"]
    family = "gemma" if "Gemma" in meta["constructor"] else "llama"
    heads = k["num_attention_heads"]
    return VattConverterConfig(
        family=family,
        vocab_size=k["vocab_size"],
        hidden=k["hidden_size"],
        layers=k["num_hidden_layers"],
        heads=heads,
        kv_heads=k.get("num_key_value_heads", heads),
        head_dim=k.get("head_dim", k["hidden_size"] // heads),
        intermediate=k["intermediate_size"],
        rms_eps=k["rms_norm_eps"],
        rope_theta=k.get("rope_theta", 10000.0),
        bos_id=k["bos_token_id"],
        eos_id=k["eos_token_id"],
        pad_id=k["pad_token_id"],
    )


def eva02_config(meta: dict) -> Eva02Config:
    k = meta["constructor_kwargs"]
    return Eva02Config(
        width=k["width"],
        depth=k["depth"],
        heads=k["heads"],
        patch_size=k["patch_size"],
        image_size=k["img_size"],
        embed_dim=k["embed_dim"],
    )


def encodec_config(meta: dict, bins: int) -> EncodecConfig:
    """EncodecConfig from the case's SEANet kwargs (the RVQ size is given: the e2e case's
    codebooks are VATT's)."""
    s = meta["seanet_kwargs"]
    assert (s["activation"], s["norm"], s["pad_mode"], s["causal"], s["true_skip"]) == (
        "ELU",
        "weight_norm",
        "constant",
        False,
        True,
    ), "a SEANet setting this runtime does not implement"
    return EncodecConfig(
        channels=s["channels"],
        dimension=s["dimension"],
        n_filters=s["n_filters"],
        ratios=tuple(s["ratios"]),
        n_residual_layers=s["n_residual_layers"],
        kernel_size=s["kernel_size"],
        residual_kernel_size=s["residual_kernel_size"],
        last_kernel_size=s["last_kernel_size"],
        dilation_base=s["dilation_base"],
        compress=s["compress"],
        lstm_layers=s["lstm"],
        bins=bins,
    )


def audio_network(case: str = "vatt_audio_small") -> tuple[dict, VattAudio]:
    """(json, VattAudio with the case's weights and codebook file)."""
    meta, t = load_case(case)
    with torch.device("meta"):
        net = VattAudio(audio_config(meta))
    return meta, net.load_official(state(t), t["file.meta_pretrain_vgg_encodec_embed"], case)


def converter_network(case: str) -> tuple[dict, dict, VattConverter]:
    """(json, tensors, VattConverter with the case's PeftModel state; Gemma's word embeddings
    from file.word_embeds)."""
    meta, t = load_case(case)
    config = converter_config(meta)
    weights = runtime_state(state(t), config, case)
    if config.family == "gemma":
        weights["embed_tokens.weight"] = t["file.word_embeds"]
    with torch.device("meta"):
        net = VattConverter(config)
    return meta, t, net.load_official(weights, case)


def eva02_network(case: str = "vatt_eva02_small") -> tuple[dict, dict, Eva02Vision]:
    meta, t = load_case(case)
    with torch.device("meta"):
        net = Eva02Vision(eva02_config(meta))
    return meta, t, net.load_official(state(t), case)


def encodec_network(meta: dict, weights: dict, bins: int, source: str) -> Encodec:
    with torch.device("meta"):
        net = Encodec(encodec_config(meta, bins))
    return net.load_official(weights, source)


def _sentencepiece_model(vocab_size: int) -> bytes:
    """A small LLaMA-style sentencepiece model (unk 0, BOS 1, EOS 2), trained here."""
    lines = ["### Instruction:", "### Response:", "sheep bleating on a farm", "a dog barks"] * 20
    out = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(lines),
        model_writer=out,
        vocab_size=vocab_size,
        model_type="bpe",
        character_coverage=1.0,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        hard_vocab_limit=False,
        minloglevel=2,
    )
    return out.getvalue()


def golden_install(root: Path) -> tuple[Variant, dict[str, Path]]:
    """The golden weights written under `root` as the official files of a VATT-LLaMA install
    (VATT.md §3), and the variant whose configuration the cases record: (variant, role ->
    path, as `weights.resolve` gives them)."""
    audio_meta, audio_t = load_case("vatt_audio_small")
    conv_meta, conv_t = load_case("vatt_converter_small")
    eva_meta, eva_t = load_case("vatt_eva02_small")
    e2e_meta, e2e_t = load_case("vatt_e2e_tiny")
    books = audio_t["file.meta_pretrain_vgg_encodec_embed"]
    conv = converter_config(conv_meta)
    audio = audio_config(audio_meta)
    config = VattConfig(
        image=eva02_config(eva_meta),
        converter=conv,
        audio=audio,
        encodec=encodec_config(e2e_meta, audio.num_tokens),
        sampler=sampler_config(load_case("vatt_sampler_small")[0]),
    )
    variant = dataclasses.replace(
        TINY_VATT, name="golden-vatt", generator=config, random_weights=False
    )

    peft = state(conv_t)
    prefix = "base_model.model.model."
    folder = root / "vicuna"
    folder.mkdir()
    base = {
        "model." + k[len(prefix) :]: v
        for k, v in peft.items()
        if "lora_" not in k and "video_proj" not in k
    }
    base["lm_head.weight"] = torch.randn(conv.vocab_size, conv.hidden)
    save_file({k: v.contiguous() for k, v in base.items()}, folder / "model.safetensors")
    hf = dict(conv_meta["constructor_kwargs"], architectures=["LlamaForCausalLM"])
    (folder / "config.json").write_text(json.dumps(hf))
    (folder / "tokenizer.model").write_bytes(_sentencepiece_model(min(48, conv.vocab_size)))
    # The delta: the PeftModel state dict (LoRA with `.default.`, video_proj, the base weights).
    (root / "checkpoint-117000").mkdir()
    torch.save(peft, root / "checkpoint-117000" / "pytorch_model.bin")
    sd = {f"audio_token_decoder.{k}": v for k, v in state(audio_t).items()}
    torch.save({"epoch": 1, "global_step": 2, "state_dict": sd}, root / "vatt.ckpt")
    torch.save(books, root / "meta_pretrain_vgg_encodec_embed.pt")
    # The e2e case's Encodec codebooks are VATT's (golden README).
    encodec = state(e2e_t, "state.encodec.")
    for k in range(books.shape[0]):
        encodec[f"quantizer.vq.layers.{k}._codebook.embed"] = books[k]
    torch.save(
        {"xp.cfg": "sample_rate: 16000\n", "best_state": encodec},
        root / "compression_state_dict.bin",
    )
    clip = {k: v for k, v in state(eva_t).items()}
    clip["text.token_embedding.weight"] = torch.zeros(4, 4)
    clip["logit_scale"] = torch.tensor(4.6)
    torch.save(clip, root / "open_clip_pytorch_model.bin")
    paths = {
        "vatt": root / "vatt.ckpt",
        "llm": folder,
        "llm_delta": root / "checkpoint-117000" / "pytorch_model.bin",
        "codebooks": root / "meta_pretrain_vgg_encodec_embed.pt",
        "encodec": root / "compression_state_dict.bin",
        "eva02": root / "open_clip_pytorch_model.bin",
    }
    return variant, paths
