"""The VATT Converter (`encode_all_states`) against the golden `vatt_converter_small` (LLaMA) and
`vatt_converter_gemma_small` cases, the layouts its files may have, and the prompt tokenization."""

import json

import pytest
import torch
from golden import assert_close, load_case
from safetensors.torch import save_file
from selva_rt.runtime.errors import CheckpointError, PromptError
from selva_rt.runtime.models.checkpoint import read_hf_folder
from selva_rt.runtime.models.vatt_converter import (
    PromptTokenizer,
    VattConverter,
    gemma_delta_keys,
    official_shapes,
    random_official_state,
    runtime_state,
    tiny_tokenizer,
)
from selva_rt.runtime.models.vatt_networks import converter_state
from selva_rt.runtime.variants import TINY_VATT
from vatt_cases import converter_config, converter_network, state

CASES = ["vatt_converter_small", "vatt_converter_gemma_small"]


@pytest.fixture(scope="module", params=CASES)
def case(request):
    return (request.param, *converter_network(request.param))


@torch.no_grad()
def test_states_match_official(case):
    name, meta, t, net = case
    ids, video, mask = t["in.input_ids"], t["in.video_input"], t["in.attention_mask"]
    if "out.pooled_video" in t:
        assert_close(
            f"{name}.pooled_video", net.pool_video(video), t["out.pooled_video"], 1e-6, 1e-6
        )
    if "out.inputs_embeds" in t:
        assert_close(
            f"{name}.inputs_embeds", net.embed_tokens(ids), t["out.inputs_embeds"], 1e-6, 1e-6
        )
    assert_close(f"{name}.video_tokens", net.video_tokens(video), t["out.video_tokens"], 1e-4, 1e-3)
    states = net(ids, video, mask)
    assert_close(f"{name}.hidden_states", states, t["out.hidden_states"], 1e-4, 1e-3)


@torch.no_grad()
def test_lora_is_applied_and_padding_ids_do_not_leak(case):
    """Zeroing lora_B changes the states by the case's measured amount (the adapter is applied,
    unmerged, with scaling alpha / rank); changing the ids of left-padded positions leaves every
    unpadded row unchanged."""
    name, meta, t, net = case
    ids, video, mask = t["in.input_ids"], t["in.video_input"], t["in.attention_mask"]
    states = net(ids, video, mask)
    saved = {n: p.clone() for n, p in net.named_parameters() if "lora_B" in n}
    for n, p in net.named_parameters():
        if "lora_B" in n:
            p.zero_()
    change = ((net(ids, video, mask) - states).norm() / states.norm()).item()
    for n, p in net.named_parameters():
        if n in saved:
            p.copy_(saved[n])
    expected = meta.get("discriminative", {}).get("lora_B_zeroed_rel_change_hidden_states")
    if expected is not None:
        assert change == pytest.approx(expected, rel=0.01)
    assert change > 0.05
    text_mask = mask[:, net.config.video_tokens :] > 0
    other = torch.where(text_mask, ids, (ids + 7) % net.config.vocab_size)
    keep = mask > 0
    assert torch.equal(net(other, video, mask)[keep], states[keep])


def test_official_layout(case):
    name, meta, t, _ = case
    assert official_shapes(converter_config(meta)) == {
        k: tuple(v.shape) for k, v in state(t).items()
    }


def _base_and_delta(config, weights: dict) -> tuple[dict, dict]:
    """Split a PeftModel state into an HF base folder's keys (`model.*`, LoRA-free) and a delta
    in the stripped get_peft_model_state_dict layout (`lora_A.weight`, no `.default.`)."""
    peft = "base_model.model.model." if config.family == "llama" else "base_model.model."
    base = {"model." + k[len(peft) :]: v for k, v in weights.items() if "lora_" not in k}
    if config.family == "llama":
        base["lm_head.weight"] = torch.zeros(3, 3)  # in the Vicuna folder; VATT drops it
    delta = {k.replace(".default.", "."): v for k, v in weights.items() if "lora_" in k}
    return base, delta


