"""NetCDF in and out: a :class:`~glacier_emulator.fields.Geometry` from a file, velocities to
CF-1.8 files, and the one safe writer every output goes through.

Reading (:func:`read_geometry`)
-------------------------------
Each quantity is looked up by, in this order: the name given in ``variables``
(``{"thickness": "my_thk"}``), a CF ``standard_name``, then a short name of :data:`INPUT_NAMES`
(the first match wins; standard names beat short names):

===================  ============================================  ==================================
quantity             standard_name                                 short names
===================  ============================================  ==================================
thickness            land_ice_thickness                            thk, thickness, lithk,
                                                                   ice_thickness, consensus_ice_thickness,
                                                                   millan_ice_thickness
surface              surface_altitude                              usurf, surface, topo
bed                  bedrock_altitude                              topg, bed
sliding_coefficient  --                                            slidingco
rate_factor          --                                            arrhenius
smb                  land_ice_surface_specific_mass_balance_rate,  smb, climatic_mass_balance, acabf
                     land_ice_surface_specific_mass_balance_flux
ice_mask             --                                            icemask, glacier_mask
===================  ============================================  ==================================

(IGM/PISM: ``thk usurf topg slidingco arrhenius smb icemask``; OGGM: ``topo``,
``consensus_ice_thickness``, ``millan_ice_thickness``, ``glacier_mask``; BedMachine:
``thickness surface bed``; ISMIP6: ``lithk acabf``.) The geometry is built from thickness and
bed (a surface variable is then ignored); else thickness and surface (bed = surface -
thickness); else surface and bed (thickness = max(surface - bed, 0)).

* Units: converted from the spellings of :data:`CONVERSIONS` (case and ``^`` ignored); any other
  unit is refused. A variable without a ``units`` attribute is taken to be in the package unit
  (:data:`~glacier_emulator.constants.UNITS`). Mass fluxes (``kg m-2 s-1``, ``kg m-2 year-1``)
  become metres of ice per year with the ice density 910 kg m^-3. The ice mask is not converted.
* Grid: a regular grid (steps equal to a relative 1e-6; dx may differ from dy) with
  dimensions named ``x``/``y`` or whose coordinates say ``axis`` X/Y or ``standard_name``
  ``projection_x/y_coordinate``; longitude/latitude grids are refused. x and y are sorted
  ascending (the data flipped with them). A length-1 extra dimension (time) is dropped; a longer
  one needs ``time_index``.
* Ice mask: where the mask is <= 0.5 (or NaN) the thickness is set to 0 -- NaN included, as in
  OGGM files where the thickness is NaN off the glacier.
* Projection: the grid-mapping variable's attributes, its name, the projection global
  attributes (``proj4``, ``pyproj_srs``, ...) and the file name are kept in ``Geometry.attrs``
  and written back into outputs.
"""
from __future__ import annotations

import datetime
import gc
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional, Union

import numpy as np
import xarray as xr

from .. import __version__
from ..constants import DEFAULT_PHYSICS, PA_PER_MPA, SECONDS_PER_YEAR, UNITS
from ..fields import Geometry, InputError, Velocity

PathLike = Union[str, os.PathLike]


@dataclass(frozen=True)
class Variable:
    """Metadata of one NetCDF variable; ``kind`` is a key of ``constants.UNITS`` ("1" if none)."""

    long_name: str
    kind: str
    standard_name: Optional[str] = None

    @property
    def units(self) -> str:
        return UNITS.get(self.kind, "1")

    @property
    def attrs(self) -> dict:
        attrs = {"long_name": self.long_name, "units": self.units}
        if self.standard_name:
            attrs["standard_name"] = self.standard_name
        return attrs


