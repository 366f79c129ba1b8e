"""Tests for engine.outputs: atomic writes, .points files, GeoPackage, warping, checkerboard."""
from __future__ import annotations

import math
import os
import re
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from osgeo import gdal, ogr, osr

from engine.errors import CancelledError, InputError, OutputError, TooFewPointsError
from engine.geometry import fit_transform
from engine.outputs import (
    atomic_path,
    check_output_path,
    checkerboard,
    read_points,
    read_tiepoints_gpkg,
    shift_georeference,
    warp_with_gcps,
    warp_with_transform,
    write_checkerboard_png,
    write_gcp_vrt,
    write_points,
    write_tiepoints_gpkg,
)
from engine.progress import CancelToken
from engine.types import TieSet, TiePoint

E0, N0, PIX = 400_000.0, 5_000_000.0, 10.0
W = H = 200


def utm33() -> str:
    s = osr.SpatialReference()
    s.ImportFromEPSG(32633)
    return s.ExportToWkt()


@pytest.fixture
def ramp_tif(tmp_path) -> Path:
    """200×200, 2 bands: band 1 = pixel-centre column (c + 0.5), band 2 = pixel-centre row (r + 0.5).

    Any resampling of this linear pattern with bilinear interpolation returns exactly the source
    pixel position a target pixel was taken from, so warps can be checked to sub-pixel accuracy.
    """
    p = tmp_path / "optical.tif"
    ds = gdal.GetDriverByName("GTiff").Create(str(p), W, H, 2, gdal.GDT_Float32)
    ds.SetGeoTransform((E0, PIX, 0.0, N0, 0.0, -PIX))
    ds.SetProjection(utm33())
    rows, cols = np.mgrid[0:H, 0:W].astype(np.float32)
    ds.GetRasterBand(1).WriteArray(cols + 0.5)
    ds.GetRasterBand(2).WriteArray(rows + 0.5)
    ds = None
    return p


def sample(path: Path, xy: np.ndarray) -> np.ndarray:
    """Values (N, bands) of the raster pixels containing the map points ``xy`` (NaN outside)."""
    ds = gdal.Open(str(path))
    gt = ds.GetGeoTransform()
    inv = gdal.InvGeoTransform(gt)
    data = ds.ReadAsArray().astype(float)
    if data.ndim == 2:
        data = data[None]
    out = np.full((len(xy), data.shape[0]), np.nan)
    for i, (x, y) in enumerate(xy):
        c = inv[0] + x * inv[1] + y * inv[2]
        r = inv[3] + x * inv[4] + y * inv[5]
        ci, ri = int(math.floor(c)), int(math.floor(r))
        if 0 <= ri < data.shape[1] and 0 <= ci < data.shape[2]:
            out[i] = data[:, ri, ci]
    return out


def nominal_xy(col_row: np.ndarray) -> np.ndarray:
    return np.column_stack([E0 + col_row[:, 0] * PIX, N0 - col_row[:, 1] * PIX])


def leftover_files(folder: Path, keep: set[str]) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name not in keep)


# ------------------------------------------------------------------ atomic / path checks


def test_atomic_path_replaces_on_success_and_cleans_on_error(tmp_path):
    final = tmp_path / "out.txt"
    final.write_text("old")
    with atomic_path(final) as tmp:
        assert Path(tmp).parent == tmp_path
        assert Path(tmp).suffix == ".txt" and Path(tmp).name.startswith(".out.tmp-")
        Path(tmp).write_text("new")
    assert final.read_text() == "new"

    with pytest.raises(RuntimeError):
        with atomic_path(final) as tmp:
            Path(tmp).write_text("half")
            Path(tmp + ".aux.xml").write_text("<PAM/>")
            raise RuntimeError("boom")
    assert final.read_text() == "new"
    assert leftover_files(tmp_path, {"out.txt"}) == []

    # OS-level failures inside the block surface as OutputError, still without leftovers
    with pytest.raises(OutputError, match="Cannot write"):
        with atomic_path(final) as tmp:
            Path(tmp).write_text("x")
            os.mkdir(tmp_path / "no" / "such" / "dir")
    assert final.read_text() == "new"
    assert leftover_files(tmp_path, {"out.txt"}) == []


