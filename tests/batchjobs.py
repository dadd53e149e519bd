"""Job lists for the batch tests: good jobs beside a missing and a broken clip."""

import json
from pathlib import Path

import numpy as np
import soundfile
from clips import make_clip

# fp32: `auto` would pick bf16 or fp32 by the host CPU's flags, and so change the numbers.
FAST = ["--variant", "tiny", "--precision", "fp32", "--steps", "2", "--duration", "1", "--quiet"]
GOOD = [
    {"clip": "a.mp4", "prompts": ["sheep bleating"], "seed": 1},
    {"clip": "a.mp4", "prompts": ["dog barking", "car horn"], "seed": 2, "name": "a_two"},
    {"clip": "b.mp4", "prompts": ["rain"], "negative_prompt": "music", "cfg": 3},
    {"clip": "b.mp4", "prompts": ["wind"], "start": 0.4, "seed": 5, "name": "b_late"},
]
BAD = [
    ({"clip": "missing.mp4", "prompts": ["rain"]}, "missing.mp4 does not exist"),
    ({"clip": "broken.mp4", "prompts": ["rain"]}, "broken.mp4 is not a media file"),
]


def make_jobs(folder: Path, jobs: list[dict] | None = None) -> Path:
    """folder/jobs.jsonl over two small clips (1.6 s) and a truncated one; the clip paths are
    relative to the file, as users write them."""
    folder.mkdir(parents=True, exist_ok=True)
    make_clip(folder / "a.mp4", frames=40)
    make_clip(folder / "b.mp4", frames=40, size=(48, 64))
    data = make_clip(folder / "full.mp4", frames=40).read_bytes()
    (folder / "broken.mp4").write_bytes(data[: len(data) // 2])
    lines = jobs if jobs is not None else [*GOOD[:2], BAD[0][0], GOOD[2], BAD[1][0], GOOD[3]]
    path = folder / "jobs.jsonl"
    path.write_text("".join(json.dumps(j) + "\n" for j in lines))
    return path


def records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


def final(out: Path) -> list[dict]:
    """The outcome records (ok / failed / skipped), without the `writing` claims."""
    return [r for r in records(out) if r["status"] != "writing"]


def stems(out: Path) -> dict[str, np.ndarray]:
    return {p.name: soundfile.read(p, dtype="float32")[0] for p in sorted(out.glob("*.wav"))}


def rel_l2(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def visible_files(out: Path) -> set[str]:
    return {p.name for p in out.iterdir() if not p.name.startswith(".")}


def hidden_files(out: Path) -> set[str]:
    return {p.name for p in out.iterdir() if p.name.startswith(".")}
