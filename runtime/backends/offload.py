"""Low-memory mode: only the running stage's weights in memory.

A request runs its networks in stages: the text encoders (Flan-T5, CLIP text), the video
encoders (CLIP image, the video trunk and selection, the VAE encoder for a mixture), then the
DiT, then the VAE decoder and the vocoder. `Offload` keeps every network out of memory until a
stage needs it and puts it out again when the next stage starts, so the peak is the largest
stage's weights plus its activations instead of every weight at once (MMAudio large: the DiT
alone is 1.03 B of the variant's 2.55 B parameters).

Where the weights wait:
  * CUDA: in host memory (pinned), copied to the GPU when their stage starts (about 2 GB per
    stage in bf16 over PCIe: tens of milliseconds); the GPU holds one stage.
  * CPU: in one file per network under $SELVA_RT_HOME/offload/<weights fingerprint>/ (written
    once, in the compute dtype), memory-mapped when the stage starts and unmapped after, so the
    pages leave the process's resident set; reading them again costs a pass over the file from
    the page cache (or the disk) per stage and request.

Tensors under 256 KiB (norms, biases) stay where they are: a small share of the weights, not
worth a copy each. So do the tensors named in `keep`, which other stages read (the generator's
latent statistics, for the decoder). Tied parameters (Flan-T5's embedding) stay tied.
"""

import json
import os
from pathlib import Path

import torch
from torch import nn

MIN_BYTES = 256 << 10  # smaller tensors stay resident
FOLDER = "offload"
DONE = "complete.json"


class _Network:
    """One network's large tensors: where each sits in the module tree, and their offloaded
    copies (pinned host tensors on CUDA, a file on the CPU)."""

    def __init__(self, name: str, module: nn.Module, keep: tuple[str, ...] = ()):
        self.name, self.module = name, module
        # (owner, attribute, is_parameter) per slot; slots of one tensor share its key.
        self.slots: dict[str, list[tuple[nn.Module, str, bool]]] = {}
        ids: dict[int, str] = {}
        for prefix, owner in module.named_modules(remove_duplicate=False):
            for kind, table in ((True, owner._parameters), (False, owner._buffers)):
                for attr, t in table.items():
                    if t is None or t.numel() * t.element_size() < MIN_BYTES:
                        continue
                    if not kind and attr in owner._non_persistent_buffers_set:
                        continue
                    key = ids.setdefault(id(t), f"{prefix}.{attr}" if prefix else attr)
                    if key not in keep:
                        self.slots.setdefault(key, []).append((owner, attr, kind))
        self.host: dict[str, torch.Tensor] = {}
        self.file: Path | None = None
        self.loaded = True

    def tensors(self) -> dict[str, torch.Tensor]:
        """The live tensors, by key."""
        out = {}
        for key, slots in self.slots.items():
            owner, attr, is_param = slots[0]
            out[key] = (owner._parameters if is_param else owner._buffers)[attr]
        return out

    def assign(self, tensors: dict[str, torch.Tensor]) -> None:
        for key, slots in self.slots.items():
            t = tensors[key]
            for owner, attr, is_param in slots:
                if is_param:
                    t = t if isinstance(t, nn.Parameter) else nn.Parameter(t, requires_grad=False)
                    owner._parameters[attr] = t
                else:
                    owner._buffers[attr] = t

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors().values())


class Offload:
    """Stages of networks (a network may serve several stages); `enter(stage)` makes exactly
    that stage's networks resident on `device`. `keep`: tensors (by state-dict key) of a
    network that other stages read, always resident (the decoder reads the generator's latent
    statistics)."""

    def __init__(
        self,
        networks: dict[str, nn.Module],
        stages: dict[str, tuple[str, ...]],
        device: torch.device,
        folder: Path | None = None,
        keep: dict[str, tuple[str, ...]] | None = None,
    ):
        self.device, self.stages = device, stages
        keep = keep or {}
        self.networks = {
            name: _Network(name, m, keep.get(name, ())) for name, m in networks.items()
        }
        self.stage: str | None = None
        if device.type == "cuda":
            for net in self.networks.values():
                net.host = {k: t.detach().to("cpu").pin_memory() for k, t in net.tensors().items()}
        else:
            if folder is None:
                raise ValueError("low-memory mode on the CPU needs a folder for the weights")
            _write_files(self.networks, folder)
        for net in self.networks.values():
            self._unload(net)
            _copy_resident(net.module)

    @property
    def resident_bytes(self) -> int:
        """Bytes of offloadable weights in memory now."""
        return sum(n.nbytes() for n in self.networks.values() if n.loaded)

    def enter(self, stage: str) -> None:
        if stage == self.stage:
            return
        wanted = set(self.stages[stage])
        for name, net in self.networks.items():  # out first, so the peak is one stage
            if net.loaded and name not in wanted:
                self._unload(net)
        for name in wanted:
            if name in self.networks and not self.networks[name].loaded:
                self._load(self.networks[name])
        self.stage = stage

    def _load(self, net: _Network) -> None:
        if self.device.type == "cuda":
            net.assign({k: t.to(self.device, non_blocking=True) for k, t in net.host.items()})
        else:
            net.assign(torch.load(net.file, mmap=True, weights_only=True))
        net.loaded = True

    def _unload(self, net: _Network) -> None:
        net.assign({k: torch.empty_like(t, device="meta") for k, t in net.tensors().items()})
        net.loaded = False


def _copy_resident(module: nn.Module) -> None:
    """Each tensor that stays resident (the small ones, `keep`) copied into memory of its own: a
    slice of a memory-mapped checkpoint (`torch.load(mmap=True)`) keeps the whole file mapped,
    and every page read when the stage files were written in the resident set, for as long as
    it lives. Tied tensors stay tied."""
    copies: dict[int, torch.Tensor] = {}
    for owner in module.modules():
        for is_param, table in ((True, owner._parameters), (False, owner._buffers)):
            for attr, t in table.items():
                if t is None or t.is_meta:
                    continue
                if id(t) not in copies:
                    copy = t.detach().clone()
                    copies[id(t)] = nn.Parameter(copy, requires_grad=False) if is_param else copy
                table[attr] = copies[id(t)]


def _own(t: torch.Tensor) -> torch.Tensor:
    """t alone in its storage (torch.save writes a view's whole storage)."""
    t = t.detach().contiguous()
    whole = t.untyped_storage().nbytes() == t.numel() * t.element_size()
    return t if whole and t.storage_offset() == 0 else t.clone()


def _write_files(networks: dict[str, _Network], folder: Path) -> None:
    """One torch file per network in `folder`, unless a complete set is already there (same
    keys, shapes and dtypes: the folder's name carries the weights' fingerprint)."""
    record = {
        name: {k: [str(t.dtype), list(t.shape)] for k, t in net.tensors().items()}
        for name, net in networks.items()
    }
    for name, net in networks.items():
        net.file = folder / f"{name}.pt"
    done = folder / DONE
    try:
        if json.loads(done.read_text()) == record and all(
            n.file.is_file() for n in networks.values()
        ):
            return
    except (OSError, ValueError):
        pass
    folder.mkdir(parents=True, exist_ok=True)
    done.unlink(missing_ok=True)
    for net in networks.values():
        tmp = net.file.with_name(f".{net.file.name}.{os.getpid()}.tmp")
        torch.save({k: _own(t) for k, t in net.tensors().items()}, tmp)
        os.replace(tmp, net.file)
    tmp = done.with_name(f".{DONE}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(record))
    os.replace(tmp, done)