def test_check_output_path_refuses_inputs_and_bad_folders(tmp_path, ramp_tif):
    with pytest.raises(OutputError, match="same file as the input"):
        check_output_path(ramp_tif, [str(ramp_tif)])
    link = tmp_path / "link.tif"
    link.symlink_to(ramp_tif)
    with pytest.raises(OutputError, match="same file as the input"):
        check_output_path(link, [str(ramp_tif)])
    with pytest.raises(OutputError, match="same file as the input"):
        check_output_path(tmp_path / "sub" / ".." / "optical.tif", [str(ramp_tif)])
    with pytest.raises(OutputError, match="does not exist"):
        check_output_path(tmp_path / "missing" / "out.tif", [str(ramp_tif)])
    with pytest.raises(OutputError, match="is a folder"):
        check_output_path(tmp_path, [])
    assert check_output_path(tmp_path / "new.tif", [str(ramp_tif)]) == tmp_path / "new.tif"


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write to read-only folders")
def test_check_output_path_unwritable_folder(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        with pytest.raises(OutputError, match="not writable"):
            check_output_path(ro / "x.tif", [])
    finally:
        ro.chmod(0o755)


# ------------------------------------------------------------------ tie sets


def make_tieset(n: int = 12) -> TieSet:
    rng = np.random.default_rng(3)
    pts = []
    for i in range(n):
        col, row = rng.uniform(0, W, 2)
        ox, oy = E0 + col * PIX, N0 - row * PIX
        sx, sy = ox + 35.0 + rng.normal(0, 0.3), oy - 20.0 + rng.normal(0, 0.3)
        flagged = i % 4 == 3
        pts.append(TiePoint(
            id=100 + i, opt_col=col, opt_row=row, opt_x=ox, opt_y=oy,
            sar_col=col + 3.5, sar_row=row + 2.0, sar_x=sx, sar_y=sy,
            score=float(rng.uniform(0.2, 0.9)), quality=float(rng.uniform(1, 3)),
            goodness=float(rng.uniform()), orn_prob=math.nan if i == 0 else float(rng.uniform()),
            cov=(0.01 * i, -0.002, 0.02), status="flagged" if flagged else "inlier",
            flag_reason="direction" if flagged else "", residual_px=float(rng.uniform(0, 1)),
        ))
    return TieSet(points=pts, crs_wkt=utm33(), pixel_size=PIX)


# ------------------------------------------------------------------ .points files


@pytest.mark.parametrize("optical, expect", [
    ("/data/opt.tif", "opt.tif.points"), ("/data/wv_opt.tiff", "wv_opt.tiff.points"),
    ("/data/opt.jp2", "opt.jp2.points"), ("/data/S2.SAFE.vrt", "S2.SAFE.vrt.points"),
    ("/vsizip/scene.zip/img.TIF", "img.TIF.points"), ("opt", "opt.points"),
])
def test_points_file_is_named_like_the_georeferencer_expects(tmp_path, optical, expect):
    """One rule everywhere: <optical file name, extension included>.points, the name QGIS's
    Georeferencer loads by itself next to the raster (the plugin's export default uses it too)."""
    import importlib

    from conftest import PLUGIN_PKG, load_plugin_package

    from engine.write_results import output_paths_for, points_name

    paths = output_paths_for(optical, str(tmp_path), corrected=True, checkerboard=True)
    assert os.path.basename(paths.points) == expect == points_name(optical)
    assert os.path.basename(paths.corrected) == os.path.splitext(os.path.basename(optical))[0] + "_corrected.tif"
    load_plugin_package()
    export = importlib.import_module(PLUGIN_PKG + ".plugin.export")    # the dock's export default and VRT name
    assert export.points_name(optical) == expect
    vrt = export.gcp_vrt_name(str(tmp_path / expect), optical)
    assert os.path.basename(vrt) == os.path.splitext(os.path.basename(optical))[0] + "_gcps.vrt"
    assert export.gcp_vrt_name(str(tmp_path / "mine.points"), optical) == str(tmp_path / "mine_gcps.vrt")


def test_points_round_trip(tmp_path):
    ts = make_tieset()
    p = tmp_path / "optical.tif.points"
    n = write_points(p, ts)
    assert n == len(ts.points)
    lines = p.read_text().split("\n")
    assert lines[0].startswith("#CRS: ") and "\n" not in lines[0]
    assert lines[1] == "mapX,mapY,sourceX,sourceY,enable,dX,dY,residual"
    pf = read_points(p)
    assert len(pf) == len(ts.points)
    np.testing.assert_allclose(pf.map_xy, [[q.sar_x, q.sar_y] for q in ts.points], atol=1e-6, rtol=0)
    np.testing.assert_allclose(pf.source_xy, [[q.opt_x, q.opt_y] for q in ts.points], atol=1e-6, rtol=0)
    assert pf.enabled.tolist() == [q.status == "inlier" for q in ts.points]
    np.testing.assert_allclose(pf.residual, [q.residual_px for q in ts.points], atol=1e-6)
    s1, s2 = osr.SpatialReference(), osr.SpatialReference()
    s1.SetFromUserInput(pf.crs_wkt)
    s2.ImportFromEPSG(32633)
    assert s1.IsSame(s2)
    # pixel positions recovered through the optical geotransform
    np.testing.assert_allclose(pf.source_pixels((E0, PIX, 0, N0, 0, -PIX)),
                               [[q.opt_col, q.opt_row] for q in ts.points], atol=1e-6)


def qgis_load_gcps(text: str):
    """Line-by-line port of QgsGCPList::loadGcps (QGIS >= 3.26) to check our files load there."""
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines = lines[:-1]  # QTextStream::atEnd() after the final newline
    i = 0
    crs = None
    line = lines[i]
    if "#CRS: " in line:
        crs = line.replace("#CRS: ", "")
        i += 1  # the header line is read and dropped
    i += 1
    out = []
    for n, line in enumerate(lines[i:], start=i + 1):
        ls = line.split(",") if "," in line else line.split("\t")
        assert len(ls) >= 4, f"QGIS would report malformed content at line {n}"
        enable = int(ls[4]) if len(ls) >= 5 else 1
        out.append((float(ls[0]), float(ls[1]), float(ls[2]), float(ls[3]), enable))
    return crs, out


def test_points_file_loads_with_qgis_algorithm(tmp_path):
    ts = make_tieset(6)
    p = tmp_path / "q.points"
    write_points(p, ts)
    crs, rows = qgis_load_gcps(p.read_text())
    assert crs == " ".join(ts.crs_wkt.split())
    assert [r[:4] for r in rows] == [(q.sar_x, q.sar_y, q.opt_x, q.opt_y) for q in ts.points]
    assert [r[4] for r in rows] == [1 if q.status == "inlier" else 0 for q in ts.points]


def test_points_non_georeferenced_source_uses_negative_rows(tmp_path):
    ts = make_tieset(5)
    p = tmp_path / "a.points"
    write_points(p, ts, source_georeferenced=False, include_flagged=False)
    pf = read_points(p)
    kept = [q for q in ts.points if q.status == "inlier"]
    np.testing.assert_allclose(pf.source_xy, [[q.opt_col, -q.opt_row] for q in kept], atol=1e-9)
    np.testing.assert_allclose(pf.source_pixels(), [[q.opt_col, q.opt_row] for q in kept], atol=1e-9)


def test_points_opt_transform_geotransform(tmp_path):
    ts = make_tieset(4)
    gt = (1000.0, 2.0, 0.0, 9000.0, 0.0, -2.0)  # optical stored in another grid/CRS
    p = tmp_path / "b.points"
    write_points(p, ts, opt_transform=gt)
    pf = read_points(p)
    exp = [[1000 + 2 * q.opt_col, 9000 - 2 * q.opt_row] for q in ts.points]
    np.testing.assert_allclose(pf.source_xy, exp, atol=1e-9)


def test_read_points_qgis_file_with_crlf_extra_columns_blank_lines(tmp_path):
    text = (
        "#CRS: PROJCS[\"WGS 84 / UTM zone 33N\",GEOGCS[\"WGS 84\"]]\r\n"
        "mapX,mapY,sourceX,sourceY,enable,dX,dY,residual,comment\r\n"
        "\r\n"
        "400100.5,4999800.25,401.5,-203.25,1,0.1,-0.2,0.2236,first\r\n"
        "400200,4999700,402,-204,0,0,0,0,second,and,more\r\n"
        "   \r\n"
    )
    p = tmp_path / "c.points"
    p.write_bytes(text.encode())
    pf = read_points(p)
    assert pf.crs_wkt == 'PROJCS["WGS 84 / UTM zone 33N",GEOGCS["WGS 84"]]'
    np.testing.assert_allclose(pf.map_xy, [[400100.5, 4999800.25], [400200, 4999700]])
    np.testing.assert_allclose(pf.source_xy, [[401.5, -203.25], [402, -204]])
    assert pf.enabled.tolist() == [True, False]
    np.testing.assert_allclose(pf.residual, [0.2236, 0.0])
    np.testing.assert_allclose(pf.dxdy[0], [0.1, -0.2])


def test_read_points_without_crs_line_or_header_and_old_formats(tmp_path):
    p = tmp_path / "d.points"
    p.write_text("mapX,mapY,pixelX,pixelY,enable\n10,20,1,-2,1\n30,40,3,-4\n")
    pf = read_points(p)
    assert pf.crs_wkt is None
    np.testing.assert_allclose(pf.map_xy, [[10, 20], [30, 40]])
    assert pf.enabled.tolist() == [True, True]
    assert np.isnan(pf.residual).all()
    # headerless and tab-separated (pre-3.0 georeferencer)
    p.write_text("10\t20\t1\t-2\t0\n")
    pf = read_points(p)
    np.testing.assert_allclose(pf.source_xy, [[1, -2]])
    assert pf.enabled.tolist() == [False]
    # reordered columns found by name
    p.write_text("sourceX,sourceY,mapX,mapY\n1,2,3,4\n")
    pf = read_points(p)
    np.testing.assert_allclose(pf.map_xy, [[3, 4]])
    np.testing.assert_allclose(pf.source_xy, [[1, 2]])


@pytest.mark.parametrize(
    "body, line",
    [
        ("#CRS: x\nmapX,mapY,sourceX,sourceY\n1,2,3,4\n1,2,3\n", 4),
        ("#CRS: x\nmapX,mapY,sourceX,sourceY\n1,2,3,4\n\n1,abc,3,4\n", 5),
        ("mapX,mapY,sourceX,sourceY,enable\n1,2,3,4,maybe\n", 2),
        ("mapX,mapY,sourceX,sourceY\n1,nan,3,4\n", 2),
    ],
)
def test_read_points_malformed_line_reports_line_number(tmp_path, body, line):
    p = tmp_path / "bad.points"
    p.write_text(body)
    with pytest.raises(InputError, match=f"line {line}"):
        read_points(p)


def test_read_points_missing_file(tmp_path):
    with pytest.raises(InputError, match="not found"):
        read_points(tmp_path / "nope.points")


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=300) | st.text(alphabet="0123456789.,-+eE\t\r\n #CRS:mapXYsourcenbl", max_size=300))
def test_read_points_fuzz_only_input_errors(tmp_path, content):
    p = tmp_path / "fuzz.points"
    p.write_bytes(content if isinstance(content, bytes) else content.encode())
    try:
        pf = read_points(p)
    except InputError:
        return
    assert pf.map_xy.shape == pf.source_xy.shape == (len(pf), 2)
    assert np.isfinite(pf.map_xy).all() and np.isfinite(pf.source_xy).all()


