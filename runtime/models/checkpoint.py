"""Safe, strict checkpoint loading.

Official files are read as published: `.pth`/`.pt` with `torch.load(weights_only=True)` (no
pickled code runs), `.safetensors` with safetensors. Loading is strict: every key of the file is
used and every shape checked, and a mismatch names the file, the first offending keys and the
expected vs found shapes.
"""

import json
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from ..errors import CheckpointError

StateDict = dict[str, torch.Tensor]
_SHOWN = 5  # offending keys listed per kind of mismatch


def load_object(path: str | Path) -> object:
    """The content of a checkpoint file on the CPU: `.safetensors` as a dict, anything else with
    `torch.load(weights_only=True, mmap=True)` (no pickled code runs; tensors are mapped, not
    read, until used)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # noqa: BLE001 - any reader failure is a bad file to the user
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"cannot read checkpoint {path}: {first}") from e


def read_state_dict(path: str | Path, *, prefix: str = "", entry: str | None = None) -> StateDict:
    """Read a checkpoint file into a flat {key: tensor} dict on the CPU.

    `entry` selects a sub-dict of a `.pt` file (BigVGAN keeps its weights under "generator");
    `prefix` keeps only keys that start with it and strips it (golden files store `state.<key>`).
    """
    path = Path(path)
    state = load_object(path)
    if entry is not None:
        if not isinstance(state, Mapping) or entry not in state:
            raise CheckpointError(f"checkpoint {path} has no {entry!r} entry")
        state = state[entry]
    if not isinstance(state, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise CheckpointError(f"checkpoint {path} is not a flat dict of tensors")
    if prefix:
        state = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    return dict(state)


# A Hugging Face model folder's weights: a sharded index, else one file.
HF_WEIGHTS = ("model.safetensors", "pytorch_model.bin")


def read_hf_folder(folder: str | Path) -> StateDict:
    """Every weight of a Hugging Face model folder (sharded with a `*.index.json`, or one
    `model.safetensors` / `pytorch_model.bin`), as one flat dict."""
    folder = Path(folder)
    for name in HF_WEIGHTS:
        index = folder / f"{name}.index.json"
        if index.is_file():
            try:
                shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            except (ValueError, KeyError) as e:
                raise CheckpointError(f"{index} is not a weight index: {e}") from e
            state: StateDict = {}
            for shard in shards:
                state.update(read_state_dict(folder / shard))
            return state
        if (folder / name).is_file():
            return read_state_dict(folder / name)
    raise CheckpointError(f"{folder} holds none of {', '.join(HF_WEIGHTS)} (or their index)")


def expected_shapes(module: nn.Module) -> dict[str, tuple[int, ...]]:
    """Key -> shape of everything `module.load_state_dict` expects (works on the meta device)."""
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def check_state_dict(module: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    """Raise CheckpointError unless `state` has exactly the module's keys and shapes."""
    expected = expected_shapes(module)
    missing = [k for k in expected if k not in state]
    extra = [k for k in state if k not in expected]
    wrong = [
        f"{k} (expected {list(expected[k])}, found {list(state[k].shape)})"
        for k in expected
        if k in state and tuple(state[k].shape) != expected[k]
    ]
    problems = []
    for what, keys in (("missing", missing), ("unexpected", extra), ("misshaped", wrong)):
        if keys:
            more = f" and {len(keys) - _SHOWN} more" if len(keys) > _SHOWN else ""
            problems.append(f"{len(keys)} {what}: {', '.join(keys[:_SHOWN])}{more}")
    if problems:
        raise CheckpointError(
            f"{source} does not match {type(module).__name__}: {'; '.join(problems)}"
        )


def load_strict(module: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> nn.Module:
    """Check `state` against `module` and copy it in (a module on the meta device takes the
    tensors as they are, so nothing is allocated twice)."""
    check_state_dict(module, state, source)
    on_meta = any(t.is_meta for t in module.state_dict().values())
    module.load_state_dict(state, strict=True, assign=on_meta)
    return module