VARIABLES: dict[str, Variable] = {
    "thk": Variable("ice thickness", "length", "land_ice_thickness"),
    "usurf": Variable("ice surface elevation", "length", "surface_altitude"),
    "topg": Variable("bed elevation", "length", "bedrock_altitude"),
    "slidingco": Variable("Weertman sliding coefficient c", "sliding_coefficient"),
    "arrhenius": Variable("rate factor A of Glen's flow law", "rate_factor"),
    "smb": Variable("surface mass balance (ice equivalent)", "smb",
                    "land_ice_surface_specific_mass_balance_rate"),
    "icemask": Variable("ice mask (1 = ice)", "dimensionless"),
    "ubar": Variable("vertical mean ice velocity in x", "velocity", "land_ice_vertical_mean_x_velocity"),
    "vbar": Variable("vertical mean ice velocity in y", "velocity", "land_ice_vertical_mean_y_velocity"),
    "velbar_mag": Variable("magnitude of the vertical mean ice velocity", "velocity"),
    "uvelsurf": Variable("ice surface velocity in x", "velocity", "land_ice_surface_x_velocity"),
    "vvelsurf": Variable("ice surface velocity in y", "velocity", "land_ice_surface_y_velocity"),
    "uvelbase": Variable("basal ice velocity in x", "velocity", "land_ice_basal_x_velocity"),
    "vvelbase": Variable("basal ice velocity in y", "velocity", "land_ice_basal_y_velocity"),
    "uvel": Variable("ice velocity in x", "velocity", "land_ice_x_velocity"),
    "vvel": Variable("ice velocity in y", "velocity", "land_ice_y_velocity"),
}
"""Short name -> metadata: the one table both writers (and the reader's standard names) use."""

INPUT_NAMES: dict[str, tuple[str, tuple[str, ...], tuple[str, ...]]] = {
    # quantity: (package short name, further standard names, further short names)
    "thickness": ("thk", (), ("thickness", "lithk", "ice_thickness", "consensus_ice_thickness",
                              "millan_ice_thickness")),
    "surface": ("usurf", (), ("surface", "topo")),
    "bed": ("topg", (), ("bed",)),
    "sliding_coefficient": ("slidingco", (), ()),
    "rate_factor": ("arrhenius", (), ()),
    "smb": ("smb", ("land_ice_surface_specific_mass_balance_flux",), ("climatic_mass_balance", "acabf")),
    "ice_mask": ("icemask", (), ("glacier_mask",)),
}
"""Quantity -> names it is found by in input files (see the module docstring's table)."""

_ICE_DENSITY = DEFAULT_PHYSICS.ice_density  # kg m^-3, mass flux -> ice thickness rate
_PER_YEAR = {f"m {t}": 1.0 for t in ("year-1", "yr-1", "a-1", "y-1")}
_PER_YEAR.update({f"m/{t}": 1.0 for t in ("year", "yr", "a")})
_PER_YEAR.update({"m s-1": SECONDS_PER_YEAR, "m/s": SECONDS_PER_YEAR})
CONVERSIONS: dict[str, dict[str, float]] = {
    # kind -> {normalised unit spelling: factor to the package unit}
    "length": {"m": 1.0, "metre": 1.0, "metres": 1.0, "meter": 1.0, "meters": 1.0, "km": 1000.0},
    "velocity": _PER_YEAR,
    "smb": {**_PER_YEAR, "kg m-2 s-1": SECONDS_PER_YEAR / _ICE_DENSITY,
            **{f"kg m-2 {t}": 1.0 / _ICE_DENSITY for t in ("year-1", "yr-1", "a-1")}},
    "rate_factor": {**{f"mpa-3 {t}": 1.0 for t in ("year-1", "yr-1", "a-1")},
                    **{f"pa-3 {t}": PA_PER_MPA**3 for t in ("year-1", "yr-1", "a-1")},
                    "pa-3 s-1": PA_PER_MPA**3 * SECONDS_PER_YEAR},
    "sliding_coefficient": {**{f"mpa m-1/3 {t}1/3": 1.0 for t in ("year", "yr", "a")},
                            "pa m-1/3 s1/3": SECONDS_PER_YEAR ** (-1.0 / 3.0) / PA_PER_MPA},
}
_QUANTITY_KIND = {q: VARIABLES[short].kind for q, (short, _, _) in INPUT_NAMES.items()}
_SCALAR_OK = ("sliding_coefficient", "rate_factor")
_GRID_MAPPING_NAMES = ("crs", "spatial_ref", "mapping")
_PROJECTION_GLOBALS = ("proj4", "proj4text", "proj4_string", "pyproj_srs", "crs", "spatial_ref",
                       "epsg", "projection")