finite = st.floats(min_value=-1e12, max_value=1e12, allow_nan=False, allow_infinity=False)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(st.tuples(finite, finite, finite, finite, st.booleans(),
                               st.floats(0, 1e6, allow_nan=False)), max_size=25),
       crlf=st.booleans(), with_crs=st.booleans())
def test_points_round_trip_property(tmp_path, rows, crlf, with_crs):
    """Any finite points survive write_points -> read_points exactly (also with Windows line endings
    and without a CRS line)."""
    pts = [TiePoint(id=i + 1, opt_col=0.0, opt_row=0.0, opt_x=ox, opt_y=oy, sar_col=0.0, sar_row=0.0, sar_x=sx,
                    sar_y=sy, status="inlier" if on else "flagged", residual_px=res)
           for i, (sx, sy, ox, oy, on, res) in enumerate(rows)]
    p = tmp_path / "prop.points"
    assert write_points(p, TieSet(points=pts, crs_wkt=utm33() if with_crs else "", pixel_size=PIX)) == len(rows)
    if crlf:
        p.write_bytes(p.read_bytes().replace(b"\n", b"\r\n"))
    pf = read_points(p)
    assert len(pf) == len(rows)
    assert pf.map_xy.tolist() == [[r[0], r[1]] for r in rows]          # repr() round-trips doubles exactly
    assert pf.source_xy.tolist() == [[r[2], r[3]] for r in rows]
    assert pf.enabled.tolist() == [r[4] for r in rows]
    assert pf.residual.tolist() == [r[5] for r in rows]
    assert (pf.crs_wkt == " ".join(utm33().split())) if with_crs else pf.crs_wkt is None


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(garbage=st.lists(st.text(max_size=40) | st.sampled_from(["1,2,3", "a,b,c,d", "1,2,3,4,x", "#CRS:", ",,,,",
                                                                 "nan,1,2,3", "1e999,0,0,0", "\t\t\t"]),
                        min_size=1, max_size=4),
       where=st.lists(st.integers(0, 5), min_size=4, max_size=4))
