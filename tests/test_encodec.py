"""Encodec 16 kHz (AudioGen's compression model) against the golden `encodec_dec_16k` case, made
by audiocraft's EncodecModel, loaded from the official legacy weight-norm layout."""

import pytest
import torch
from golden import assert_close, load_case
from selva_rt.runtime.errors import CheckpointError
from selva_rt.runtime.models.checkpoint import read_state_dict
from selva_rt.runtime.models.encodec import official_shapes
from vatt_cases import encodec_config, encodec_network, state

CASE = "encodec_dec_16k"


@pytest.fixture(scope="module")
def case():
    meta, t = load_case(CASE)
    return meta, t, encodec_network(meta, state(t), meta["rvq"]["bins"], CASE)


@torch.no_grad()
def test_decode_encode_match_audiocraft(case):
    meta, t, net = case
    assert_close(f"{CASE}.latent", net.decode_latent(t["in.codes"]), t["out.latent"], 1e-4, 2e-3)
    assert_close(f"{CASE}.audio", net.decode(t["in.codes"]), t["out.audio"], 1e-4, 2e-3)
    assert_close(f"{CASE}.enc_emb", net.encoder(t["in.wav"]), t["out.enc_emb"], 1e-4, 2e-3)
    codes = net.encode(t["in.wav"])
    assert torch.equal(codes, t["out.codes"]), f"{(codes != t['out.codes']).sum()} codes differ"
    roundtrip = net.decode(codes)
    assert_close(f"{CASE}.audio_roundtrip", roundtrip, t["out.audio_roundtrip"], 1e-4, 2e-3)
    # One token frame is hop samples.
    assert t["out.audio"].shape[-1] == t["in.codes"].shape[-1] * net.config.hop


def test_official_layout_is_the_golden_one(case):
    meta, t, _ = case
    expected = {k: tuple(v.shape) for k, v in state(t).items()}
    assert official_shapes(encodec_config(meta, meta["rvq"]["bins"])) == expected


def test_compression_state_dict_best_state(case, tmp_path):
    """The real file: compression_state_dict.bin = {"xp.cfg": yaml, "best_state": state}."""
    meta, t, net = case
    path = tmp_path / "compression_state_dict.bin"
    torch.save({"xp.cfg": "sample_rate: 16000\n", "best_state": state(t)}, path)
    loaded = encodec_network(meta, read_state_dict(path, entry="best_state"), 2048, str(path))
    assert torch.equal(loaded.decode(t["in.codes"]), net.decode(t["in.codes"]))


def test_refuses_foreign_and_truncated_states(case, tmp_path):
    meta, t, _ = case
    weights = state(t)
    truncated = {k: v for k, v in weights.items() if not k.startswith("decoder.model.15.")}
    with pytest.raises(CheckpointError, match=r"missing: decoder\.model\.15\.") as err:
        encodec_network(meta, truncated, 2048, "cut.bin")
    assert "\n" not in str(err.value)
    foreign = {**weights, "decoder.model.16.conv.conv.bias": torch.zeros(1)}
    with pytest.raises(CheckpointError, match=r"unexpected: decoder\.model\.16\.bias"):
        encodec_network(meta, foreign, 2048, "foreign.bin")
    half = tmp_path / "half.bin"
    torch.save({"best_state": weights}, half)
    half.write_bytes(half.read_bytes()[: half.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=f"cannot read checkpoint {half}") as err:
        read_state_dict(half, entry="best_state")
    assert "\n" not in str(err.value)