_READ_ERRORS = (OSError, RuntimeError, ValueError, KeyError, IndexError)
_COORD_ATTRS = {
    axis: {"units": UNITS["length"], "standard_name": f"projection_{axis}_coordinate",
           "long_name": f"{axis} coordinate of projection", "axis": axis.upper()}
    for axis in ("x", "y")
}
_ZETA_ATTRS = {"long_name": "normalised height above the bed", "units": "1", "positive": "up",
               "comment": "0 = bed, 1 = ice surface"}


# ----------------------------------------------------------------------------------- reading
def read_geometry(path: PathLike, *, variables: Optional[Mapping[str, str]] = None,
                  time_index: Optional[int] = None) -> Geometry:
    """Read a glacier geometry (m, yr, MPa) from a NetCDF file on a regular projected grid.

    Args:
        path: the NetCDF file.
        variables: quantity -> variable name, overriding the look-up (quantities:
            the keys of :data:`INPUT_NAMES`).
        time_index: which entry of a time (or other extra) dimension longer than 1 to read.

    Returns:
        The geometry, y ascending, with the projection and source file in ``attrs``.

    Raises:
        InputError: naming the file and the variable, for a missing or unreadable file,
            missing thickness, unknown units, an irregular or 1-D grid, mismatched grids,
            NaN/inf values or negative thickness.

    Example:
        >>> import numpy as np, xarray as xr
        >>> grid = (("y", "x"), {"units": "m"})
        >>> xr.Dataset({"thk_2020": (grid[0], np.full((3, 4), 50.0), grid[1]),
        ...             "topg": (grid[0], np.zeros((3, 4)), grid[1])},
        ...            coords={"x": np.arange(4) * 100.0, "y": np.arange(3) * 100.0}).to_netcdf("input.nc")
        >>> g = read_geometry("input.nc", variables={"thickness": "thk_2020"})
        >>> g.shape, g.dx
        ((3, 4), 100.0)
    """
    path = Path(path)
    label = str(path)
    ds = _open(path)
    try:
        names = _resolve(ds, label, dict(variables or {}))
        ref = names.get("thickness") or names.get("surface")
        if "thickness" not in names and not {"surface", "bed"} <= set(names):
            raise InputError(
                f"{label}: no ice thickness found: need a variable with standard_name "
                f"land_ice_thickness or named one of {_names('thickness')}, or both surface and "
                f"bed elevation; the file has {sorted(map(str, ds.data_vars))}")
        if not {"bed", "surface"} & set(names):
            raise InputError(
                f"{label}: variable '{ref}' (thickness) found but no bed ({_names('bed')}) or "
                f"surface elevation ({_names('surface')}); the file has {sorted(map(str, ds.data_vars))}")
        if {"thickness", "bed"} <= set(names):
            names.pop("surface", None)  # not needed: thickness and bed make the geometry
        ydim, xdim = _grid(ds, label, ref)
        x, dx = _coordinate(ds, label, xdim)
        y, dy = _coordinate(ds, label, ydim)
        fields = {q: _field(ds, label, q, n, dims=(ydim, xdim), ref=ref, time_index=time_index)
                  for q, n in names.items()}
        attrs = {**_projection(ds, ref), "source_file": label}
        periodic = ds.attrs.get("periodic_boundaries") == "yes"
    finally:
        ds.close()
    for flip, axis in ((dy < 0, 0), (dx < 0, 1)):
        if flip:
            fields = {q: v if np.ndim(v) == 0 else np.flip(v, axis) for q, v in fields.items()}
    x, y = np.sort(x), np.sort(y)
    if "ice_mask" in fields:  # no ice off the mask
        on_ice = fields["ice_mask"] > 0.5
        if "thickness" in fields:
            fields["thickness"] = np.where(on_ice, fields["thickness"], 0.0)
        else:
            fields["surface"] = np.where(on_ice, fields["surface"], fields["bed"])
    for q, values in fields.items():
        if q != "ice_mask":
            _check_finite(label, names[q], q, values)
    if "thickness" in fields:
        thickness = fields["thickness"]
        negative = thickness < 0
        if negative.any():
            raise InputError(f"{label}: variable '{names['thickness']}' (thickness) is negative at "
                             f"{int(negative.sum())} nodes (minimum {thickness.min():.4g} m)")
        bed = fields["bed"] if "bed" in fields else fields["surface"] - thickness
    else:
        bed = fields["bed"]
        thickness = np.maximum(fields["surface"] - bed, 0.0)
    try:
        return Geometry(thickness=thickness, bed=bed, dx=abs(dx), dy=abs(dy), x=x, y=y,
                        sliding_coefficient=fields.get("sliding_coefficient"),
                        rate_factor=fields.get("rate_factor"), smb=fields.get("smb"),
                        periodic=periodic, attrs=attrs)
    except InputError as exc:
        raise InputError(f"{label}: {exc}") from exc