def test_read_points_garbage_lines_never_crash(tmp_path, garbage, where):
    """Garbage lines inserted anywhere in a valid file: either they are ignored (blank, comments) or read
    as data, or the read fails with the engine's InputError naming the line; never anything else."""
    lines = ["#CRS: " + " ".join(utm33().split()), "mapX,mapY,sourceX,sourceY,enable,dX,dY,residual",
             "400100.5,4999800.25,401.5,-203.25,1,0,0,0.5", "400200,4999700,402,-204,0,0,0,1.5"]
    for g, w in zip(garbage, where):
        lines.insert(min(w, len(lines)), g)
    p = tmp_path / "garbage.points"
    p.write_bytes("\n".join(lines).encode("utf-8", errors="surrogatepass"))
    try:
        pf = read_points(p)
    except InputError as exc:
        assert type(exc) is InputError and re.search(r"garbage\.points: malformed line \d+", str(exc)), exc
        return
    assert len(pf) >= 2
    assert np.isfinite(pf.map_xy).all() and np.isfinite(pf.source_xy).all()


# ------------------------------------------------------------------ GeoPackage


def test_gpkg_round_trip(tmp_path):
    ts = make_tieset()
    p = tmp_path / "ties.gpkg"
    write_tiepoints_gpkg(p, ts)
    back = read_tiepoints_gpkg(p)
    assert back.pixel_size == PIX
    s1, s2 = osr.SpatialReference(), osr.SpatialReference()
    s1.SetFromUserInput(back.crs_wkt)
    s2.ImportFromEPSG(32633)
    assert s1.IsSame(s2)
    assert len(back.points) == len(ts.points)
    for a, b in zip(ts.points, back.points):
        for name in ("id", "opt_col", "opt_row", "opt_x", "opt_y", "sar_col", "sar_row", "sar_x", "sar_y",
                     "score", "quality", "goodness", "orn_prob", "residual_px"):
            va, vb = getattr(a, name), getattr(b, name)
            assert (math.isnan(va) and math.isnan(vb)) or va == pytest.approx(vb, abs=1e-9), name
        assert a.cov == pytest.approx(b.cov)
        assert (a.status, a.flag_reason) == (b.status, b.flag_reason)

    ds = ogr.Open(str(p))
    lyr = ds.GetLayerByName("tie_points")
    f = lyr.GetNextFeature()
    g = f.GetGeometryRef()
    assert (g.GetX(), g.GetY()) == pytest.approx((ts.points[0].sar_x, ts.points[0].sar_y))
    assert f.GetField("disp_m") == pytest.approx(math.hypot(ts.points[0].dx, ts.points[0].dy))
    assert f.GetField("disp_px") == pytest.approx(math.hypot(ts.points[0].dx, ts.points[0].dy) / PIX)
    assert f.IsFieldNull("orn_prob")
    lines = ds.GetLayerByName("displacements")
    assert lines.GetFeatureCount() == len(ts.points)
    lf = lines.GetNextFeature()
    lg = lf.GetGeometryRef()
    assert lg.GetPointCount() == 2
    assert lg.GetPoint_2D(0) == pytest.approx((ts.points[0].opt_x, ts.points[0].opt_y))
    assert lg.GetPoint_2D(1) == pytest.approx((ts.points[0].sar_x, ts.points[0].sar_y))
    lyr = lines = f = lf = None
    ds = None
    assert leftover_files(tmp_path, {"ties.gpkg"}) == []


