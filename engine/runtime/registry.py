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


def listed_sets(models_dir: Optional[Path] = None) -> list[str]:
    """Every set the manifest names, whole or not ([] when the manifest is missing or unreadable)."""
    try:
        return sorted({s for (_, s) in load_manifest(models_dir)})
    except ModelError:
        return []


def broken_sets(models_dir: Optional[Path] = None) -> dict[str, str]:
    """{set: why it cannot be used} for each set the manifest names that is not whole: a network the
    manifest does not list for it, or a listed file that is missing.

    Why a set is whole or refused: the five networks of a set are trained together; running the
    default set's name with another set's files (or silently another set) gives different tie points
    than the user chose, so a broken set is refused by name with what is missing and how to restore it."""
    try:
        man = load_manifest(models_dir)
    except ModelError:
        return {}
    d = Path(models_dir or MODELS_DIR)
    whole = available_sizes(models_dir)
    out: dict[str, str] = {}
    for size in listed_sets(models_dir):
        unlisted = [n for n in NETWORKS if (n, size) not in man]
        missing = [man[(n, size)].path.name for n in NETWORKS if (n, size) in man and not man[(n, size)].path.exists()]
        if not unlisted and not missing:
            continue
        what = []
        if missing:
            verb = "is" if len(missing) == 1 else "are"
            what.append(f"{', '.join(missing)} {verb} missing from {d}")
        if unlisted:
            what.append(f"the manifest lists no {', '.join(unlisted)} network for it")
        others = [s for s in whole if s != size]
        alt = f", or choose a whole set (--model-size {' or '.join(others)})" if others else ""
        out[size] = (f"model set '{size}' is incomplete: {' and '.join(what)}; a set is used whole or not at all, "
                     "so it is refused rather than replaced by another set. Restore the missing file(s): reinstall "
                     f"the plugin, or copy them back into {d} from the plugin's release archive{alt}")
    return out


def default_set(models_dir: Optional[Path] = None) -> Optional[str]:
    """The set the engine uses when none is named: the manifest's ``default`` when the manifest lists it
    (whole or broken: a broken default is refused by name, never replaced by another set), else
    ``full``, else the first complete set, else the first broken one (so that its refusal says what is
    missing); None when the manifest names no set.

    Why the manifest decides: which variant is better for users (simulator-only or fine-tuned on real
    data) is a measured result, recorded by the training code's ``card`` stage next to the numbers."""
    listed = listed_sets(models_dir)
    if not listed:
        return None
    sizes = available_sizes(models_dir)
    try:
        doc = json.loads((Path(models_dir or MODELS_DIR) / MANIFEST).read_text(encoding="utf-8"))
        preferred = doc.get("default")
    except (OSError, ValueError, AttributeError):
        preferred = None
    if preferred in listed:
        return preferred
    if not sizes:
        return listed[0]
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
                         f"instead of {mf.sha256[:12]}...): it is corrupt or was modified; refusing to use it "
                         "(reinstall the plugin to restore it)")
    return mf.path