def _names(quantity: str) -> str:
    short, _, aliases = INPUT_NAMES[quantity]
    return ", ".join((short, *aliases))


def _open(path: Path) -> xr.Dataset:
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if path.is_dir():
        raise InputError(f"{path}: is a directory, not a NetCDF file")
    check_netcdf3_complete(path)
    try:
        return xr.open_dataset(path, engine="netcdf4", decode_times=False, decode_timedelta=False)
    except _READ_ERRORS as exc:
        raise InputError(f"{path}: not a readable NetCDF file (truncated or another format?): "
                         f"{exc}") from exc


def check_netcdf3_complete(path: Union[str, os.PathLike]) -> None:
    """Refuse a truncated NetCDF-3 (classic or 64-bit offset) file with an :class:`InputError`
    naming it; other files (NetCDF-4, anything else) pass untouched. Every reader of user files
    calls it before opening one (geometry inputs here, SMB fields and series in
    :mod:`glacier_emulator.dynamics.smb`).

    The NetCDF library reads the missing end of such a file as zeros without an error, so a
    file cut short by a failed copy would give a glacier with zero thickness or a broken grid.
    SciPy's NetCDF-3 reader maps every variable onto the file and fails when one extends past
    its end (checked for every cut length in the tests).
    """
    path = Path(path)
    with open(path, "rb") as handle:
        magic = handle.read(4)
    if magic not in (b"CDF\x01", b"CDF\x02"):
        return
    from scipy.io import netcdf_file
    problem = None
    try:
        with netcdf_file(path, "r", mmap=True):
            pass
    except (ValueError, TypeError, IndexError, OSError) as exc:
        problem = str(exc)
    if problem is not None:
        # the half-built reader warns when collected (its map still has views): collect it here
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            gc.collect()
        raise InputError(f"{path}: truncated NetCDF-3 file (its variables extend past the end of "
                         f"the file, {path.stat().st_size} bytes): {problem}")


def _resolve(ds: xr.Dataset, label: str, requested: dict) -> dict[str, str]:
    """Quantity -> variable name, for the quantities the file has."""
    unknown = sorted(set(requested) - set(INPUT_NAMES))
    if unknown:
        raise InputError(f"unknown quantities {unknown} in variables=; known: {list(INPUT_NAMES)}")
    data_vars = [str(n) for n in ds.data_vars]
    by_standard: dict[str, list[str]] = {}
    for name in data_vars:
        by_standard.setdefault(ds[name].attrs.get("standard_name", ""), []).append(name)
    found = {}
    for quantity, (short, standards, aliases) in INPUT_NAMES.items():
        if quantity in requested:
            if requested[quantity] not in data_vars:
                raise InputError(f"{label}: variable '{requested[quantity]}' (requested for "
                                 f"{quantity}) is not in the file; it has {sorted(data_vars)}")
            found[quantity] = requested[quantity]
            continue
        candidates = [n for s in (VARIABLES[short].standard_name, *standards) if s
                      for n in by_standard.get(s, [])]
        candidates += [n for n in (short, *aliases) if n in data_vars]
        if candidates:
            found[quantity] = candidates[0]
    return found


def _axis(ds: xr.Dataset, dim: str) -> Optional[str]:
    """'x', 'y', 'geographic' or None for a dimension, from its name and coordinate attributes."""
    attrs = ds.variables[dim].attrs if dim in ds.variables else {}
    standard, axis = attrs.get("standard_name", ""), str(attrs.get("axis", "")).upper()
    if (dim.lower() in ("lon", "lat", "longitude", "latitude") or standard in ("longitude", "latitude")
            or str(attrs.get("units", "")).startswith("degree")):
        return "geographic"
    for name in ("x", "y"):
        if dim == name or standard == f"projection_{name}_coordinate" or axis == name.upper():
            return name
    return None