# ------------------------------------------------------------------ warping


DX, DY = 35.0, -20.0  # 3.5 px east, 2 px south


def centre_probe(step: int = 17) -> np.ndarray:
    """Source pixel centres (col, row) spread over the interior."""
    c, r = np.meshgrid(np.arange(5, W - 5, step) + 0.5, np.arange(5, H - 5, step) + 0.5)
    return np.column_stack([c.ravel(), r.ravel()])


def test_shift_georeference_is_exact(tmp_path, ramp_tif):
    out = tmp_path / "shifted.tif"
    shift_georeference(ramp_tif, out, DX, DY)
    ds = gdal.Open(str(out))
    assert ds.GetGeoTransform() == pytest.approx((E0 + DX, PIX, 0.0, N0 + DY, 0.0, -PIX), abs=1e-9)
    src = gdal.Open(str(ramp_tif))
    np.testing.assert_array_equal(ds.ReadAsArray(), src.ReadAsArray())
    assert ds.GetMetadataItem("COMPRESSION", "IMAGE_STRUCTURE") == "DEFLATE"
    # content lands at the shifted map position
    cr = centre_probe()
    vals = sample(out, nominal_xy(cr) + [DX, DY])
    np.testing.assert_allclose(vals, cr, atol=1e-6)


def test_warp_with_gcps_poly1_moves_content_to_expected_map_position(tmp_path, ramp_tif):
    corners = np.array([[0, 0], [W, 0], [0, H], [W, H], [W / 2, H / 2]], float)
    xy = nominal_xy(corners) + [DX, DY]
    gcps = [(c, r, x, y) for (c, r), (x, y) in zip(corners, xy)]
    out = tmp_path / "warped.tif"
    seen = []
    warp_with_gcps(ramp_tif, out, gcps, utm33(), method="poly1", dst_res=PIX,
                   progress=lambda f, s: seen.append(f))
    ds = gdal.Open(str(out))
    gt = ds.GetGeoTransform()
    assert gt == pytest.approx((E0 + DX, PIX, 0.0, N0 + DY, 0.0, -PIX), abs=1e-6)
    assert (ds.RasterXSize, ds.RasterYSize) == (W, H)
    cr = centre_probe()
    vals = sample(out, nominal_xy(cr) + [DX, DY])
    np.testing.assert_allclose(vals, cr, atol=1e-3)
    assert seen and seen[-1] == pytest.approx(1.0)
    ds = None
    assert leftover_files(tmp_path, {"optical.tif", "warped.tif"}) == []


