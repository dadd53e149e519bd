"""Reading a cut, whatever its format: .otio and, through OpenTimelineIO's adapters, FCP7 XML
and AAF (cut.py mends what they misread); FCPXML and EDL read here (fcpxml.py, edl.py)."""

from fractions import Fraction
from pathlib import Path

from ..errors import UsageError
from . import edl, fcpxml
from .cut import FORMATS, Cut, Relink, from_otio, require_otio, timeline_format


def read_cut(path: Path, media: list[Path] = (), rate: Fraction | None = None) -> Cut:
    """The cut in `path` (.otio, .xml, .fcpxml/.fcpxmld, .edl, .aaf); `media` folders relink
    files by name; `rate` is needed for an EDL whose media cannot tell it."""
    path = Path(path)
    if not path.exists():
        raise UsageError(f"{path} does not exist; pass the editor's exported timeline")
    kind = timeline_format(path)
    relink = Relink(path.parent, media)
    if kind == "fcpxml":
        return fcpxml.read(path, relink)
    if kind == "edl":
        return edl.read(path, relink, rate)
    otio = require_otio()
    adapter = FORMATS[path.suffix.lower()][1]
    try:
        timeline = otio.adapters.read_from_file(str(path), adapter_name=adapter)
    except Exception as err:  # noqa: BLE001 - the adapters raise anything; the user gets one line
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UsageError(f"{path.name} cannot be read as {kind} ({first})") from None
    if not isinstance(timeline, otio.schema.Timeline):
        found = list(timeline.find_children(descended_from_type=otio.schema.Timeline))
        if not found:
            raise UsageError(f"{path.name} holds no timeline")
        timeline = found[0]
    return from_otio(timeline, path, kind, relink)
