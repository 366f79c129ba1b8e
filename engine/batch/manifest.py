"""The batch manifest: which pairs to match, with which options.

CSV (one row per pair, a header row; ``#`` lines are comments) or YAML (a list of pairs, or a
mapping with ``defaults`` and ``pairs``)::

    name,sar,optical,aoi,aoi_crs,method,transform,n_target
    tile_a,s1/a.tif,s2/a.tif,,,structural,affine,300
    tile_b,s1/b.tif,s2/b.tif,"12.1,45.2,12.3,45.4",EPSG:4326,,shift,

Columns: ``sar`` and ``optical`` (required; relative paths are relative to the manifest's folder,
``/vsicurl/...`` and other GDAL paths are kept as they are), ``name`` (the output sub-folder,
default the optical file's stem), the AOI as ``aoi`` ("xmin,ymin,xmax,ymax") or the four columns
``xmin,ymin,xmax,ymax``, ``aoi_crs``, any ``MatchParams`` option (``method``, ``transform``,
``n_target``, ``max_offset`` ...; CLI spellings accepted) and the output switches ``corrected``
and ``checkerboard``. An empty cell means the default. Unknown columns, missing required columns,
bad values and duplicate names are ``InputError``s naming the row.
"""
from __future__ import annotations

import csv
import dataclasses
import os
import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Optional

from ..errors import InputError
from ..params import MatchParams

REQUIRED = ("sar", "optical")
ALIASES = {
    "opt": "optical", "optical_path": "optical", "sar_path": "sar",
    "max_offset": "max_offset_px", "ransac_threshold": "ransac_threshold_px", "optical_bands": "opt_bands",
    "no_corrected": None, "no_checkerboard": None,  # CLI negations are not manifest options (use corrected=no)
}
AOI_COLUMNS = ("xmin", "ymin", "xmax", "ymax")
OUTPUT_OPTIONS = ("corrected", "checkerboard")
_PARAM_FIELDS = {f.name: f for f in dataclasses.fields(MatchParams)}
_INT = {"template_size", "search_size", "n_target", "grid_spacing", "sar_band", "seed", "consistency_k"}
_FLOAT = {"max_offset_px", "min_quality", "ransac_threshold_px", "consistency_z", "resolution", "orn_threshold",
          "goodness_threshold"}
_NAME_OK = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass
class PairJob:
    """One pair of the batch: inputs, parameters, where its outputs go."""

    name: str
    sar: str
    optical: str
    params: MatchParams
    out_dir: str = ""
    corrected: bool = True
    checkerboard: bool = True
    row: int = 0
    """Row of the manifest (1 = first pair), for messages."""
    options: dict = field(default_factory=dict)
    """The options as given in the manifest (for the summary)."""


def _norm_key(k: Any) -> str:
    key = str(k).strip().lower().replace("-", "_").replace(" ", "_")
    return ALIASES.get(key, key) if key in ALIASES else key


def known_columns() -> list[str]:
    return sorted(set(("name",) + REQUIRED + ("aoi", "aoi_crs") + AOI_COLUMNS + OUTPUT_OPTIONS)
                  | (set(_PARAM_FIELDS) - {"aoi", "aoi_crs"})
                  | {k for k, v in ALIASES.items() if v})


def _empty(v: Any) -> bool:
    return v is None or (isinstance(v, str) and v.strip() == "")


def _bool(v: Any, what: str) -> bool:
    if isinstance(v, bool):
        return v
    s = str(v).strip().lower()
    if s in ("1", "true", "yes", "y", "on"):
        return True
    if s in ("0", "false", "no", "n", "off"):
        return False
    raise InputError(f"{what} must be yes/no (true/false), got '{v}'.")


def _number(v: Any, kind: type, what: str):
    try:
        if kind is int:
            f = float(v)
            if not f.is_integer():
                raise ValueError
            return int(f)
        return float(v)
    except (TypeError, ValueError):
        raise InputError(f"{what} must be {'an integer' if kind is int else 'a number'}, got '{v}'.") from None


