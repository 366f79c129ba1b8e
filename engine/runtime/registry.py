"""Which model files are shipped, and whether each is exactly the file the model card describes.

Why a sha256 check before loading: a model file that differs from the recorded one (a truncated
download, a hand-edited graph, a file from another build) would silently produce wrong tie points;
refusing it with a specific message is the only safe behaviour. ``models/manifest.json`` is
written by the training code's ``card`` stage together with ``models/MODEL_CARD.md``.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from ..errors import ModelError

MODELS_DIR = Path(__file__).resolve().parents[2] / "models"
MANIFEST = "manifest.json"
NETWORKS = ("corrasl_sar", "corrasl_opt", "goodness_sar", "goodness_opt", "orn")


@dataclass(frozen=True)
class ModelFile:
    """One shipped network as recorded in the manifest."""
    name: str                    # e.g. "corrasl_sar"
    size: str                    # model set: "lite", "full", or a fine-tuned variant such as "lite-s1s2"
    path: Path
    sha256: str
    metadata: dict = field(default_factory=dict, compare=False)


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_manifest(models_dir: Optional[Path] = None) -> dict[tuple[str, str], ModelFile]:
    """{(name, size): ModelFile} from ``manifest.json``; ModelError when it is missing or unreadable."""
    d = Path(models_dir or MODELS_DIR)
    mpath = d / MANIFEST
    if not mpath.exists():
        raise ModelError(f"no model manifest at {mpath}: the deep models are not installed; "
                         "use a classical method (structural, ncc, mi) or reinstall the plugin")
    if mpath.is_dir():
        raise ModelError(f"the model manifest {mpath} is a folder, not a file; reinstall the plugin")
    try:
        doc = json.loads(mpath.read_text(encoding="utf-8"))
        out = {}
        for rec in doc["models"]:
            mf = ModelFile(rec["name"], rec["size"], d / rec["file"], rec["sha256"], rec.get("metadata", {}))
            out[(mf.name, mf.size)] = mf
        return out
    except (ValueError, KeyError, TypeError) as exc:
        raise ModelError(f"model manifest {mpath} is corrupt ({exc}); reinstall the plugin") from None


def available_sizes(models_dir: Optional[Path] = None) -> list[str]:
    """Sizes for which every network is listed in the manifest and its file exists."""
    try:
        man = load_manifest(models_dir)
    except ModelError:
        return []
    sizes = sorted({s for (_, s) in man})
    return [s for s in sizes if all((n, s) in man and man[(n, s)].path.exists() for n in NETWORKS)]


def default_set(models_dir: Optional[Path] = None) -> Optional[str]:
    """The set the engine uses when none is named: the manifest's ``default`` when it is installed,
    else ``full``, else the first complete set; None when none is installed.

    Why the manifest decides: which variant is better for users (simulator-only or fine-tuned on real
    data) is a measured result, recorded by the training code's ``card`` stage next to the numbers."""
    sizes = available_sizes(models_dir)
    if not sizes:
        return None
    try:
        doc = json.loads((Path(models_dir or MODELS_DIR) / MANIFEST).read_text(encoding="utf-8"))
        preferred = doc.get("default")
    except (OSError, ValueError):
        preferred = None
    if preferred in sizes:
        return preferred
    return "full" if "full" in sizes else sizes[0]


def verify(mf: ModelFile) -> Path:
    """The file's path after checking it exists and its sha256 equals the recorded one."""
    if not mf.path.exists():
        raise ModelError(f"model file {mf.path.name} is missing from {mf.path.parent}; reinstall the plugin")
    if not mf.path.is_file():
        raise ModelError(f"model file {mf.path.name} in {mf.path.parent} is a folder, not a model file; "
                         "reinstall the plugin")
    actual = sha256_of(mf.path)
    if actual != mf.sha256:
        raise ModelError(f"model file {mf.path.name} does not match its recorded checksum (sha256 {actual[:12]}... "
                         f"instead of {mf.sha256[:12]}...): it is corrupt or was modified; refusing to use it")
    return mf.path
