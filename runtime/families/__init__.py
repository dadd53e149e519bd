"""Model families: what the pipeline runs, each over any backend's parts (`family.Family`).

    family = load_family(get_variant("tiny"), "torch", device="cpu")

MMAudio (SELVA, MMAudio, MMAudioSep) and Flowley are flow-matching families (flow.py); each
supplies its own text handling and conditions, so the pipeline never asks which one it runs.
VATT (vatt.py) samples discrete tokens with MaskGIT over its own parts.
"""

from ..backends import load_parts
from ..variants import Variant
from .family import Family, Needs
from .flowley import Flowley
from .mmaudio import MMAudio
from .vatt import Vatt

FAMILIES = {"mmaudio": MMAudio, "flowley": Flowley, "vatt": Vatt}


def load_family(variant: Variant, backend: str = "torch", **options) -> Family:
    """`variant`'s family over its parts on `backend` (`backends.load_parts` takes `options`)."""
    return family_of(variant, load_parts(variant, backend, **options))


def family_of(variant: Variant, parts, tokenizers=None) -> Family:
    """`variant`'s family over parts already loaded (tokenizers: shared with another family
    of the same variant, else made)."""
    return FAMILIES[variant.family](variant, parts, tokenizers)


def needs(variant: Variant) -> Needs:
    """What a window of `variant` must hold, without loading it (decoding runs ahead)."""
    return FAMILIES[variant.family].needs_of(variant)