def _aoi(v: Any, what: str) -> tuple[float, float, float, float]:
    vals = v if isinstance(v, (list, tuple)) else str(v).replace(";", ",").split(",")
    try:
        out = tuple(float(x) for x in vals)
    except (TypeError, ValueError):
        out = ()
    if len(out) != 4 or out[0] >= out[2] or out[1] >= out[3]:
        raise InputError(f"{what} must be 'xmin,ymin,xmax,ymax' with xmin<xmax and ymin<ymax, got '{v}'.")
    return out  # type: ignore[return-value]


def _resolve_path(p: Any, base: str) -> str:
    s = str(p).strip()
    if s.startswith("/vsi") or re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", s) or ":" in s.split("/")[0][2:]:
        return s  # GDAL virtual file systems, URLs, driver-prefixed names (NETCDF:...) are kept as given
    s = os.path.expanduser(s)
    return s if os.path.isabs(s) else os.path.normpath(os.path.join(base, s))


def _job(values: dict, row: int, base: str, out_root: str) -> PairJob:
    where = f"Manifest row {row}"
    vals = {k: v for k, v in values.items() if not _empty(v)}
    if vals.get("name") is not None:
        where += f" ('{vals['name']}')"
    for req in REQUIRED:
        if req not in vals:
            raise InputError(f"{where}: the '{req}' path is empty.")
    kw: dict[str, Any] = {}
    out = {"corrected": True, "checkerboard": True}
    corners = {k: vals.pop(k) for k in AOI_COLUMNS if k in vals}
    if corners and "aoi" in vals:
        raise InputError(f"{where}: give the AOI either as 'aoi' or as xmin,ymin,xmax,ymax, not both.")
    if corners:
        if len(corners) != 4:
            raise InputError(f"{where}: the AOI needs all four of xmin,ymin,xmax,ymax "
                             f"(missing {', '.join(k for k in AOI_COLUMNS if k not in corners)}).")
        vals["aoi"] = [corners[k] for k in AOI_COLUMNS]
    for key, v in vals.items():
        what = f"{where}: '{key}'"
        if key in ("name", "sar", "optical"):
            continue
        if key in OUTPUT_OPTIONS:
            out[key] = _bool(v, what)
        elif key == "aoi":
            kw["aoi"] = _aoi(v, what)
        elif key == "opt_bands":
            vv = v if isinstance(v, (list, tuple)) else str(v).replace(";", ",").split(",")
            kw["opt_bands"] = [_number(b, int, what) for b in vv]
        elif key in _INT:
            kw[key] = _number(v, int, what)
        elif key in _FLOAT:
            kw[key] = _number(v, float, what)
        elif key in _PARAM_FIELDS:
            kw[key] = str(v).strip()
        else:  # parse_manifest_rows rejects unknown columns first; YAML keys land here
            raise InputError(f"{where}: unknown option '{key}'. Known options: {', '.join(known_columns())}.")
    params = MatchParams(**kw)
    try:
        params.validate()
    except InputError as exc:
        raise InputError(f"{where}: {exc}") from None
    if kw.get("aoi") is None and kw.get("aoi_crs"):
        raise InputError(f"{where}: 'aoi_crs' is given without an AOI.")
    sar, opt = _resolve_path(vals["sar"], base), _resolve_path(vals["optical"], base)
    name = str(vals.get("name") or os.path.splitext(os.path.basename(opt.rstrip("/")))[0]).strip()
    if name.lower().startswith("batch_summary"):
        raise InputError(f"{where}: the name '{name}' is reserved for the batch summary files; choose another.")
    if not _NAME_OK.match(name) or name in (".", ".."):
        raise InputError(f"{where}: the name '{name}' cannot be a folder name; use letters, digits, '.', '_' "
                         "and '-' (starting with a letter or digit).")
    return PairJob(name=name, sar=sar, optical=opt, params=params, out_dir=os.path.join(out_root, name),
                   corrected=out["corrected"], checkerboard=out["checkerboard"], row=row,
                   options={k: v for k, v in values.items() if not _empty(v)})


