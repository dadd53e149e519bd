"""Features a request can reuse: a window's prompt-independent features (trunk tokens, CLIP image
features, the mixture's posterior) and a prompt's text features, kept on disk under
$SELVA_RT_HOME/features and, in a server or a batch, in memory too.

    cache = FeatureCache.open()                      # disk (what `generate` uses)
    cache = FeatureCache.open(memory_gb=2)           # disk + memory (server, batch)
    pipe = Pipeline.from_pretrained("selva-small-16k", cache=cache)

An editor tries "footsteps", then "footsteps on gravel", then another seed over the same shot:
the video trunk's work is the same every time, so the second prompt costs only its own part.

A key is the sha256 of what determines the features, never of where they came from:
  * the model: the family's `identity` (variant, precision, backend and mode, a fingerprint of
    the weights), or None where nothing may be reused (reference mode, the official execution);
  * the environment: selva-rt's and torch's versions, the device (CUDA device name, or the
    CPU's kernel capability) and torch's thread count, since any of them can change the
    rounding, and a cached run must give exactly the stem an uncached run gives;
  * the inputs' content: a window's decoded frames and mixture samples (so the clip's content,
    start, duration and window; not its path or mtime: the same frames from a copied file hit,
    a file rewritten in place misses), or a prompt and negative prompt's text.

A request for a clip file also leaves a picture record, keyed by the file's bytes (up to
WHOLE_FILE_BYTES), the time range asked for, how the family decodes pictures and the decoder's
version: the layout's length, the picture's start and each window's content digests. A request
seen before thus finds its windows' features without decoding the clip again.

An entry is KEY.safetensors (the tensors) and KEY.json (format, what the key was made of, the
tensors file's sha256 and size), each written under a temporary name and renamed into place.
One that is missing a file, unreadable, of another format or version, made of other key fields,
or whose tensors do not hash to the recorded sha256 is deleted and made again: never trusted.
A hit touches the json's mtime; after each write the least recently used entries are deleted
until the folder is under its size limit.
"""

import hashlib
import json
import os
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import safetensors.torch
import torch

from .errors import OutputError, UsageError

FORMAT = 1  # of the files; an entry of another format is remade
FOLDER = "features"
DEFAULT_DISK_GB = 8.0  # ~140 windows of 8 s (selva-small-16k bf16 trunk tokens: 58 MB each)
SERVICE_MEMORY_GB = 2.0  # what a server or batch runner holds in memory by default
STALE_TEMPORARY_S = 3600  # a temporary this old was left by a killed writer

Tensors = dict[str, torch.Tensor]
# A clip file up to this size is hashed whole (sha256, about 1 GB/s) so that a request seen before
# finds its windows' features without decoding the picture; a larger one is decoded every time.
WHOLE_FILE_BYTES = 2**30


def tensor_digest(t: torch.Tensor) -> str:
    """sha256 of a tensor's dtype, shape and bytes (its content, wherever it lives)."""
    h = hashlib.sha256(f"{t.dtype}{tuple(t.shape)}".encode())
    flat = t.detach().contiguous().reshape(-1)
    if flat.numel():
        h.update(flat.cpu().view(torch.uint8).numpy())
    return h.hexdigest()


def file_digest(path: Path, limit: int = WHOLE_FILE_BYTES) -> str | None:
    """sha256 of a file's bytes; None when it is larger than `limit` or cannot be read (the
    decoder then says why)."""
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            if os.fstat(f.fileno()).st_size > limit:
                return None
            while chunk := f.read(2**22):
                h.update(chunk)
    except OSError:
        return None
    return h.hexdigest()


def weights_fingerprint(modules) -> str:
    """sha256 over every parameter and buffer of `modules` (nn.Modules): name, dtype, shape and
    16 values spread over it. Telling checkpoints apart (a fine-tune differs everywhere) costs
    milliseconds, where hashing every weight would cost seconds per load."""
    h = hashlib.sha256()
    for module in modules:
        for name, t in module.state_dict().items():
            h.update(f"{name}{t.dtype}{tuple(t.shape)}".encode())
            flat = t.detach().reshape(-1)
            if flat.numel() and flat.device.type != "meta":
                # Integer spacing: a float linspace rounds n - 1 up past 2**24 (out of bounds).
                n, k = flat.numel(), min(16, flat.numel())
                picks = torch.arange(k, dtype=torch.int64) * (n - 1) // max(k - 1, 1)
                h.update(flat[picks.to(flat.device)].float().cpu().numpy().tobytes())
    return h.hexdigest()


