"""`selva-rt generate` (or `separate`) on a tiny variant in a subprocess, as a user runs it: the
stem it wrote and its --json report. Torch runs use fp32, the precision of the graphs they are
compared with."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import soundfile


def cli_generate(
    clip: Path, out: Path, *extra: str, env=None, command: str = "generate", variant: str = "tiny"
) -> tuple[np.ndarray, dict]:
    """`selva-rt COMMAND CLIP "dog barking" --variant VARIANT ... EXTRA` (generate: stems only)."""
    cmd = [sys.executable, "-m", "selva_rt.runtime.cli", command, str(clip), "dog barking"]
    cmd += ["--variant", variant, "--out", str(out), "--json", "--quiet"]
    if command == "generate":
        cmd += ["--no-video"]
    cmd += ["--steps", "3", "--duration", "1.2", "--precision", "fp32", *extra]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    (entry,) = report["outputs"]
    return soundfile.read(entry["audio"], dtype="float32")[0], report
