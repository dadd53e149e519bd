"""The VATT variants of the variant table against the sizes VATT.md measured by building the
official modules at real size, and their files (a source page or hub repo, and a licence)."""

import pytest
import torch
from selva_rt.runtime.models.vatt_networks import construct, parameter_counts
from selva_rt.runtime.variants import VARIANTS, VATT_GEMMA, VATT_LLAMA, VATT_VARIANTS


def params(module: torch.nn.Module, prefix: str = "") -> int:
    return sum(p.numel() for n, p in module.named_parameters() if n.startswith(prefix))


@pytest.mark.parametrize("variant", [VATT_LLAMA, VATT_GEMMA], ids=lambda v: v.name)
def test_released_sizes(variant):
    """VATT.md §1: eva02-L 304.4 M, VATT Audio 416.45 M (encoder 251.7 M, decoder 151.0 M with
    the LLaMA condition width), Encodec 28.4 M + 28.4 M, the LLM's LoRA and video_proj."""
    image, converter, audio, encodec = construct(variant.generator)
    assert round(params(image) / 1e5) == 3044
    assert (
        round(params(encodec.encoder) / 1e5) == 284 and round(params(encodec.decoder) / 1e5) == 284
    )
    assert round(params(audio.encoder) / 1e5) == 2517 and round(params(audio.decoder) / 1e5) == 1510
    c = variant.generator.converter
    lora = sum(p.numel() for n, p in converter.named_parameters() if "lora_" in n)
    if c.family == "llama":
        assert params(audio) == 416_451_072
        # LLaMA-7B is 6.74 B with its 131 M lm_head, which VATT replaces by Identity.
        base = params(converter) - lora - params(converter, "video_proj")
        assert round((base + c.vocab_size * c.hidden) / 1e7) == 674
        assert round(lora / 1e5) == 84 and round(params(converter, "video_proj") / 1e4) == 315
    else:
        assert (
            round(params(converter) / 1e8) == 25
            and round(converter.embed_tokens.weight.numel() / 1e7) == 52
        )
        assert round(lora / 1e5) == 18 and round(params(converter, "video_proj") / 1e5) == 16
    counts = parameter_counts(variant.generator)
    assert counts["audio"] == params(audio) + audio.codebooks.numel()


def test_files_say_where_they_come_from():
    for variant in (VATT_LLAMA, VATT_GEMMA):
        roles = {f.role for f in variant.files}
        expected = {"vatt", "llm", "llm_delta", "codebooks", "encodec", "eva02"}
        assert roles == expected | (
            {"word_embeds"} if variant.generator.converter.family == "gemma" else set()
        )
        for f in variant.files:
            assert f.licence, f"{variant.name} {f.path}: no licence"
            # By-hand files name the page to fetch them from; the others are on the hub.
            assert f.source or "/" in f.repo, f"{variant.name} {f.path}: no source"
        assert variant.file("encodec").licence.startswith("CC-BY-NC 4.0")


def test_served_by_the_vatt_family():
    """The VATT variants are in the variant table, run by the VATT family, with its defaults
    (MaskGIT 16 steps, CFG 5) and no negative prompt."""
    assert set(VATT_VARIANTS) <= set(VARIANTS)
    for v in VATT_VARIANTS.values():
        assert v.vatt and not v.separation and not v.flowley and v.family == "vatt"
        assert (v.steps, v.cfg) == (16, 5.0) and not v.takes_negative_prompt