def _grid(ds: xr.Dataset, label: str, name: str) -> tuple[str, str]:
    """The (y, x) dimension names of variable ``name``."""
    dims = [str(d) for d in ds[name].dims]
    axes: dict[str, str] = {}
    for dim in dims:
        axis = _axis(ds, dim)
        if axis == "geographic":
            raise InputError(f"{label}: variable '{name}' is on a longitude/latitude grid (dimension "
                             f"'{dim}'); reproject it to a projected x/y grid in metres")
        if axis:
            axes.setdefault(axis, dim)
    if set(axes) != {"x", "y"}:
        raise InputError(f"{label}: variable '{name}' is not a 2-D (y, x) grid: its dimensions are "
                         f"{tuple(dims)}; expected dimensions named x and y")
    for axis in ("y", "x"):
        if ds.sizes[axes[axis]] < 2:
            raise InputError(f"{label}: variable '{name}' is a 1-D grid: dimension '{axes[axis]}' has "
                             f"length {ds.sizes[axes[axis]]}; at least 2 x 2 nodes are needed")
    return axes["y"], axes["x"]


def _coordinate(ds: xr.Dataset, label: str, dim: str) -> tuple[np.ndarray, float]:
    """Coordinate values (m) of a dimension and its (signed) step, checked to be regular."""
    if dim not in ds.variables:
        raise InputError(f"{label}: dimension '{dim}' has no coordinate variable, so the grid "
                         f"spacing is unknown; add '{dim}' coordinates in metres")
    values = _convert(_load(ds[dim], label, dim), ds[dim].attrs.get("units"), "length",
                      label=label, name=dim, quantity="coordinate")
    steps = np.diff(values)
    step = float(steps[0])
    if step == 0 or not np.all(np.abs(steps - step) <= 1e-6 * abs(step)):
        raise InputError(f"{label}: coordinate '{dim}' is not regularly spaced (steps from "
                         f"{steps.min():.6g} to {steps.max():.6g} m); a regular grid is needed")
    return values, step


def _load(var: xr.DataArray, label: str, name: str) -> np.ndarray:
    try:
        return np.asarray(var.values, dtype=np.float64)
    except _READ_ERRORS as exc:
        raise InputError(f"{label}: cannot read variable '{name}' (truncated or corrupt file?): "
                         f"{exc}") from exc


def _field(ds: xr.Dataset, label: str, quantity: str, name: str, *, dims: tuple[str, str],
           ref: str, time_index: Optional[int]) -> Union[np.ndarray, float]:
    """One quantity as a (ny, nx) array (or a scalar) in package units, file orientation."""
    var = ds[name]
    if var.ndim == 0 and quantity in _SCALAR_OK:
        return float(_convert(_load(var, label, name), var.attrs.get("units"),
                              _QUANTITY_KIND[quantity], label=label, name=name, quantity=quantity))
    if not set(dims) <= set(var.dims):
        raise InputError(f"{label}: variable '{name}' ({quantity}) has dimensions {var.dims} but "
                         f"'{ref}' has {dims}; all fields must share one grid")
    for dim in [d for d in var.dims if d not in dims]:
        if var.sizes[dim] == 1:
            var = var.isel({dim: 0})
        elif time_index is None:
            raise InputError(f"{label}: variable '{name}' ({quantity}) has a dimension '{dim}' of "
                             f"length {var.sizes[dim]}; pass time_index to choose one entry")
        elif not -var.sizes[dim] <= time_index < var.sizes[dim]:
            raise InputError(f"{label}: time_index={time_index} is out of range for dimension "
                             f"'{dim}' (length {var.sizes[dim]}) of variable '{name}'")
        else:
            var, time_index = var.isel({dim: time_index}), None  # one extra dimension at most
    values = _load(var.transpose(*dims), label, name)
    kind = _QUANTITY_KIND[quantity]
    if kind not in CONVERSIONS:  # the ice mask has no unit
        return values
    return _convert(values, var.attrs.get("units"), kind, label=label, name=name, quantity=quantity)


def _convert(values: np.ndarray, units: Optional[str], kind: str, *, label: str, name: str,
             quantity: str) -> np.ndarray:
    """Values in package units; no ``units`` attribute means they already are."""
    if units is None or not str(units).strip():
        return values
    key = " ".join(str(units).lower().replace("^", "").replace("**", "").split())
    if key not in CONVERSIONS[kind]:
        raise InputError(f"{label}: variable '{name}' ({quantity}) has units '{units}', which this "
                         f"package does not convert; use {UNITS[kind]!r} or one of "
                         f"{sorted(CONVERSIONS[kind])}")
    factor = CONVERSIONS[kind][key]
    return values if factor == 1.0 else values * factor


