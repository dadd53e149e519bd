"""Parts from two backends at once: the parts named in `graph_parts` run from the graphs of an
engines directory (ONNX Runtime), the others on the torch backend.

    parts = load_parts(variant, "torch", device="cpu", engines="engines/selva",
                       graph_parts=("video_select", "dit_step"))

The parts contract makes this possible: every backend takes and returns the same named tensors,
so what one part returns the next takes, whichever backend runs it. Both backends must compute
in the same dtype (an fp32 torch backend with an fp32 or int8 build).
"""

from ..device import precision_name
from ..errors import UsageError
from ..variants import Variant
from .graphs import PARTS, GraphParts, part_names


def check_graph_parts(names: tuple[str, ...], variant: Variant) -> None:
    """One-line errors for unknown names, parts the variant does not have, and conditions
    without their step."""
    have = part_names(variant)
    for name in names:
        if name not in PARTS:
            raise UsageError(f"unknown part {name!r} in --graph-parts; use {', '.join(PARTS)}")
        if name not in have:
            raise UsageError(
                f"{variant.name} has no {name!r} part; its graph parts: {', '.join(have)}"
            )
    # The torch step reads the sequence lengths its own dit_conditions set.
    if "dit_conditions" in names and "dit_step" not in names:
        raise UsageError("--graph-parts dit_conditions needs dit_step from the graphs too")


class MixedParts:
    """`graphs` runs the parts in `names` (and the Euler loop when dit_step is one of them),
    `base` the others."""

    def __init__(self, base, graphs: GraphParts, names: tuple[str, ...]):
        check_graph_parts(names, graphs.variant)
        if graphs.dtype != base.dtype or graphs.device != base.device:
            raise UsageError(
                f"the {graphs.precision} graphs on {graphs.device} cannot stand in for torch "
                f"parts in {base.dtype} on {base.device}; use the same precision and device"
            )
        self.base, self.graphs, self.graph_parts = base, graphs, names
        self.device, self.dtype = base.device, base.dtype
        # int8 when one of the parts taken is quantised, else the dtype both compute in.
        used = {graphs.manifest.parts[n].precision for n in names}
        self.precision = "int8" if "int8" in used else precision_name(base.dtype)

    @property
    def identity(self) -> dict | None:
        """The feature cache's description: both backends' and which parts each runs."""
        base = self.base.identity
        if base is None:
            return None
        return {"torch": base, "graphs": self.graphs.identity, "graph_parts": self.graph_parts}

    def __getattr__(self, name: str):
        # Only reached for what __init__ did not set: the parts' methods.
        owner = self.graphs if name in self.graph_parts else self.base
        if name == "sample":
            owner = self.graphs if "dit_step" in self.graph_parts else self.base
        return getattr(owner, name)


def part_list(value: str | tuple[str, ...] | None) -> tuple[str, ...]:
    """ "video_trunk,dit_step" (or a tuple) -> ("video_trunk", "dit_step")."""
    if not value:
        return ()
    items = value.split(",") if isinstance(value, str) else value
    return tuple(dict.fromkeys(p.strip() for p in items if p.strip()))
