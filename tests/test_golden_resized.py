"""The golden tests take every size from the case: some of them, pointed at a golden set remade
at other sizes, counts, durations, batch sizes and seeds (tests/golden_resize.py), run and pass
as on the shared set. The remade outputs are this project's own, so this proves the reading of
the cases only; the numerics are proven on the official set. The whole remade set runs with
`python tests/golden_resize.py OUT` and `SELVA_RT_GOLDEN=OUT pytest ...`."""

import os
import re
import subprocess
import sys
from pathlib import Path

import golden_resize
import pytest
from golden_resize import SUITE_GOLDEN
from safetensors import safe_open

TESTS = Path(__file__).parent
# Cheap to remake, and between them: a batch of two waveforms, other VAE widths, a single
# pre_only joint block with v2, Euler steps and CFG read from the procedure, Flowley with 3
# heads, 1 joint block, 3 applications of the tied block, another PSCA window and text length.
CASES = ["mel_vae_enc_16k", "vae_dec_16k", "vae_dec_44k", "sep_zero_ext_oracle",
         "flowley_psca_bias"]  # fmt: skip
RUN = [
    "test_mixture.py",
    "test_vae.py::test_golden_decode",
    "test_vae.py::test_golden_constants_are_official",
    "test_separation_generator.py::test_zero_extension_oracle_golden",
    "test_flowley.py",
]


def shapes(folder: Path, case: str) -> dict[str, list[int]]:
    with safe_open(folder / f"{case}.safetensors", "pt") as f:
        return {k: f.get_slice(k).get_shape() for k in f.keys()}


@pytest.mark.slow
def test_golden_tests_run_on_a_resized_set(tmp_path):
    out = tmp_path / "golden"
    made = golden_resize.resize(out, CASES)
    assert set(CASES) <= set(made)
    for case in made:  # a copy of the shared set would prove nothing
        assert shapes(out, case) != shapes(SUITE_GOLDEN, case), case

    script = Path(sys.executable).parent / "pytest"
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", "pytest"]
    result = subprocess.run(
        [*cmd, "-q", "-p", "no:cacheprovider", *(str(TESTS / t) for t in RUN)],
        cwd=tmp_path,  # not the checkout: nothing puts its root on sys.path
        env=os.environ | {"SELVA_RT_GOLDEN": str(out)},
        capture_output=True,
        text=True,
        timeout=600,
    )
    summary = result.stdout.strip().splitlines()[-1]
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert re.fullmatch(r"=* ?\d+ passed in .*", summary), summary  # nothing skipped
    assert f"golden ({out})" in result.stdout  # the run read the remade set


def test_resize_never_writes_into_the_suite_golden_set():
    with pytest.raises(SystemExit, match="golden set itself"):
        golden_resize.resize(SUITE_GOLDEN, ["vae_dec_16k"])