def parse_manifest_rows(rows: Iterable[dict], base: str = ".", out_root: str = ".",
                        defaults: Optional[dict] = None) -> list[PairJob]:
    """Validate manifest rows (dicts of column -> value) into jobs; ``defaults`` apply to every row."""
    jobs: list[PairJob] = []
    known = set(known_columns())
    defaults = {_norm_key(k): v for k, v in (defaults or {}).items()}
    for k in defaults:
        if k not in known or k is None:
            raise InputError(f"Manifest defaults: unknown option '{k}'. Known options: {', '.join(sorted(known))}.")
    for i, raw in enumerate(rows, start=1):
        if not isinstance(raw, dict):
            raise InputError(f"Manifest row {i}: expected a mapping of options, got {type(raw).__name__}.")
        values = dict(defaults)
        for k, v in raw.items():
            key = _norm_key(k)
            if key is None or key not in known:
                raise InputError(f"Manifest row {i}: unknown option '{k}'. Known options: {', '.join(sorted(known))}.")
            values[key] = v
        jobs.append(_job(values, i, base, out_root))
    if not jobs:
        raise InputError("The manifest lists no pairs.")
    seen: dict[str, int] = {}
    for j in jobs:
        if j.name in seen:
            raise InputError(f"Manifest rows {seen[j.name]} and {j.row} have the same name '{j.name}' (the output "
                             "sub-folder); give each pair a unique 'name'.")
        seen[j.name] = j.row
    return jobs


def _read_csv(path: str) -> list[dict]:
    with open(path, newline="", encoding="utf-8-sig") as fh:
        lines = [ln for ln in fh if ln.strip() and not ln.lstrip().startswith("#")]
    if not lines:
        raise InputError(f"The manifest '{path}' is empty.")
    reader = csv.DictReader(lines)
    header = [_norm_key(h) for h in (reader.fieldnames or [])]
    missing = [c for c in REQUIRED if c not in header]
    if missing:
        raise InputError(f"The manifest '{path}' lacks the column(s) {', '.join(missing)} (its header: "
                         f"{', '.join(reader.fieldnames or [])}).")
    known = set(known_columns())
    unknown = [h for h, n in zip(reader.fieldnames or [], header) if n is None or n not in known]
    if unknown:
        raise InputError(f"The manifest '{path}' has unknown column(s) {', '.join(unknown)}. Known columns: "
                         f"{', '.join(sorted(known))}.")
    if len(set(header)) != len(header):
        raise InputError(f"The manifest '{path}' repeats a column: {', '.join(reader.fieldnames or [])}.")
    rows = []
    for r in reader:
        if None in r:
            raise InputError(f"Manifest '{path}', row {len(rows) + 1}: more values than columns.")
        rows.append(r)
    return rows


def _read_yaml(path: str) -> tuple[list, dict]:
    try:
        import yaml
    except ImportError:  # pragma: no cover - PyYAML ships with Debian's Python
        raise InputError("A YAML manifest needs PyYAML (pip install pyyaml); or use a CSV manifest.") from None
    try:
        with open(path, encoding="utf-8") as fh:
            doc = yaml.safe_load(fh)
    except yaml.YAMLError as exc:
        raise InputError(f"The manifest '{path}' is not valid YAML: {exc}") from None
    if isinstance(doc, dict):
        unknown = set(doc) - {"defaults", "pairs"}
        if unknown:
            raise InputError(f"The manifest '{path}' has unknown top-level key(s) {', '.join(map(str, unknown))}; "
                             "use 'pairs' (a list) and optionally 'defaults'.")
        pairs, defaults = doc.get("pairs"), doc.get("defaults") or {}
    else:
        pairs, defaults = doc, {}
    if not isinstance(pairs, list):
        raise InputError(f"The manifest '{path}' must hold a list of pairs (or 'pairs:' with a list).")
    if not isinstance(defaults, dict):
        raise InputError(f"The manifest '{path}': 'defaults' must be a mapping of options.")
    return pairs, defaults


def load_manifest(path: str, out_root: str = ".") -> list[PairJob]:
    """Read and validate a CSV or YAML manifest (by extension: .yaml/.yml is YAML, anything else CSV)."""
    if os.path.isdir(path):
        raise InputError(f"The manifest '{path}' is a folder, not a manifest file; give the path of the CSV or "
                         "YAML file that lists the pairs.")
    if not os.path.isfile(path):
        raise InputError(f"The manifest '{path}' does not exist.")
    base = os.path.dirname(os.path.abspath(path))
    if path.lower().endswith((".yaml", ".yml")):
        pairs, defaults = _read_yaml(path)
        return parse_manifest_rows(pairs, base, out_root, defaults)
    return parse_manifest_rows(_read_csv(path), base, out_root)
