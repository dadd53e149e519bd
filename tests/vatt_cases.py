"""The golden VATT cases' configurations and networks, read from each case's json and tensors
(golden README "VATT cases"), loaded through the runtime's own loaders."""

import torch
from golden import load_case
from selva_rt.runtime.models.encodec import Encodec
from selva_rt.runtime.models.eva02 import Eva02Vision
from selva_rt.runtime.models.vatt_audio import VattAudio
from selva_rt.runtime.models.vatt_converter import VattConverter, runtime_state
from selva_rt.runtime.variants import (
    EncodecConfig,
    Eva02Config,
    MaskGitConfig,
    VattAudioConfig,
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
