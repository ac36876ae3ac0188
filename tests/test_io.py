"""NetCDF input/output: aliases, units, grids, errors for people, safe writing, CF output."""
from __future__ import annotations

import os

import numpy as np
import pytest
import xarray as xr

from glacier_emulator.constants import SECONDS_PER_YEAR, UNITS
from glacier_emulator.fields import Geometry, InputError, Velocity
from glacier_emulator.io import (
    read_geometry,
    safe_write,
    velocity_to_dataset,
    write_geometry,
    write_velocity,
)

NY, NX, DX = 4, 5, 100.0
X = np.arange(NX) * DX
Y = np.arange(NY) * DX
RNG = np.random.default_rng(0)
THK = RNG.uniform(0.0, 300.0, (NY, NX))
BED = RNG.uniform(1000.0, 1200.0, (NY, NX))


def write_file(path, variables, *, x=X, y=Y, attrs=None):
    """An external-looking NetCDF file: ``variables`` maps name -> (dims, data[, attrs])."""
    data = {name: xr.Variable(spec[0], spec[1], attrs=spec[2] if len(spec) > 2 else {})
            for name, spec in variables.items()}
    coords = {}
    if x is not None:
        coords["x"] = ("x", x, {"units": "m"})
    if y is not None:
        coords["y"] = ("y", y, {"units": "m"})
    xr.Dataset(data, coords=coords, attrs=attrs or {}).to_netcdf(path, engine="netcdf4")
    return path


def igm_file(path, **overrides):
    variables = {"thk": (("y", "x"), THK, {"units": "m"}), "topg": (("y", "x"), BED, {"units": "m"})}
    variables.update(overrides)
    return write_file(path, variables)


def geometry(**kwargs):
    values = dict(thickness=THK, bed=BED, dx=DX)
    values.update(kwargs)
    return Geometry(**values)


# ------------------------------------------------------------------------------ round trips
def test_geometry_round_trip_is_exact(tmp_path):
    mapping = {"grid_mapping_name": "transverse_mercator", "longitude_of_central_meridian": 9.0}
    g = geometry(y=1.0e6 + Y, sliding_coefficient=RNG.uniform(0, 1, (NY, NX)), rate_factor=78.0,
                 smb=RNG.normal(0, 1, (NY, NX)), periodic=True,
                 attrs={"grid_mapping_variable": "crs", "grid_mapping": mapping,
                        "projection": {"proj4": "+proj=utm +zone=32"}})
    path = write_geometry(g, tmp_path / "geometry.nc")
    back = read_geometry(path)
    for name in ("thickness", "bed", "x", "y", "sliding_coefficient", "smb"):
        np.testing.assert_array_equal(getattr(back, name), getattr(g, name), err_msg=name)
    assert back.rate_factor == 78.0
    assert (back.dx, back.dy, back.periodic) == (g.dx, g.dy, True)
    assert back.attrs["grid_mapping"] == mapping
    assert back.attrs["grid_mapping_variable"] == "crs"
    assert back.attrs["projection"] == {"proj4": "+proj=utm +zone=32"}
    assert back.attrs["source_file"] == str(path)


def test_igm_names_with_parameters_and_mask(tmp_path):
    mask = np.ones((NY, NX))
    mask[0, 0] = 0
    path = write_file(tmp_path / "igm.nc", {
        "thk": (("y", "x"), THK), "usurf": (("y", "x"), BED + THK),
        "slidingco": (("y", "x"), np.full((NY, NX), 0.05)),
        "arrhenius": (("y", "x"), np.full((NY, NX), 78.0)),
        "smb": (("y", "x"), np.ones((NY, NX))), "icemask": (("y", "x"), mask)})
    g = read_geometry(path)
    expected = np.where(mask > 0, THK, 0.0)
    np.testing.assert_array_equal(g.thickness, expected)
    np.testing.assert_allclose(g.bed, BED + THK - expected)
    np.testing.assert_array_equal(g.sliding_coefficient, 0.05)
    np.testing.assert_array_equal(g.rate_factor, 78.0)
    np.testing.assert_array_equal(g.smb, 1.0)


