"""Official weight files on disk: where they live, fetching them from the Hugging Face hub, and
checking them against the MD5s of the variant table (spec §7).

Layout: `<home>/<repo>/<path>`, home = $SELVA_RT_HOME or ~/.cache/selva-rt, e.g.
~/.cache/selva-rt/jnwnlee/SelVA/weights/video_enc_sup_5.pth.

A download streams into `<file>.<etag tag>.part` beside its destination and is renamed into place
only when complete, so an interrupted download leaves no half file behind, and the next run asks
the server for the missing bytes only (HTTP Range). The tag keeps a partial of an older revision
of the file from being resumed.
"""

import hashlib
import os
import sys
from collections import defaultdict
from functools import partial
from pathlib import Path

import huggingface_hub
from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled
from huggingface_hub.file_download import http_get
from huggingface_hub.utils import build_hf_headers
from tqdm import tqdm

from .errors import CheckpointError, WeightsMissingError
from .variants import Variant, WeightFile

HOME_ENV = "SELVA_RT_HOME"

# verify() statuses
OK = "ok"
MISSING = "missing"
MD5_MISMATCH = "md5 mismatch"
NO_MD5 = "no md5 published"

_CHUNK = 16 << 20  # bytes hashed per read


def weights_home() -> Path:
    """$SELVA_RT_HOME, else ~/.cache/selva-rt."""
    return Path(os.environ.get(HOME_ENV) or Path.home() / ".cache" / "selva-rt").expanduser()


def local_path(file: WeightFile) -> Path:
    return weights_home() / file.repo / file.path


def missing_files(variant: Variant) -> list[WeightFile]:
    return [f for f in variant.files if not local_path(f).is_file()]


def _name(file: WeightFile) -> str:
    return f"{file.repo}/{file.path}"


def _bar_class(quiet: bool):
    """Progress bars only for a person watching: off when quiet or stderr is not a terminal."""
    return partial(tqdm, disable=quiet or not sys.stderr.isatty(), leave=False)


def _say(message: str, quiet: bool) -> None:
    if not quiet:
        print(message, file=sys.stderr)


def md5sum(path: Path, quiet: bool = True) -> str:
    """MD5 of a file, read in chunks (the published checkpoints are up to 1.2 GB)."""
    digest = hashlib.md5(usedforsecurity=False)
    with (
        open(path, "rb") as f,
        _bar_class(quiet)(
            total=path.stat().st_size, unit="B", unit_scale=True, desc=f"md5 {path.name}"
        ) as bar,
    ):
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
            bar.update(len(chunk))
    return digest.hexdigest()


def _status(file: WeightFile, quiet: bool) -> str:
    path = local_path(file)
    if not path.is_file():
        return MISSING
    if file.md5 is None:
        return NO_MD5
    return OK if md5sum(path, quiet) == file.md5 else MD5_MISMATCH


def verify(variant: Variant, quiet: bool = False) -> list[tuple[WeightFile, str]]:
    """(file, status) for every file of `variant`; status is OK, MISSING, MD5_MISMATCH or
    NO_MD5 (present, but nothing published to check it against). Changes nothing on disk."""
    return [(f, _status(f, quiet)) for f in variant.files]


def _partial_path(dest: Path, etag: str | None) -> Path:
    tag = hashlib.sha1((etag or "").encode()).hexdigest()[:12]
    return dest.with_name(f"{dest.name}.{tag}.part")


def _fetch(file: WeightFile, endpoint: str | None, quiet: bool) -> Path:
    """Download one file into place, resuming a partial download of the same revision."""
    dest = local_path(file)
    url = huggingface_hub.hf_hub_url(file.repo, file.path, endpoint=endpoint)
    try:
        meta = huggingface_hub.get_hf_file_metadata(url)
    except OfflineModeIsEnabled:
        raise _offline_error([file]) from None
    except Exception as e:  # noqa: BLE001 - any failure to reach the hub is reported in one line
        raise WeightsMissingError(
            f"cannot download {_name(file)} from {url}: {_first_line(e)}"
        ) from e
    part = _partial_path(dest, meta.etag)
    dest.parent.mkdir(parents=True, exist_ok=True)
    for stale in dest.parent.glob(f"{dest.name}.*.part"):
        if stale != part:
            stale.unlink()
    if meta.size is not None and part.is_file() and part.stat().st_size > meta.size:
        part.unlink()
    with open(part, "ab") as out:
        have = out.tell()
        if have:
            _say(f"resuming {_name(file)} at {have / 2**20:.1f} MiB", quiet)
        try:
            http_get(
                url,
                out,
                resume_size=have,
                headers=build_hf_headers(),
                expected_size=meta.size,
                displayed_filename=Path(file.path).name,
                tqdm_class=_bar_class(quiet),
            )
        except Exception as e:  # noqa: BLE001 - network and server errors alike
            raise WeightsMissingError(
                f"download of {_name(file)} stopped ({_first_line(e)}); run the same command "
                f"again to resume it"
            ) from e
    os.replace(part, dest)
    if file.md5 is not None and (got := md5sum(dest, quiet)) != file.md5:
        dest.unlink()
        raise CheckpointError(
            f"downloaded {_name(file)} but its MD5 is {got}, not the published {file.md5}; "
            f"removed it (run the download again; if it persists the hub file has changed)"
        )
    return dest


