"""OpenCV SIFT + ratio test + RANSAC: the standard feature-based peer.

Why this peer: SIFT-like keypoint matching is what most users try first (and what many SAR-optical
papers compare against), and it needs no search-range prior. It is run as an off-the-shelf user
would: OpenCV defaults, Lowe's ratio test (0.8), and RANSAC on a similarity transform
(``estimateAffinePartial2D``, 3 px threshold) for patches, a full affine for whole scenes (brute-force
descriptor matching for patches, FLANN KD-trees for whole scenes). Inputs are the same [0, 1] arrays our matchers get,
quantised to 8 bits because OpenCV's SIFT expects them.
"""
from __future__ import annotations

import time
from typing import Optional

import numpy as np

from .common import PeerPatchResult, PeerSceneResult, fail_message

RATIO = 0.8
RANSAC_PX = 3.0
NAME = "sift_ransac"


def available() -> tuple[bool, str]:
    """(True, version) when OpenCV imports, else (False, why)."""
    try:
        import cv2  # noqa: F401
    except Exception as exc:  # pragma: no cover - depends on the environment
        return False, fail_message(exc)
    return True, f"opencv {cv2.__version__}"


def _u8(a: np.ndarray) -> np.ndarray:
    a = np.nan_to_num(np.asarray(a, dtype=np.float32), nan=0.0)
    return np.clip(np.rint(a * 255.0), 0, 255).astype(np.uint8)


_SIFT = None


def _sift():
    global _SIFT
    if _SIFT is None:
        import cv2

        cv2.setNumThreads(1)  # the bench parallelises over pairs; keep timings per core
        _SIFT = cv2.SIFT_create()
    return _SIFT


def _matches(img_a: np.ndarray, img_b: np.ndarray, mask_a: Optional[np.ndarray] = None,
             mask_b: Optional[np.ndarray] = None, flann: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Ratio-test matches from a to b as two (N, 2) arrays of (x, y) = (col, row) pixel-centre coords.

    ``flann``: approximate KD-tree search (OpenCV's usual choice for whole images: speckle gives SAR
    tens of thousands of keypoints and brute force would take minutes per scene).
    """
    import cv2

    sift = _sift()
    ka, da = sift.detectAndCompute(_u8(img_a), None if mask_a is None else mask_a.astype(np.uint8))
    kb, db = sift.detectAndCompute(_u8(img_b), None if mask_b is None else mask_b.astype(np.uint8))
    if da is None or db is None or len(ka) < 2 or len(kb) < 2:
        return np.zeros((0, 2)), np.zeros((0, 2))
    if flann:
        matcher = cv2.FlannBasedMatcher(dict(algorithm=1, trees=5), dict(checks=50))
    else:
        matcher = cv2.BFMatcher(cv2.NORM_L2)
    knn = matcher.knnMatch(da, db, k=2)
    good = [m[0] for m in knn if len(m) == 2 and m[0].distance < RATIO * m[1].distance]
    pa = np.array([ka[m.queryIdx].pt for m in good], dtype=np.float64).reshape(-1, 2)
    pb = np.array([kb[m.trainIdx].pt for m in good], dtype=np.float64).reshape(-1, 2)
    return pa, pb


def _ransac(pa: np.ndarray, pb: np.ndarray, full_affine: bool = False):
    import cv2

    if len(pa) < 3:
        return None, np.zeros(len(pa), bool)
    fn = cv2.estimateAffine2D if full_affine else cv2.estimateAffinePartial2D
    m, inl = fn(pa.astype(np.float32), pb.astype(np.float32), method=cv2.RANSAC,
                ransacReprojThreshold=RANSAC_PX, maxIters=2000, confidence=0.99)
    if m is None or inl is None:
        return None, np.zeros(len(pa), bool)
    return m, inl.ravel().astype(bool)


def match_patch(search: np.ndarray, template: np.ndarray) -> PeerPatchResult:
    """Offset of the template centre inside the search window, (drow, dcol) from the window centre."""
    try:
        pt, ps = _matches(template, search)
        m, inl = _ransac(pt, ps)
        if m is None or inl.sum() < 3:
            return PeerPatchResult(n_matches=int(inl.sum()), quality=float(inl.sum()),
                                   error=f"no consistent match ({len(pt)} ratio-test matches)")
        # OpenCV keypoints put pixel centres at integer coordinates; centres are index size//2.
        tc = np.array([template.shape[1] // 2, template.shape[0] // 2], float)
        x, y = m[:, :2] @ tc + m[:, 2]
        return PeerPatchResult(offset=(float(y - search.shape[0] // 2), float(x - search.shape[1] // 2)),
                               n_matches=int(inl.sum()), quality=float(inl.sum()))
    except Exception as exc:  # report, do not drop
        return PeerPatchResult(error=fail_message(exc))


def match_scene(sar: np.ndarray, opt: np.ndarray, valid: np.ndarray) -> PeerSceneResult:
    """Tie points over a whole co-gridded pair (both [0, 1] on the same grid), RANSAC-filtered (affine)."""
    t0 = time.perf_counter()
    try:
        po, ps = _matches(opt, sar, valid, valid, flann=True)
        _m, inl = _ransac(po, ps, full_affine=True)
        # +0.5: OpenCV pixel-centre coordinates -> the engine's corner convention.
        return PeerSceneResult(opt_cr=po[inl] + 0.5, sar_cr=ps[inl] + 0.5, n_raw=len(po),
                               error="" if inl.sum() >= 3 else f"only {int(inl.sum())} RANSAC inliers",
                               seconds=time.perf_counter() - t0)
    except Exception as exc:
        return PeerSceneResult(error=fail_message(exc), seconds=time.perf_counter() - t0)


__all__ = ["NAME", "available", "match_patch", "match_scene", "RATIO", "RANSAC_PX"]


def patch_keep(r: PeerPatchResult) -> bool:
    """Answered at all means >= 3 RANSAC inliers already; that is SIFT's own filter."""
    return r.n_matches >= 3