def test_oggm_names_nan_thickness_off_glacier(tmp_path):
    mask = np.zeros((NY, NX))
    mask[1:3, 1:4] = 1
    thk = np.where(mask > 0, THK, np.nan)
    path = write_file(tmp_path / "gridded_data.nc", {
        "topo": (("y", "x"), BED + np.nan_to_num(thk), {"units": "m"}),
        "consensus_ice_thickness": (("y", "x"), thk, {"units": "m"}),
        "glacier_mask": (("y", "x"), mask)})
    g = read_geometry(path)
    np.testing.assert_array_equal(g.thickness, np.nan_to_num(thk))
    np.testing.assert_allclose(g.surface, BED + np.nan_to_num(thk))


def test_bedmachine_names_meters_y_descending(tmp_path):
    path = write_file(tmp_path / "BedMachine.nc", {
        "thickness": (("y", "x"), THK[::-1], {"units": "meters"}),
        "bed": (("y", "x"), BED[::-1], {"units": "meters"}),
        "mask": (("y", "x"), np.full((NY, NX), 2.0))}, y=Y[::-1])
    g = read_geometry(path)
    np.testing.assert_array_equal(g.y, Y)
    np.testing.assert_array_equal(g.thickness, THK)
    np.testing.assert_array_equal(g.bed, BED)
    assert g.dy == DX


def test_surface_and_bed_give_thickness(tmp_path):
    path = write_file(tmp_path / "sb.nc", {"usurf": (("y", "x"), BED + THK), "topg": (("y", "x"), BED)})
    np.testing.assert_allclose(read_geometry(path).thickness, THK, atol=1e-9)


def test_surface_ignored_when_thickness_and_bed_given(tmp_path):
    path = igm_file(tmp_path / "igm.nc", usurf=(("y", "x"), np.full((NY, NX), np.nan)))
    np.testing.assert_array_equal(read_geometry(path).surface, BED + THK)


def test_standard_name_beats_short_name_and_variables_override(tmp_path):
    path = write_file(tmp_path / "std.nc", {
        "thk": (("y", "x"), np.zeros((NY, NX))),
        "H_true": (("y", "x"), THK, {"standard_name": "land_ice_thickness"}),
        "topg": (("y", "x"), BED)})
    np.testing.assert_array_equal(read_geometry(path).thickness, THK)
    np.testing.assert_array_equal(read_geometry(path, variables={"thickness": "thk"}).thickness, 0.0)


# ----------------------------------------------------------------------------------- units
def test_unit_conversions(tmp_path):
    path = igm_file(tmp_path / "units.nc",
                    thk=(("y", "x"), THK / 1000.0, {"units": "km"}),
                    smb=(("y", "x"), np.full((NY, NX), 910.0 / SECONDS_PER_YEAR), {"units": "kg m-2 s-1"}),
                    arrhenius=(("y", "x"), np.full((NY, NX), 1.0e-16), {"units": "Pa^-3 a^-1"}),
                    slidingco=(("y", "x"), np.full((NY, NX), 0.1), {"units": "MPa m^-1/3 a^1/3"}))
    g = read_geometry(path)
    np.testing.assert_allclose(g.thickness, THK, rtol=1e-12)
    np.testing.assert_allclose(g.smb, 1.0, rtol=1e-12)  # 910 kg m-2 yr-1 = 1 m of ice per year
    np.testing.assert_allclose(g.rate_factor, 100.0, rtol=1e-12)
    np.testing.assert_allclose(g.sliding_coefficient, 0.1)


def test_time_dimension(tmp_path):
    stack = np.stack([THK, 2 * THK])
    one = igm_file(tmp_path / "one.nc", thk=(("time", "y", "x"), THK[None]))
    np.testing.assert_array_equal(read_geometry(one).thickness, THK)
    two = igm_file(tmp_path / "two.nc", thk=(("time", "y", "x"), stack))
    with pytest.raises(InputError, match=r"two\.nc.*'thk'.*time_index"):
        read_geometry(two)
    np.testing.assert_array_equal(read_geometry(two, time_index=1).thickness, 2 * THK)


