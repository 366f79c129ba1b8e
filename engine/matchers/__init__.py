"""Area-based matchers: each finds an optical template inside a SAR search window.

Every matcher has the same call shape so the pipeline can switch by name::

    match(search, template, search_mask=None, template_mask=None) -> PatchMatch

``search`` is the S x S SAR window and ``template`` the T x T optical patch, both 2-D float in
[0, 1]. The heatmap has shape (S-T+1, S-T+1) and index [i, j] is offset
(i - (S-T)//2, j - (S-T)//2) in (drow, dcol); higher is better. Matcher-specific parameters are
keyword arguments (``params=``) with defaults tuned for 10 m-class SAR/optical pairs.
"""
from __future__ import annotations

from typing import Callable

from ..errors import InputError
from ..types import PatchMatch
from . import mi, ncc, structural
from .subpixel import refine_peak, top_peaks

MatchFn = Callable[..., PatchMatch]

_REGISTRY: dict[str, MatchFn] = {
    "ncc": ncc.match,
    "mi": mi.match,
    "structural": structural.match,
}

MATCHERS: list[str] = list(_REGISTRY)
"""Names accepted by ``get_matcher``. 'structural' is the recommended one for real SAR-optical
pairs; 'mi' tolerates arbitrary intensity mappings but is speckle-sensitive; 'ncc' suits
same-modality or very similar radiometry only."""


def get_matcher(name: str) -> MatchFn:
    """The ``match`` function registered under ``name`` ('ncc', 'mi' or 'structural')."""
    key = str(name).strip().lower()
    try:
        return _REGISTRY[key]
    except KeyError:
        raise InputError(f"unknown matcher {name!r}; choose one of {', '.join(MATCHERS)}") from None


__all__ = ["MATCHERS", "get_matcher", "refine_peak", "top_peaks", "mi", "ncc", "structural"]