def environment() -> dict:
    """What besides the model and the inputs can change a feature's rounding."""
    from .. import __version__

    return {
        "selva_rt": __version__,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu": torch.backends.cpu.get_cpu_capability(),
    }


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def open_cache(enabled: bool, disk_gb: float, memory_gb: float = 0.0) -> "FeatureCache | None":
    """What --no-cache (enabled False: None) and --cache-gb ask for; a server or batch runner
    also holds `memory_gb` in memory."""
    if not enabled:
        return None
    if disk_gb < 0:
        raise UsageError("--cache-gb must be 0 (memory only) or more")
    return FeatureCache.open(disk_gb=disk_gb, memory_gb=memory_gb)


@dataclass
class Entry:
    """One looked-up entry: its key, what the key was made of, and its tensors (None: a miss,
    to be made and stored)."""

    key: str
    material: dict
    tensors: Tensors | None


@dataclass
class Stats:
    """Hits and misses of each kind (window, text) since the cache was opened."""

    hits: dict[str, int]
    misses: dict[str, int]

    def count(self, kind: str, hit: bool) -> None:
        counter = self.hits if hit else self.misses
        counter[kind] = counter.get(kind, 0) + 1


class FeatureCache:
    """Entries on disk under `folder` (None: none) up to `disk_bytes`, and the most recently
    used in memory up to `memory_bytes` (0: none)."""

    def __init__(self, folder: Path | None, disk_bytes: int, memory_bytes: int = 0):
        self.folder, self.disk_bytes, self.memory_bytes = folder, disk_bytes, memory_bytes
        self.memory: OrderedDict[str, tuple[Tensors, int]] = OrderedDict()
        self.memory_used = 0
        self.stats = Stats({}, {})
        if folder is not None:
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as err:
                raise OutputError(
                    f"cannot make the feature cache folder {folder}: {err.strerror}; set "
                    "SELVA_RT_HOME to a writable folder or pass --no-cache"
                ) from None

    @classmethod
    def open(
        cls,
        folder: str | os.PathLike | None = None,
        disk_gb: float = DEFAULT_DISK_GB,
        memory_gb: float = 0.0,
    ) -> "FeatureCache":
        """The cache in `folder` (default $SELVA_RT_HOME/features); `disk_gb` 0 keeps nothing
        on disk (memory only)."""
        from .weights import weights_home

        path = Path(folder) if folder is not None else weights_home() / FOLDER
        return cls(path if disk_gb > 0 else None, int(disk_gb * 2**30), int(memory_gb * 2**30))

    # -- what the pipeline calls -------------------------------------------------------------

    def lookup(
        self, kind: str, identity: dict, content: dict, device: torch.device, count: bool = True
    ) -> "Entry":
        """The entry of (kind, identity, content) on `device`: its tensors from memory or disk
        when present and sound, else None (then `store` it once made). `count`: in `stats`
        (False: a look ahead, counted by the caller once it knows what it uses)."""
        entry = self.entry(kind, identity, content, device)
        found = self.get(entry.key, entry.material)
        if count:
            self.stats.count(kind, found is not None)
        if found is not None:
            entry.tensors = {k: v.to(device) for k, v in found.items()}
        return entry

    def entry(self, kind: str, identity: dict, content: dict, device: torch.device) -> "Entry":
        """The empty entry of (kind, identity, content) on `device`, nothing read: its key and
        what the key is made of, for `store` once its tensors are set."""
        material = {"format": FORMAT, "kind": kind, "model": identity, "content": content}
        material["environment"] = {**environment(), "device": device_name(device)}
        key = hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()
        return Entry(key, material, None)

    def store(self, entry: "Entry") -> None:
        self.put(entry.key, entry.material, entry.tensors)

    # -- memory and disk ----------------------------------------------------------------------

    def get(self, key: str, material: dict) -> Tensors | None:
        if key in self.memory:
            self.memory.move_to_end(key)
            return self.memory[key][0]
        if self.folder is None:
            return None
        tensors = self._read(key, material)
        if tensors is not None:
            self._remember(key, tensors)
        return tensors

    def put(self, key: str, material: dict, tensors: Tensors) -> None:
        cpu = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
        self._remember(key, cpu)
        if self.folder is not None:
            self._write(key, material, cpu)
            self._evict()

    def _remember(self, key: str, tensors: Tensors) -> None:
        size = sum(t.numel() * t.element_size() for t in tensors.values())
        if size > self.memory_bytes:
            return
        self.memory[key] = (tensors, size)
        self.memory_used += size
        while self.memory_used > self.memory_bytes:
            _, (_, freed) = self.memory.popitem(last=False)
            self.memory_used -= freed

    def _paths(self, key: str) -> tuple[Path, Path]:
        return self.folder / f"{key}.safetensors", self.folder / f"{key}.json"

    def _read(self, key: str, material: dict) -> Tensors | None:
        """The entry's tensors, or None (and the entry deleted) unless every check holds."""
        data_path, meta_path = self._paths(key)
        try:
            meta = json.loads(meta_path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            self._drop(key)
            return None
        try:
            if meta.get("format") != FORMAT or meta.get("key") != material:
                raise ValueError("another format, version or key")
            data = data_path.read_bytes()
            if len(data) != meta["bytes"] or hashlib.sha256(data).hexdigest() != meta["sha256"]:
                raise ValueError("the tensors do not match their record")
            tensors = safetensors.torch.load(data)
        except (OSError, ValueError, KeyError, TypeError, RuntimeError):
            self._drop(key)
            return None
        _touch(meta_path)
        return tensors

    def _write(self, key: str, material: dict, tensors: Tensors) -> None:
        """Tensors first, then the json that vouches for them, each renamed into place."""
        data_path, meta_path = self._paths(key)
        data = safetensors.torch.save(tensors)
        meta = {
            "format": FORMAT,
            "key": material,
            "sha256": hashlib.sha256(data).hexdigest(),
            "bytes": len(data),
            "shapes": {k: [str(v.dtype), list(v.shape)] for k, v in tensors.items()},
            "created": time.time(),
        }
        try:
            _write_atomic(data_path, data)
            _write_atomic(meta_path, json.dumps(meta, sort_keys=True).encode())
        except OSError:  # a full or read-only disk costs the entry, not the request
            self._drop(key)

    def _drop(self, key: str) -> None:
        for path in self._paths(key):
            path.unlink(missing_ok=True)

    def _evict(self) -> None:
        """Delete the least recently used entries (by their json's mtime) until the folder
        holds at most `disk_bytes`; temporaries of killed writers and halves of entries go."""
        used: dict[str, float] = {}  # key -> its json's mtime: when it was last used
        sizes: dict[str, int] = {}
        now = time.time()
        for path in self.folder.iterdir():
            try:
                st = path.stat()
            except FileNotFoundError:  # another process evicted it meanwhile
                continue
            if path.name.startswith("."):  # a temporary
                if now - st.st_mtime > STALE_TEMPORARY_S:
                    path.unlink(missing_ok=True)
                continue
            key, _, suffix = path.name.partition(".")
            sizes[key] = sizes.get(key, 0) + st.st_size
            if suffix == "json":
                used[key] = st.st_mtime
            elif key not in used and now - st.st_mtime > STALE_TEMPORARY_S:
                used.setdefault(key, -1.0)  # tensors whose json never came: first to go
        total = sum(sizes.values())
        for key in sorted(used, key=used.get):
            if total <= self.disk_bytes and used[key] >= 0:
                break
            self._drop(key)
            total -= sizes[key]

    def clear_memory(self) -> None:
        self.memory.clear()
        self.memory_used = 0


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _touch(path: Path) -> None:
    try:
        os.utime(path)
    except OSError:  # a read-only cache still serves
        pass