# ------------------------------------------------------------------------------ bad inputs
def _nan_thk():
    t = THK.copy()
    t[0, :3] = np.nan
    return t


def _inf_bed():
    b = BED.copy()
    b[1, 1] = np.inf
    return b


BAD_FILES = {
    "nan": (lambda p: igm_file(p, thk=(("y", "x"), _nan_thk())), r"'thk' \(thickness\) has 3 NaN values"),
    "inf": (lambda p: igm_file(p, topg=(("y", "x"), _inf_bed())), r"'topg' \(bed\) has 1 infinite values"),
    "negative": (lambda p: igm_file(p, thk=(("y", "x"), -THK - 1)), r"'thk' \(thickness\) is negative"),
    "missing": (lambda p: write_file(p, {"topg": (("y", "x"), BED), "foo": (("y", "x"), BED)}),
                r"no ice thickness.*\['foo', 'topg'\]"),
    "units": (lambda p: igm_file(p, thk=(("y", "x"), THK, {"units": "furlong"})), r"'thk'.*'furlong'"),
    "dims": (lambda p: write_file(p, {"thk": (("y", "x"), THK), "topg": (("y2", "x2"), np.zeros((3, 3)))}),
             r"'topg' \(bed\) has dimensions"),
    "one_d": (lambda p: write_file(p, {"thk": (("x",), THK[0]), "topg": (("x",), BED[0])}, y=None),
              r"'thk' is not a 2-D"),
    "one_row": (lambda p: write_file(p, {"thk": (("y", "x"), THK[:1]), "topg": (("y", "x"), BED[:1])},
                                     y=Y[:1]), r"'thk' is a 1-D grid"),
    "irregular": (lambda p: write_file(p, {"thk": (("y", "x"), THK), "topg": (("y", "x"), BED)},
                                       x=X + np.array([0, 0, 1, 0, 0])), r"coordinate 'x' is not regularly"),
    "lonlat": (lambda p: xr.Dataset({"thk": (("lat", "lon"), THK), "topg": (("lat", "lon"), BED)},
                                    coords={"lat": Y, "lon": X}).to_netcdf(p), r"'thk'.*longitude/latitude"),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_input_names_file_and_variable(tmp_path, case):
    make, pattern = BAD_FILES[case]
    path = tmp_path / f"bad_{case}.nc"
    make(path)
    with pytest.raises(InputError, match=pattern) as info:
        read_geometry(path)
    assert str(path) in str(info.value)


def test_not_netcdf_truncated_and_missing_files(tmp_path):
    text = tmp_path / "notes.nc"
    text.write_text("this is not NetCDF\n")
    truncated = igm_file(tmp_path / "truncated.nc")
    truncated.write_bytes(truncated.read_bytes()[:300])
    for path, pattern in ((text, "not a readable NetCDF"), (truncated, "truncated"),
                          (tmp_path / "absent.nc", "no such file")):
        with pytest.raises(InputError, match=pattern) as info:
            read_geometry(path)
        assert str(path) in str(info.value)



@pytest.mark.parametrize("fmt", ["NETCDF3_CLASSIC", "NETCDF3_64BIT"])
def test_truncated_netcdf3_file_is_refused_at_any_cut(tmp_path, fmt):
    # The NetCDF library reads the missing end of a NetCDF-3 file as zeros without an error;
    # a file cut anywhere (last bytes of the last variable included) must be refused by name.
    whole = tmp_path / "whole.nc"
    xr.Dataset({"thk": (("y", "x"), THK, {"units": "m"}), "topg": (("y", "x"), BED, {"units": "m"})},
               coords={"x": ("x", X, {"units": "m"}), "y": ("y", Y, {"units": "m"})}
               ).to_netcdf(whole, format=fmt)
    read_geometry(whole)
    data = whole.read_bytes()
    cut = tmp_path / "cut.nc"
    for removed in (1, 7, 8, 64, len(data) // 2):
        cut.write_bytes(data[:-removed])
        with pytest.raises(InputError, match="truncated NetCDF-3 file") as info:
            read_geometry(cut)
        assert str(cut) in str(info.value)


# ---------------------------------------------------------------------------- safe writing
def test_safe_write_leaves_nothing_on_failure_and_keeps_old_file(tmp_path, monkeypatch):
    target = tmp_path / "out.nc"
    ds = xr.Dataset({"a": ("x", np.arange(3.0))})

    def fail(self, path, **kwargs):
        open(path, "wb").write(b"partial")
        raise RuntimeError("disk full")

    with monkeypatch.context() as m:
        m.setattr(xr.Dataset, "to_netcdf", fail)
        with pytest.raises(RuntimeError, match="disk full"):
            safe_write(ds, target)
    assert os.listdir(tmp_path) == []

    safe_write(ds, target)
    before = target.read_bytes()
    bad = xr.Dataset({"a": ("x", np.array([object(), object()]))})  # not serialisable
    with pytest.raises(Exception):
        safe_write(bad, target)
    assert os.listdir(tmp_path) == ["out.nc"]
    assert target.read_bytes() == before


def test_safe_write_single_precision_keeps_coordinates_float64(tmp_path):
    path = safe_write(velocity_to_dataset(Velocity(ubar=THK, vbar=THK), geometry()),
                      tmp_path / "series.nc", single_precision=True)
    with xr.open_dataset(path) as ds:
        assert ds["ubar"].encoding["dtype"] == np.float32
        assert ds["x"].encoding["dtype"] == np.float64
        assert ds["ubar"].encoding["zlib"]


def test_safe_write_needs_parent_directory(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        safe_write(xr.Dataset(), tmp_path / "missing" / "out.nc")


# ---------------------------------------------------------------------------------- output
def test_velocity_output_is_cf_and_zero_off_ice(tmp_path):
    thk = THK.copy()
    thk[0, :] = 0.0
    g = geometry(thickness=thk, attrs={"grid_mapping_variable": "mapping",
                                       "grid_mapping": {"grid_mapping_name": "polar_stereographic"}})
    zeta = np.linspace(0.0, 1.0, 3)
    u = np.ones((3, NY, NX)) * np.array([1.0, 2.0, 3.0])[:, None, None]
    velocity = Velocity.from_levels(u, -u, zeta)
    path = write_velocity(velocity, g, tmp_path / "velocity.nc", attrs={"solver_iterations": 7})
    with xr.open_dataset(path) as ds:
        for name in ("ubar", "vbar", "velbar_mag", "uvelsurf", "vvelsurf", "uvelbase", "vvelbase",
                     "uvel", "vvel"):
            assert ds[name].attrs["units"] == UNITS["velocity"] == "m year-1"
            assert ds[name].attrs["grid_mapping"] == "mapping"
            assert np.all(ds[name].values[..., 0, :] == 0.0), name
        assert ds["ubar"].attrs["standard_name"] == "land_ice_vertical_mean_x_velocity"
        assert ds["uvelbase"].attrs["standard_name"] == "land_ice_basal_x_velocity"
        assert ds["uvel"].dims == ("zeta", "y", "x")
        assert ds["zeta"].attrs["long_name"] == "normalised height above the bed"
        assert ds["x"].attrs["standard_name"] == "projection_x_coordinate"
        assert ds["mapping"].attrs["grid_mapping_name"] == "polar_stereographic"
        assert ds.attrs["Conventions"] == "CF-1.8"
        assert ds.attrs["source"].startswith("glacier-emulator")
        assert ds.attrs["solver_iterations"] == 7
        np.testing.assert_allclose(ds["uvelsurf"].values[1:], 3.0)
        np.testing.assert_allclose(ds["ubar"].values[1:], 2.0)
    np.testing.assert_array_equal(read_geometry(path).thickness, thk)


def test_velocity_without_levels_has_no_3d_fields():
    ds = velocity_to_dataset(Velocity(ubar=np.ones((NY, NX)), vbar=np.zeros((NY, NX))), geometry(),
                             extra={"residual": np.zeros((NY, NX))})
    assert "uvel" not in ds and "zeta" not in ds.coords and "uvelsurf" not in ds
    assert ds["velbar_mag"].attrs["units"] == "m year-1"
    assert "residual" in ds