def test_warp_with_gcps_target_aligned_pixels(tmp_path, ramp_tif):
    corners = np.array([[0, 0], [W, 0], [0, H], [W, H]], float)
    xy = nominal_xy(corners) + [DX, DY]
    gcps = [(c, r, x, y) for (c, r), (x, y) in zip(corners, xy)]
    out = tmp_path / "tap.tif"
    warp_with_gcps(ramp_tif, out, gcps, utm33(), method="poly1", dst_res=20.0, target_aligned_pixels=True,
                   resampling="nearest", band_subset=[2])
    ds = gdal.Open(str(out))
    gt = ds.GetGeoTransform()
    assert ds.RasterCount == 1
    assert gt[0] % 20.0 == pytest.approx(0.0, abs=1e-6) and gt[3] % 20.0 == pytest.approx(0.0, abs=1e-6)
    assert gt[1] == 20.0 and gt[5] == -20.0


def test_warp_with_transform_affine_is_an_exact_geotransform(tmp_path, ramp_tif):
    cr = centre_probe(40)
    src_xy = nominal_xy(cr)
    A = np.array([[1.001, 0.0005], [-0.0005, 0.999]])
    c = np.array([E0, N0])
    dst_xy = (src_xy - c) @ A.T + c + [DX, DY]
    t = fit_transform("affine", src_xy, dst_xy)
    out = tmp_path / "affine.tif"
    warp_with_transform(ramp_tif, out, t, utm33())
    ds = gdal.Open(str(out))
    gt = np.array(ds.GetGeoTransform())
    # pixel (c, r) must land at A·nominal(c, r) + shift
    probe = np.array([[0, 0], [W, 0], [0, H], [123.5, 45.5]], float)
    got = np.column_stack([gt[0] + probe[:, 0] * gt[1] + probe[:, 1] * gt[2],
                           gt[3] + probe[:, 0] * gt[4] + probe[:, 1] * gt[5]])
    exp = (nominal_xy(probe) - c) @ A.T + c + [DX, DY]
    np.testing.assert_allclose(got, exp, atol=1e-6)
    np.testing.assert_array_equal(ds.ReadAsArray(), gdal.Open(str(ramp_tif)).ReadAsArray())