def _first_line(e: BaseException) -> str:
    if isinstance(e, HfHubHTTPError) and e.response is not None:
        return f"HTTP {e.response.status_code}"
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _offline_error(files: list[WeightFile]) -> WeightsMissingError:
    return WeightsMissingError(
        f"cannot download {', '.join(map(_name, files))}: offline mode is on (HF_HUB_OFFLINE); "
        f"unset it, or copy the files under {weights_home()}"
    )


def _unpublished_error(variant: Variant, file: WeightFile) -> WeightsMissingError:
    return WeightsMissingError(
        f"{variant.name}: {Path(file.path).name} is not published yet (no URL or MD5 exists); "
        f"put the checkpoint at {local_path(file)} or pass --checkpoint FILE"
    )


def download(variant: Variant, quiet: bool = False, endpoint: str | None = None) -> list[Path]:
    """Make every file of `variant` present and MD5-correct under `weights_home()`, fetching
    what is missing from the hub (`endpoint`: default $HF_ENDPOINT or huggingface.co). A present
    file whose MD5 is wrong is removed and fetched again. Files outside the hub (`source`) are
    fetched by hand: a missing one raises WeightsMissingError saying where it comes from and
    where to put it, after the hub files are in place. Returns the local paths."""
    if variant.random_weights:
        _say(f"variant {variant.name} makes its weights locally; nothing to download", quiet)
        return []
    by_hand = [f for f in variant.files if f.source is not None]
    for file in by_hand:  # told first, so a failing hub download does not hide it
        if not local_path(file).is_file():
            _say(by_hand_message(file), quiet)
    todo = []
    for file in (f for f in variant.files if f.source is None):
        status = _status(file, quiet)
        if status == MD5_MISMATCH:
            local_path(file).unlink()
            _say(
                f"{_name(file)}: MD5 does not match the published {file.md5}; removed it, "
                f"downloading it again",
                quiet,
            )
        if status in (MISSING, MD5_MISMATCH):
            if not file.published:
                raise _unpublished_error(variant, file)
            todo.append(file)
    if todo and huggingface_hub.constants.is_offline_mode():
        raise _offline_error(todo)
    for file in todo:
        _say(f"downloading {_name(file)} to {local_path(file)}{licence_note(file)}", quiet)
        _fetch(file, endpoint, quiet)
    for file in by_hand:
        if not local_path(file).is_file():
            raise WeightsMissingError(by_hand_message(file))
        _say(f"{_name(file)}: present (no MD5 published; its layout is checked on load)", quiet)
    return [local_path(f) for f in variant.files]


def by_hand_message(file: WeightFile) -> str:
    """Where a file outside the hub comes from, where it goes and its licence (one line)."""
    return (
        f"{Path(file.path).name} is not on the Hugging Face hub: download it from {file.source} "
        f"(unpack it there if it is an archive) and put it at {local_path(file)}"
        f"{licence_note(file)}"
    )


def licence_note(file: WeightFile) -> str:
    """ " (licence: ...)" for a file whose weights have terms of their own, else ""."""
    return f" (licence: {file.licence})" if file.licence else ""


def resolve(
    variant: Variant,
    offline: bool = True,
    quiet: bool = False,
    endpoint: str | None = None,
    checkpoint: str | os.PathLike | None = None,
) -> dict[str, Path]:
    """Role -> local path of `variant`'s weights; a role with several files (the Flan-T5 folder)
    maps to their folder. Files are checked for presence only (`verify` hashes them).
    `offline=False` downloads what is missing; otherwise a missing file raises
    WeightsMissingError. A random-weight variant has no files: {}. `checkpoint`: the generator
    file to use instead of the variant's (e.g. an MMAudioSep checkpoint kept elsewhere)."""
    if checkpoint is not None:
        checkpoint = Path(checkpoint)
        if not checkpoint.is_file():
            raise WeightsMissingError(f"--checkpoint {checkpoint} is not a file")
    missing = [f for f in missing_files(variant) if not (checkpoint and f.role == "generator")]
    for f in missing:
        if not f.published:
            raise _unpublished_error(variant, f)
    if missing and offline:
        raise WeightsMissingError(
            f"weights of {variant.name} are missing from {weights_home()}: "
            f"{', '.join(map(_name, missing))}; get them with "
            f"`selva-rt weights download {variant.name}`"
        )
    if missing:
        download(variant, quiet=quiet, endpoint=endpoint)
    by_role: dict[str, list[Path]] = defaultdict(list)
    for f in variant.files:
        use_checkpoint = checkpoint is not None and f.role == "generator"
        by_role[f.role].append(checkpoint if use_checkpoint else local_path(f))
    return {
        role: paths[0] if len(paths) == 1 else Path(os.path.commonpath(paths))
        for role, paths in by_role.items()
    }