@torch.no_grad()
def test_base_folder_delta_and_lightning_layouts(case):
    """The same weights through the official file layouts compose to the same network: the HF
    base folder, a stripped-LoRA delta (Gemma's through its remap rule), and a Lightning
    checkpoint that overrides the LLM (`encoder.` + the PeftModel keys)."""
    name, meta, t, net = case
    config = converter_config(meta)
    weights = state(t)
    base, delta = _base_and_delta(config, weights)
    if config.family == "gemma":
        delta = gemma_delta_keys(
            {"base_model.model.model." + k[len("base_model.model.") :]: v for k, v in delta.items()}
        )
    lightning = {"encoder." + k: v for k, v in weights.items()}
    words = t["file.word_embeds"] if config.family == "gemma" else None
    for files in (
        [("base", base), ("delta", delta)],
        [("base", base), ("delta", delta), ("ckpt", lightning)],
    ):
        with torch.device("meta"):
            other = VattConverter(config)
        other.load_official(converter_state(config, files, words), name)
        args = (t["in.input_ids"], t["in.video_input"], t["in.attention_mask"])
        assert torch.equal(other(*args), net(*args))


def test_refusals(case):
    name, meta, t, _ = case
    config = converter_config(meta)
    weights = state(t)
    with pytest.raises(CheckpointError, match=r"unexpected keys vision_tower\.x") as err:
        runtime_state({**weights, "vision_tower.x": torch.zeros(1)}, config, "foreign.bin")
    assert "\n" not in str(err.value)
    del weights[next(k for k in weights if "lora_A" in k)]
    cut = runtime_state(weights, config, "cut.bin")
    if config.family == "gemma":
        cut["embed_tokens.weight"] = t["file.word_embeds"]
    with torch.device("meta"):
        net = VattConverter(config)
    with pytest.raises(CheckpointError, match=r"1 missing: layers\.0\.self_attn\.q_proj\.lora_A"):
        net.load_official(cut, "cut.bin")
    if config.family == "llama":
        key = next(k for k in weights if k.endswith("inv_freq"))
        weights[key] = weights[key] * 2
        with pytest.raises(CheckpointError, match="rotary table"):
            runtime_state(weights, config, "other_rope.bin")


def test_random_weights_load():
    for family in ("llama", "gemma"):
        config = TINY_VATT.generator.converter
        if family == "gemma":
            config = converter_config(load_case("vatt_converter_gemma_small")[0])
        peft, words = random_official_state(config, 0)
        with torch.device("meta"):
            net = VattConverter(config)
        net.load_official(
            converter_state(config, [("random", peft)], words if family == "gemma" else None),
            "random",
        )


def test_prompt_tokenization():
    """The official tokenize(): the template, BOS, truncation to 64 ids, EOS only when shorter."""
    config = TINY_VATT.generator.converter
    tok = PromptTokenizer(tiny_tokenizer(config), config)
    ids = tok.encode("sheep bleating")
    assert (
        ids[0] == config.bos_id and ids[-1] == config.eos_id and len(ids) < config.max_prompt_tokens
    )
    assert tok.encode("sheep bleating") == ids  # deterministic
    long = tok.encode("a dog barks " * 40)
    assert len(long) == config.max_prompt_tokens and long[-1] != config.eos_id
    batch_ids, mask = tok.batch("dog barking")
    assert batch_ids.shape == (1, len(tok.encode("dog barking")))
    assert mask.shape == (1, config.video_tokens + batch_ids.shape[1]) and bool((mask == 1).all())
    with pytest.raises(PromptError):
        tok.encode("   ")


def test_sharded_base_folder(tmp_path):
    """An HF folder's shards (model.safetensors.index.json) read as one state; none: refused."""

    parts = [
        {"model.a": torch.ones(2)},
        {"model.b": torch.zeros(3), "lm_head.weight": torch.ones(1)},
    ]
    weight_map = {}
    for i, part in enumerate(parts):
        name = f"model-{i + 1:05d}-of-00002.safetensors"
        save_file(part, tmp_path / name)
        weight_map.update(dict.fromkeys(part, name))
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    state = read_hf_folder(tmp_path)
    assert sorted(state) == ["lm_head.weight", "model.a", "model.b"]
    with pytest.raises(CheckpointError, match="holds none of model.safetensors"):
        read_hf_folder(tmp_path / "..")