def test_warp_with_transform_shift_and_poly2(tmp_path, ramp_tif):
    cr = centre_probe(20)
    src_xy = nominal_xy(cr)
    shift = fit_transform("shift", src_xy, src_xy + [DX, DY])
    out = tmp_path / "s.tif"
    warp_with_transform(ramp_tif, out, shift)
    assert gdal.Open(str(out)).GetGeoTransform() == pytest.approx((E0 + DX, PIX, 0, N0 + DY, 0, -PIX))

    # mild quadratic distortion, up to ~1.5 px
    u = (src_xy - [E0, N0]) / (W * PIX)
    dst_xy = src_xy + [DX, DY] + np.column_stack([15 * u[:, 0] ** 2, -10 * u[:, 0] * u[:, 1]])
    t = fit_transform("poly2", src_xy, dst_xy)
    out2 = tmp_path / "p2.tif"
    warp_with_transform(ramp_tif, out2, t, utm33(), dst_res=PIX)
    ds = gdal.Open(str(out2))
    gt = ds.GetGeoTransform()
    data = ds.ReadAsArray().astype(float)
    # Each output pixel holds (col, row) of the source position it was resampled from; mapping
    # that position through the transform must land on the output pixel centre.
    rr, cc = np.mgrid[20:H - 20:15, 20:W - 20:15]
    q = np.column_stack([gt[0] + (cc.ravel() + 0.5) * gt[1], gt[3] + (rr.ravel() + 0.5) * gt[5]])
    src_pos = np.column_stack([data[0][rr, cc].ravel(), data[1][rr, cc].ravel()])
    landed = t.apply(nominal_xy(src_pos))
    err_px = np.hypot(*(landed - q).T) / PIX
    assert err_px.max() < 0.02, err_px.max()


def test_warp_with_transform_in_another_crs_reprojects_the_grid(tmp_path, ramp_tif):
    from engine.outputs.warp import _reproject

    s = osr.SpatialReference()
    s.ImportFromEPSG(32632)
    w32 = s.ExportToWkt()  # tie points in UTM 32N, raster stored in UTM 33N
    xy32 = _reproject(nominal_xy(centre_probe(20)), utm33(), w32)
    t = fit_transform("shift", xy32, xy32 + [DX, DY])
    out = tmp_path / "o32.tif"
    warp_with_transform(ramp_tif, out, t, w32, dst_res=PIX)
    ds = gdal.Open(str(out))
    assert osr.SpatialReference(wkt=ds.GetProjection()).IsSame(s)
    gt = ds.GetGeoTransform()
    data = ds.ReadAsArray().astype(float)
    rr, cc = np.mgrid[30:H - 30:15, 30:W - 30:15]
    q = np.column_stack([gt[0] + (cc.ravel() + 0.5) * gt[1], gt[3] + (rr.ravel() + 0.5) * gt[5]])
    src_pos = np.column_stack([data[0][rr, cc].ravel(), data[1][rr, cc].ravel()])
    assert (src_pos > 0).all()
    landed = t.apply(_reproject(nominal_xy(src_pos), utm33(), w32))
    assert (np.hypot(*(landed - q).T) / PIX).max() < 0.02


def test_warp_refuses_input_as_output_and_too_few_gcps(tmp_path, ramp_tif):
    gcps = [(0, 0, E0, N0), (W, 0, E0 + W * PIX, N0), (0, H, E0, N0 - H * PIX)]
    with pytest.raises(OutputError, match="same file as the input"):
        warp_with_gcps(ramp_tif, ramp_tif, gcps, utm33())
    with pytest.raises(OutputError, match="same file as the input"):
        shift_georeference(ramp_tif, str(ramp_tif), 1.0, 1.0)
    with pytest.raises(TooFewPointsError, match="poly2 needs at least 6 GCPs"):
        warp_with_gcps(ramp_tif, tmp_path / "x.tif", gcps, utm33(), method="poly2")


def test_warp_cancel_removes_partial_output(tmp_path, ramp_tif):
    corners = np.array([[0, 0], [W, 0], [0, H], [W, H]], float)
    gcps = [(c, r, x, y) for (c, r), (x, y) in zip(corners, nominal_xy(corners) + [DX, DY])]
    token = CancelToken()
    calls = []

    def progress(f, stage):
        calls.append(f)
        token.cancel()  # the user presses Cancel as soon as the warp starts

    out = tmp_path / "cancelled.tif"
    with pytest.raises(CancelledError):
        warp_with_gcps(ramp_tif, out, gcps, utm33(), progress=progress, cancel=token)
    assert calls, "progress was never reported"
    assert not out.exists()
    assert leftover_files(tmp_path, {"optical.tif"}) == []

    token2 = CancelToken()
    token2.cancel()
    with pytest.raises(CancelledError):
        shift_georeference(ramp_tif, out, 1.0, 2.0, cancel=token2)
    assert leftover_files(tmp_path, {"optical.tif"}) == []