def _check_finite(label: str, name: str, quantity: str, values) -> None:
    n_nan, n_inf = int(np.isnan(values).sum()), int(np.isinf(values).sum())
    if n_nan or n_inf:
        found = " and ".join(s for s in (f"{n_nan} NaN" if n_nan else "",
                                         f"{n_inf} infinite" if n_inf else "") if s)
        raise InputError(f"{label}: variable '{name}' ({quantity}) has {found} values")


def _projection(ds: xr.Dataset, ref: str) -> dict:
    """The grid mapping and projection global attributes, for ``Geometry.attrs``."""
    var = ds[ref]
    mapping = var.attrs.get("grid_mapping") or var.encoding.get("grid_mapping")
    name = (str(mapping).split(":")[0].strip() if mapping else
            next((n for n in _GRID_MAPPING_NAMES if n in ds.variables), None))
    attrs: dict = {}
    if name and name in ds.variables:
        attrs["grid_mapping_variable"] = name
        attrs["grid_mapping"] = {k: _plain(v) for k, v in ds[name].attrs.items()}
    projection = {k: _plain(v) for k, v in ds.attrs.items() if k.lower() in _PROJECTION_GLOBALS}
    if projection:
        attrs["projection"] = projection
    return attrs


def _plain(value):
    if isinstance(value, np.generic):
        return value.item()
    return value.tolist() if isinstance(value, np.ndarray) else value


# ----------------------------------------------------------------------------------- writing
def geometry_to_dataset(geometry: Geometry) -> xr.Dataset:
    """The geometry as a CF-1.8 dataset: ``thk``, ``usurf``, ``topg`` (m) and, where set,
    ``slidingco`` (MPa m^-1/3 yr^1/3), ``arrhenius`` (MPa^-3 yr^-1), ``smb`` (m ice/yr).

    A scalar sliding coefficient or rate factor is written as a scalar variable. The explicit
    ``surface_slope`` (ISMIP-HOM) is not stored; ``periodic`` is, as a global attribute.
    """
    mapping = geometry.attrs.get("grid_mapping_variable") if "grid_mapping" in geometry.attrs else None
    fields = {"thk": geometry.thickness, "usurf": geometry.surface, "topg": geometry.bed,
              "slidingco": geometry.sliding_coefficient, "arrhenius": geometry.rate_factor,
              "smb": geometry.smb}
    data = {name: _data_array(name, value, mapping) for name, value in fields.items()
            if value is not None}
    coords = {axis: xr.Variable(axis, np.asarray(getattr(geometry, axis), np.float64),
                                attrs=_COORD_ATTRS[axis]) for axis in ("x", "y")}
    ds = xr.Dataset(data, coords=coords, attrs=_global_attrs(geometry))
    if mapping:
        ds[mapping] = xr.DataArray(np.int32(0), attrs=dict(geometry.attrs["grid_mapping"]))
    return ds


def write_geometry(geometry: Geometry, path: PathLike) -> Path:
    """Write :func:`geometry_to_dataset` with :func:`safe_write`; :func:`read_geometry` reads
    it back exactly. Returns the path."""
    return safe_write(geometry_to_dataset(geometry), path)


