"""Held-out simulator seeds: the benchmark's test scenes, which training must never see.

Why a constants module: the training code (a later issue) imports this and *excludes* every seed
for which ``is_heldout`` is true, so benchmark numbers are never measured on training data. Keep
the whole block 900000..999999 reserved even where the benchmark uses fewer seeds, so that growing
the test set later cannot collide with seeds a model was already trained on.
"""
from __future__ import annotations

HELDOUT_MIN: int = 900_000
"""First reserved seed (inclusive)."""
HELDOUT_MAX: int = 999_999
"""Last reserved seed (inclusive)."""

PATCH_SCENE_SEED_BASE: int = 900_000
"""Scenes cut into patch pairs use seeds PATCH_SCENE_SEED_BASE + k, k = 0, 1, ..."""
PATCH_SCENE_SEED_COUNT: int = 1_000
SCENE_TEST_SEED_BASE: int = 910_000
"""Whole-scene test k uses seed SCENE_TEST_SEED_BASE + k (scene content and misregistration)."""
SCENE_TEST_SEED_COUNT: int = 100
SPEED_SEED_BASE: int = 920_000
"""Scenes used for timings and memory (content barely matters there, but keep them unseen too)."""
OFFSET_SEED: int = 930_000
"""Seed of the random true offsets given to the real-data patch pairs."""

SCENE_KINDS_CYCLE: tuple[str, ...] = ("rural", "suburban", "urban")
"""Patch and scene tests cycle through these kinds so the mix is fixed and balanced."""


def is_heldout(seed: int) -> bool:
    """True for any seed the benchmark may use; training must skip (or remap) these."""
    return HELDOUT_MIN <= int(seed) <= HELDOUT_MAX


def patch_scene_seeds(n: int) -> list[int]:
    """The first ``n`` scene seeds of the patch test."""
    if not 0 <= n <= PATCH_SCENE_SEED_COUNT:
        raise ValueError(f"at most {PATCH_SCENE_SEED_COUNT} patch scenes are reserved, asked {n}")
    return [PATCH_SCENE_SEED_BASE + k for k in range(n)]


def scene_test_seeds(n: int) -> list[int]:
    """The first ``n`` seeds of the whole-scene test."""
    if not 0 <= n <= SCENE_TEST_SEED_COUNT:
        raise ValueError(f"at most {SCENE_TEST_SEED_COUNT} test scenes are reserved, asked {n}")
    return [SCENE_TEST_SEED_BASE + k for k in range(n)]


def kind_for(index: int) -> str:
    """Scene kind of the index-th held-out scene (rural, suburban, urban, rural, ...)."""
    return SCENE_KINDS_CYCLE[index % len(SCENE_KINDS_CYCLE)]