def test_write_gcp_vrt_opens_with_gcps(tmp_path, ramp_tif):
    corners = np.array([[0, 0], [W, 0], [0, H], [W, H]], float)
    xy = nominal_xy(corners) + [DX, DY]
    gcps = [(c, r, x, y) for (c, r), (x, y) in zip(corners, xy)]
    out = tmp_path / "gcps.vrt"
    write_gcp_vrt(ramp_tif, out, gcps, utm33())
    ds = gdal.Open(str(out))
    assert ds.GetGCPCount() == 4
    g = ds.GetGCPs()[1]
    assert (g.GCPPixel, g.GCPLine, g.GCPX, g.GCPY) == pytest.approx((W, 0, E0 + W * PIX + DX, N0 + DY))
    np.testing.assert_array_equal(ds.ReadAsArray(), gdal.Open(str(ramp_tif)).ReadAsArray())


# ------------------------------------------------------------------ checkerboard


def test_checkerboard_alternates_tiles(tmp_path):
    rng = np.random.default_rng(0)
    a = rng.uniform(0, 1, (10, 13))
    b = rng.uniform(1000, 5000, (10, 13))
    img = checkerboard(a, b, tile=4)
    assert img.dtype == np.uint8 and img.shape == (10, 13)
    sa = np.clip(np.rint((a - np.percentile(a, 2)) / np.ptp(np.percentile(a, [2, 98])) * 255), 0, 255)
    sb = np.clip(np.rint((b - np.percentile(b, 2)) / np.ptp(np.percentile(b, [2, 98])) * 255), 0, 255)
    for r in range(10):
        for c in range(13):
            expect = sa[r, c] if ((r // 4) + (c // 4)) % 2 == 0 else sb[r, c]
            assert img[r, c] == expect, (r, c)
    # constant and NaN inputs do not crash: constant -> mid grey, NaN -> 0
    k = checkerboard(np.full((4, 4), 7.0), np.full((4, 4), np.nan), tile=2)
    assert k[0, 0] == 128 and k[0, 2] == 0
    with pytest.raises(InputError):
        checkerboard(a, b[:5], tile=4)

    p = tmp_path / "cb.png"
    write_checkerboard_png(p, a, b, tile=4)
    back = gdal.Open(str(p)).ReadAsArray()
    np.testing.assert_array_equal(back, img)
    assert leftover_files(tmp_path, {"cb.png"}) == []


def test_after_checkerboard_without_a_corrected_raster_moves_the_optical_by_the_transform():
    """Issue 15 (6): runs that write no corrected raster (the dock) still get checkerboard_after.png:
    the optical quick-look moved by the fitted transform (here a shift of 3 thumbnail pixels east,
    2 south), sampled where the transform sends it."""
    from rasterio.transform import Affine

    from engine.geometry.transforms import ShiftTransform
    from engine.raster_io import Grid
    from engine.write_results import _moved_by, output_paths_for

    rng = np.random.default_rng(5)
    unit = rng.random((40, 50)).astype(np.float32)
    thumb = Grid(crs=None, width=50, height=40, transform=Affine(10.0, 0, 500000.0, 0, -10.0, 5400000.0))
    moved = _moved_by(ShiftTransform(kind="shift", min_points=1, dx=30.0, dy=-20.0), unit, thumb)
    assert moved.shape == unit.shape
    np.testing.assert_allclose(moved[2:, 3:], unit[:-2, :-3], atol=1e-5)   # content 3 px east, 2 px south
    assert np.all(moved[:2] == 0) and np.all(moved[:, :3] == 0)            # uncovered: blank
    paths = output_paths_for("/d/opt.tif", "/o", corrected=False, checkerboard=True)
    assert paths.checker_after == "/o/checkerboard_after.png" and paths.corrected is None


def test_summary_notes_when_the_corrected_raster_is_in_another_crs():
    from types import SimpleNamespace

    from rasterio.crs import CRS

    from engine.write_results import corrected_crs_summary

    def result(opt_crs):
        grid = SimpleNamespace(crs=CRS.from_epsg(32633))
        return SimpleNamespace(pair=SimpleNamespace(grid=grid, opt_info=SimpleNamespace(crs=opt_crs)))

    same = corrected_crs_summary(result(CRS.from_epsg(32633)))
    assert same == {"corrected_crs": "EPSG:32633", "optical_crs": "EPSG:32633", "corrected_crs_differs": False,
                    "notes": []}
    other = corrected_crs_summary(result(CRS.from_epsg(4326)))
    assert other["corrected_crs_differs"] is True and other["optical_crs"] == "EPSG:4326"
    assert other["notes"] == ["The corrected optical raster is in EPSG:32633 (the SAR's CRS), not in the optical's "
                              "own EPSG:4326: it is reprojected there, not only moved."]