def velocity_to_dataset(velocity: Velocity, geometry: Geometry, *,
                        extra: Optional[Mapping[str, Union[np.ndarray, xr.DataArray]]] = None
                        ) -> xr.Dataset:
    """Velocities (m/yr) and the geometry they belong to as a CF-1.8 dataset.

    2-D: ``ubar``, ``vbar``, ``velbar_mag`` and, where known, ``uvelsurf``, ``vvelsurf``,
    ``uvelbase``, ``vvelbase``; 3-D ``uvel``, ``vvel`` on ``zeta`` (0 = bed, 1 = surface) when
    ``velocity.has_levels``. Every velocity is exactly 0 where the thickness is 0. ``extra`` adds
    variables: a DataArray as is, an array ``(ny, nx)`` or ``(Nz, ny, nx)`` with the metadata of
    :data:`VARIABLES` when its name is there.
    """
    if np.shape(velocity.ubar) != geometry.shape:
        raise ValueError(f"velocity has shape {np.shape(velocity.ubar)} but the geometry has "
                         f"{geometry.shape}")
    ds = geometry_to_dataset(geometry)
    mapping = ds["thk"].attrs.get("grid_mapping")
    on_ice = geometry.thickness > 0
    ubar, vbar = (np.where(on_ice, np.asarray(a, np.float64), 0.0) for a in (velocity.ubar, velocity.vbar))
    fields = {"ubar": ubar, "vbar": vbar, "velbar_mag": np.hypot(ubar, vbar),
              "uvelsurf": velocity.u_surface, "vvelsurf": velocity.v_surface,
              "uvelbase": velocity.u_base, "vvelbase": velocity.v_base}
    if velocity.has_levels:
        ds = ds.assign_coords(zeta=xr.Variable("zeta", np.asarray(velocity.zeta, np.float64),
                                               attrs=_ZETA_ATTRS))
        fields.update(uvel=velocity.u, vvel=velocity.v)
    for name, value in fields.items():
        if value is not None:
            ds[name] = _data_array(name, np.where(on_ice, np.asarray(value, np.float64), 0.0), mapping)
    for name, value in (extra or {}).items():
        ds[name] = value if isinstance(value, xr.DataArray) else _data_array(name, value, mapping)
    return ds


def write_velocity(velocity: Velocity, geometry: Geometry, path: PathLike, *,
                   attrs: Optional[Mapping[str, object]] = None) -> Path:
    """Write :func:`velocity_to_dataset` (plus global ``attrs``) with :func:`safe_write`."""
    ds = velocity_to_dataset(velocity, geometry)
    ds.attrs.update(attrs or {})
    return safe_write(ds, path)


def safe_write(dataset: xr.Dataset, path: PathLike, *, single_precision: bool = False) -> Path:
    """Write a dataset atomically: to ``.<name>.tmp-<pid>`` beside ``path``, then rename.

    On any error the temporary file is removed and an existing ``path`` is left untouched.
    Float variables are compressed (zlib, level 1); ``single_precision`` stores the non-coordinate
    float variables as float32 (coordinates stay float64).

    Raises:
        InputError: the parent directory does not exist or ``path`` is a directory.
    """
    path = Path(path)
    if not path.parent.is_dir():
        raise InputError(f"{path}: cannot write, directory '{path.parent}' does not exist")
    if path.is_dir():
        raise InputError(f"{path}: cannot write, it is a directory")
    encoding = {}
    for name, var in dataset.variables.items():
        if np.issubdtype(var.dtype, np.floating) and var.ndim > 0:
            encoding[name] = {"zlib": True, "complevel": 1}
            if single_precision and name not in dataset.coords:
                encoding[name]["dtype"] = "float32"
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
    try:
        dataset.to_netcdf(tmp, engine="netcdf4", format="NETCDF4", encoding=encoding)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def _data_array(name: str, values, mapping: Optional[str]) -> xr.DataArray:
    values = np.asarray(values)
    dims = {0: (), 2: ("y", "x"), 3: ("zeta", "y", "x")}.get(values.ndim)
    if dims is None:
        raise ValueError(f"variable '{name}' has shape {values.shape}; expected (ny, nx) or "
                         "(Nz, ny, nx)")
    attrs = VARIABLES[name].attrs if name in VARIABLES else {}
    if mapping and values.ndim:
        attrs["grid_mapping"] = mapping
    return xr.DataArray(values, dims=dims, attrs=attrs)


def _global_attrs(geometry: Geometry) -> dict:
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    source = geometry.attrs.get("source_file")
    attrs = {"Conventions": "CF-1.8", "source": f"glacier-emulator {__version__}",
             "history": f"{stamp}: written by glacier-emulator {__version__}"
                        + (f" from {source}" if source else "")}
    attrs.update(geometry.attrs.get("projection", {}))
    reserved = ("grid_mapping", "grid_mapping_variable", "projection", "source_file")
    attrs.update({k: v for k, v in geometry.attrs.items()
                  if k not in reserved and isinstance(v, (str, int, float, np.number)) and not isinstance(v, bool)})
    if geometry.periodic:
        attrs["periodic_boundaries"] = "yes"
    return attrs
