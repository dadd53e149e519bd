"""Flan-T5 text encoder: tokenisation rules of spec §2.1, determinism of the `tiny` encoder,
padding invariance, and loading a folder of the standard hub files."""

import dataclasses
import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from selva_rt.runtime.errors import CheckpointError, UsageError
from selva_rt.runtime.models import t5
from selva_rt.runtime.models.checkpoint import check_state_dict
from selva_rt.runtime.variants import TINY, VARIANTS, T5Config

torch.set_num_threads(2)

PROMPTS = ["a dog barks", "Sheep bleating loudly on a farm, while a tractor passes by!"]
# NFKC folding (the ligature, full-width letters) and runs of spaces: what a tokenizer pipeline
# rebuilt from the vocabulary alone would get wrong.
ODD = ["ﬁne  Ｆｕｌｌ  width ", "  leading spaces"]


@pytest.fixture(scope="module")
def tiny() -> t5.T5TextEncoder:
    return t5.load_t5(TINY)


def saved_folder(encoder: t5.T5TextEncoder, folder):
    """The encoder saved as the flan-t5-base hub files are laid out (its tokenizer_config.json
    and special_tokens_map.json are in the transformers 4 format)."""
    encoder.model.save_pretrained(folder)
    encoder.tokenizer.save_pretrained(folder)
    specials = {"eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"}
    sentinels = {"additional_special_tokens": [f"<extra_id_{i}>" for i in range(100)]}
    config = {**specials, **sentinels, "extra_ids": 100, "model_max_length": 512}
    config |= {"sp_model_kwargs": {}, "tokenizer_class": "T5Tokenizer"}
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    (folder / "special_tokens_map.json").write_text(json.dumps({**specials, **sentinels}))
    return folder


def test_empty_prompt_is_eos_only(tiny):
    ids, mask = tiny.tokenize([""])
    assert ids.tolist() == [[1]] and mask.tolist() == [[True]]


def test_padding_to_longest_on_the_right(tiny):
    ids, mask = tiny.tokenize(["", *PROMPTS])
    alone = [tiny.tokenize([p])[0][0] for p in ["", *PROMPTS]]
    assert ids.dtype == torch.int64 and mask.dtype == torch.bool
    assert ids.shape[1] == max(len(a) for a in alone)
    for row, m, a in zip(ids, mask, alone, strict=True):
        n = len(a)
        assert row[:n].tolist() == a.tolist() and a[-1] == 1  # </s> closes every prompt
        assert m[:n].all() and not m[n:].any()
        assert (row[n:] == 0).all()


def test_no_lowercasing_and_ids_in_vocab(tiny):
    lower, upper = tiny.tokenize(["dog"])[0], tiny.tokenize(["Dog"])[0]
    assert lower.tolist() != upper.tolist()
    ids, _ = tiny.tokenize(["<extra_id_0> café ünïcødé 日本 " + "".join(map(chr, range(32, 127)))])
    assert ids.max() < TINY.t5.vocab_size  # no sentinel tokens: they would lie past the table
    assert (ids == 2).any()  # non-ASCII text meets <unk>


def test_truncation_at_model_max_length(tiny):
    assert tiny.tokenizer.model_max_length == 512
    ids, mask = tiny.tokenize(["a dog barks " * 1000, "a cat"])
    assert ids.shape == (2, 512) and ids[0, -1] == 1 and mask[0].all()
    feats, _ = tiny.encode(["a dog barks " * 1000])
    assert feats.shape == (1, 512, 768)


def test_features(tiny):
    feats, mask = tiny.encode(PROMPTS)
    assert feats.dtype == torch.float32 and feats.shape == (*mask.shape, 768)
    assert torch.isfinite(feats).all()
    assert feats[0, ~mask[0]].abs().sum() > 0  # padded rows hold states; only the mask hides them


def test_deterministic():
    a, b = t5.load_t5(TINY), t5.load_t5(TINY)
    for x, y in zip(a.tokenize(PROMPTS), b.tokenize(PROMPTS), strict=True):
        assert torch.equal(x, y)
    assert torch.equal(a.encode(PROMPTS)[0], b.encode(PROMPTS)[0])
    s0, s1 = t5.random_official_state(TINY.t5, 0), t5.random_official_state(TINY.t5, 1)
    assert all(torch.equal(v, t5.random_official_state(TINY.t5, 0)[k]) for k, v in s0.items())
    assert not torch.equal(s0["shared.weight"], s1["shared.weight"])


def test_padding_does_not_change_real_tokens(tiny):
    feats, mask = tiny.encode(PROMPTS)
    assert not mask[0].all()  # the first prompt really is padded
    for i, p in enumerate(PROMPTS):
        alone, m = tiny.encode([p])
        n = m.shape[1]
        assert mask[i].sum() == n
        torch.testing.assert_close(feats[i, :n], alone[0], rtol=1e-5, atol=1e-5)


def test_random_state_has_the_module_layout():
    config = dataclasses.replace(TINY.t5, num_layers=3)
    with torch.device("meta"):
        model = t5.transformers.T5EncoderModel(t5.hf_config(config))
    check_state_dict(model, t5.random_official_state(config, 0), "random")


def test_full_size_is_flan_t5_base_encoder():
    with torch.device("meta"):
        model = t5.transformers.T5EncoderModel(t5.hf_config(T5Config()))
    assert sum(p.numel() for p in model.parameters()) == 109_628_544


def test_folder_of_hub_files_loads(tiny, tmp_path):
    folder = saved_folder(tiny, tmp_path)
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {
        p.name for p in folder.iterdir()
    }
    published = dataclasses.replace(TINY, random_weights=False)  # the real-weights code path
    loaded = t5.load_t5(published, folder)
    assert loaded.tokenizer.model_max_length == 512
    for x, y in zip(loaded.tokenize(PROMPTS + ODD), tiny.tokenize(PROMPTS + ODD), strict=True):
        assert torch.equal(x, y)
    assert torch.equal(loaded.encode(PROMPTS)[0], tiny.encode(PROMPTS)[0])
    assert loaded.tokenize([""])[0].tolist() == [[1]]


def test_folder_missing_weight_fails(tiny, tmp_path):
    folder = saved_folder(tiny, tmp_path)
    state = load_file(folder / "model.safetensors")
    key = "encoder.block.0.layer.1.DenseReluDense.wo.weight"
    del state[key]
    save_file(state, folder / "model.safetensors", metadata={"format": "pt"})
    published = dataclasses.replace(TINY, random_weights=False)
    with pytest.raises(CheckpointError, match=f"{folder}.*{key}"):
        t5.load_t5(published, folder)


def test_folder_of_another_model_fails(tiny, tmp_path):
    folder = saved_folder(tiny, tmp_path)
    other = dataclasses.replace(TINY, random_weights=False, t5=T5Config())
    with pytest.raises(CheckpointError, match="num_layers=1 \\(expected 12\\)"):
        t5.load_t5(other, folder)
    with pytest.raises(CheckpointError, match="no config.json"):
        t5.load_t5(other, tmp_path / "absent")


def test_variant_without_t5():
    with pytest.raises(UsageError):
        t5.load_t5(VARIANTS["mmaudio-small-16k"])
    with pytest.raises(UsageError):
        t5.load_t5(VARIANTS["selva-small-16k"], None)
