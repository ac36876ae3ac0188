r"""Surface mass balance (SMB) models, in metres of ice per year, behind one interface.

Every model has ``smb(geometry, time) -> (ny, nx)`` array (m ice/yr, positive = accumulation),
with ``time`` in years:

* :class:`FieldSMB` -- a fixed field or a uniform value;
* :class:`ELASMB` -- IGM's ``simple`` method: a linear balance gradient about an equilibrium-line
  altitude (ELA), the parameters interpolated linearly in time from a table;
* :class:`TimeSeriesSMB` -- an offset per time (scalar or field), read from a CSV or NetCDF file
  or given in code, interpolated linearly in time and added to an optional base model.

:func:`smb_from_config` builds any of them from a small dictionary (as found in a run's YAML)::

    {"type": "field", "value": 0.5}
    {"type": "ela", "ela": 2300, "gradabl": 0.009, "gradacc": 0.005, "accmax": 2.0}
    {"type": "ela", "table": [["time", "gradabl", "gradacc", "ela", "accmax"],
                              [1900, 0.009, 0.005, 2300, 2.0], [2100, 0.009, 0.005, 2300, 2.0]]}
    {"type": "timeseries", "file": "offsets.csv", "base": {"type": "ela", ...}}
"""
from __future__ import annotations

import os
from typing import Optional, Protocol, Sequence, Union, runtime_checkable

import numpy as np

from ..fields import Geometry

ELA_COLUMNS = ("time", "gradabl", "gradacc", "ela", "accmax")
"""Columns of an ELA table (IGM ``smb_simple`` names): time (yr), ablation gradient (yr^-1),
accumulation gradient (yr^-1), ELA (m a.s.l.), maximum accumulation (m ice/yr)."""

SMB_TYPES = ("none", "field", "ela", "timeseries")

__all__ = [
    "SurfaceMassBalance",
    "FieldSMB",
    "ELASMB",
    "TimeSeriesSMB",
    "smb_from_config",
    "check_smb_field",
    "ELA_COLUMNS",
    "SMB_TYPES",
]


@runtime_checkable
class SurfaceMassBalance(Protocol):
    """The SMB interface: a field in m ice/yr for a geometry at a time (yr)."""

    def smb(self, geometry: Geometry, time: float) -> np.ndarray:
        ...


def check_smb_field(field, shape, *, source: str = "SMB field") -> np.ndarray:
    """Validate an SMB field against the grid; returns it as a float array of ``shape``.

    Raises:
        ValueError: wrong shape (names expected and received) or non-finite values.
    """
    arr = np.asarray(field, dtype=float)
    if arr.ndim == 0:
        arr = np.full(tuple(shape), float(arr))
    if arr.shape != tuple(shape):
        raise ValueError(f"{source} has shape {arr.shape}; expected {tuple(shape)} (the grid)")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{source} contains NaN or infinite values")
    return arr


class FieldSMB:
    """A fixed SMB: a uniform value or a ``(ny, nx)`` field (m ice/yr).

    Example:
        >>> g = Geometry(thickness=np.ones((2, 3)), bed=np.zeros((2, 3)), dx=1.0)
        >>> FieldSMB(0.5).smb(g, 0.0).shape
        (2, 3)
    """

    def __init__(self, field: Union[float, np.ndarray]):
        arr = np.asarray(field, dtype=float)
        if arr.ndim not in (0, 2):
            raise ValueError(f"an SMB field must be a scalar or (ny, nx). Received shape {arr.shape}")
        if not np.all(np.isfinite(arr)):
            raise ValueError("SMB field contains NaN or infinite values")
        self.field = arr

    def smb(self, geometry: Geometry, time: float) -> np.ndarray:
        return check_smb_field(self.field, geometry.shape)

    def to_config(self) -> dict:
        value = self.field.tolist()
        return {"type": "field", "value": value}


def _parse_ela_table(table) -> np.ndarray:
    """An ELA table as a ``(k, 5)`` float array sorted by time.

    Accepts rows of numbers in the order of :data:`ELA_COLUMNS`, IGM's layout (a header row of
    column names followed by rows; any column order), or a mapping of column name to values.
    """
    if isinstance(table, dict):
        missing = [c for c in ELA_COLUMNS if c not in table]
        unknown = sorted(set(table) - set(ELA_COLUMNS))
        if missing or unknown:
            raise ValueError(
                f"ELA table needs the columns {list(ELA_COLUMNS)}; missing {missing}, unknown {unknown}"
            )
        cols = [np.atleast_1d(np.asarray(table[c], float)) for c in ELA_COLUMNS]
        lengths = {len(c) for c in cols}
        if len(lengths) != 1:
            raise ValueError(f"ELA table columns have different lengths: {sorted(lengths)}")
        arr = np.stack(cols, axis=1)
    else:
        rows = [list(r) for r in table]
        if rows and all(isinstance(v, str) for v in rows[0]):
            header = [v.strip() for v in rows[0]]
            if sorted(header) != sorted(ELA_COLUMNS):
                raise ValueError(
                    f"ELA table header must name the columns {list(ELA_COLUMNS)}. Received: {header}"
                )
            order = [header.index(c) for c in ELA_COLUMNS]
            rows = [[r[i] for i in order] for r in rows[1:]]
        try:
            arr = np.asarray(rows, dtype=float)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"ELA table rows must be numbers ({exc})") from None
        if arr.ndim == 1 and arr.size == len(ELA_COLUMNS):
            arr = arr[None, :]
        if arr.ndim != 2 or arr.shape[1] != len(ELA_COLUMNS):
            raise ValueError(
                f"ELA table must have rows of {len(ELA_COLUMNS)} values {list(ELA_COLUMNS)}; "
                f"received an array of shape {arr.shape}"
            )
    if arr.shape[0] < 1:
        raise ValueError("ELA table has no rows")
    if not np.all(np.isfinite(arr)):
        raise ValueError("ELA table contains NaN or infinite values")
    if np.any(np.diff(arr[:, 0]) <= 0) and arr.shape[0] > 1:
        order = np.argsort(arr[:, 0], kind="stable")
        arr = arr[order]
        if np.any(np.diff(arr[:, 0]) == 0):
            raise ValueError("ELA table has repeated times")
    if np.any(arr[:, 1] < 0) or np.any(arr[:, 2] < 0):
        raise ValueError("ELA table gradients (gradabl, gradacc) must be >= 0")
    return arr


class ELASMB:
    r"""IGM's ``simple`` SMB: balance gradients about an ELA, parameters interpolated in time.

    .. math::

        \dot b(s) = \min\bigl(\gamma (s - z_\mathrm{ELA}),\ \dot b_\max\bigr), \qquad
        \gamma = \begin{cases} \gamma_\mathrm{abl} & s < z_\mathrm{ELA} \\
                               \gamma_\mathrm{acc} & s \ge z_\mathrm{ELA} \end{cases}

    in m ice/yr, with the surface elevation ``s`` (m). The table's parameters are interpolated
    linearly in time and held constant beyond its first and last rows.

    Args:
        table: rows ``(time, gradabl, gradacc, ela, accmax)``, IGM's layout with a header row, or a
            mapping of column names to values (see :data:`ELA_COLUMNS`).

    Example:
        >>> smb = ELASMB([[0, 0.009, 0.005, 2300, 2.0]])
        >>> g = Geometry(thickness=np.zeros((2, 2)), bed=np.array([[2200.0, 2300], [2400, 3000]]), dx=1.0)
        >>> smb.smb(g, 0.0).round(3).tolist()
        [[-0.9, 0.0], [0.5, 2.0]]
    """

    def __init__(self, table):
        self.table = _parse_ela_table(table)

    @classmethod
    def constant(cls, *, ela: float, gradabl: float, gradacc: float, accmax: float) -> "ELASMB":
        """Parameters that do not change in time."""
        return cls([[0.0, gradabl, gradacc, ela, accmax]])

    def parameters(self, time: float) -> dict:
        """The table interpolated at ``time`` (yr)."""
        t = self.table[:, 0]
        return {
            name: float(np.interp(float(time), t, self.table[:, i]))
            for i, name in enumerate(ELA_COLUMNS)
        }

    def smb(self, geometry: Geometry, time: float) -> np.ndarray:
        p = self.parameters(time)
        dz = geometry.surface - p["ela"]
        rate = np.where(dz < 0, p["gradabl"], p["gradacc"]) * dz
        return np.minimum(rate, p["accmax"])

    def to_config(self) -> dict:
        return {"type": "ela", "table": [list(ELA_COLUMNS)] + self.table.tolist()}


class TimeSeriesSMB:
    """An SMB offset per time, interpolated linearly in time, added to an optional base model.

    ``smb(geometry, t) = base.smb(geometry, t) + offset(t)`` where ``offset`` is a scalar or a
    ``(ny, nx)`` field per time (m ice/yr), held constant beyond the first and last times.

    Args:
        times: increasing times (yr), length k.
        values: ``(k,)`` scalars or ``(k, ny, nx)`` fields (m ice/yr).
        base: the model the offset is added to (None: the offset is the SMB).
    """

    def __init__(self, times: Sequence[float], values, *, base: Optional[SurfaceMassBalance] = None):
        times = np.atleast_1d(np.asarray(times, dtype=float))
        values = np.asarray(values, dtype=float)
        if times.ndim != 1 or times.size < 1:
            raise ValueError(f"times must be a 1-D sequence. Received shape {times.shape}")
        if values.ndim not in (1, 3) or values.shape[0] != times.size:
            raise ValueError(
                f"values must be ({times.size},) scalars or ({times.size}, ny, nx) fields, one per "
                f"time; received shape {values.shape}"
            )
        if np.any(np.diff(times) <= 0):
            raise ValueError("times must be strictly increasing")
        if not (np.all(np.isfinite(times)) and np.all(np.isfinite(values))):
            raise ValueError("time series contains NaN or infinite values")
        self.times = times
        self.values = values
        self.base = base

    def offset(self, time: float) -> Union[float, np.ndarray]:
        t = float(time)
        if self.values.ndim == 1:
            return float(np.interp(t, self.times, self.values))
        if t <= self.times[0]:
            return self.values[0]
        if t >= self.times[-1]:
            return self.values[-1]
        i = int(np.searchsorted(self.times, t, side="right")) - 1
        w = (t - self.times[i]) / (self.times[i + 1] - self.times[i])
        return (1.0 - w) * self.values[i] + w * self.values[i + 1]

    def smb(self, geometry: Geometry, time: float) -> np.ndarray:
        offset = self.offset(time)
        if np.ndim(offset) == 2:
            offset = check_smb_field(offset, geometry.shape, source="SMB time-series field")
        base = 0.0 if self.base is None else self.base.smb(geometry, time)
        return np.broadcast_to(base + offset, geometry.shape).astype(float)

    @classmethod
    def from_file(cls, path: str, *, variable: str = "smb", base=None) -> "TimeSeriesSMB":
        """Read a CSV (columns ``time`` and ``smb`` or ``offset``, header row) or a NetCDF file
        (variable ``variable`` on ``(time, y, x)`` or ``(time,)``, time in years or CF-decoded).
        """
        path = os.fspath(path)
        if not os.path.exists(path):
            raise FileNotFoundError(f"SMB time-series file not found: {path}")
        if path.lower().endswith((".csv", ".txt")):
            data = np.genfromtxt(path, delimiter=",", names=True, dtype=float, encoding="utf-8")
            names = data.dtype.names or ()
            value_name = next((n for n in ("smb", "offset", variable) if n in names), None)
            if "time" not in names or value_name is None:
                raise ValueError(
                    f"{path}: a CSV SMB time series needs a header with the columns 'time' and "
                    f"'smb' (or 'offset'); found {list(names)}"
                )
            return cls(np.atleast_1d(data["time"]), np.atleast_1d(data[value_name]), base=base)
        import xarray as xr

        from ..io.netcdf import check_netcdf3_complete

        check_netcdf3_complete(path)
        with xr.open_dataset(path, decode_times=False) as ds:
            if variable not in ds:
                raise ValueError(f"{path}: no variable {variable!r}; found {sorted(ds.data_vars)}")
            da = ds[variable]
            if "time" not in da.dims:
                raise ValueError(f"{path}: variable {variable!r} has no 'time' dimension ({da.dims})")
            times = years_from_cf(ds["time"].values, ds["time"].attrs)
            values = da.transpose("time", ...).values.astype(float)
        return cls(times, values, base=base)

    def to_config(self) -> dict:
        cfg = {"type": "timeseries", "times": self.times.tolist(), "values": self.values.tolist()}
        if self.base is not None and hasattr(self.base, "to_config"):
            cfg["base"] = self.base.to_config()
        return cfg


def years_from_cf(values, attrs) -> np.ndarray:
    """Model years from raw (undecoded) CF time values and their attributes.

    Understands plain years (``units`` without ``since``), ``common_years since ...`` and any
    ``<unit> since <date>`` that cftime decodes; the result counts years of 365 days from
    0000-01-01 (so a date in year 2000 gives 2000.x).
    """
    values = np.asarray(values, dtype=float)
    attrs = dict(attrs or {})
    units = str(attrs.get("units", "year")).strip()
    if " since " not in units:
        return values
    import cftime

    calendar = attrs.get("calendar", "noleap")
    if units.startswith("common_years"):
        origin = units.split(" since ", 1)[1]
        start = cftime.date2num(
            cftime.num2date(0.0, f"days since {origin}", calendar=calendar, has_year_zero=True),
            "days since 0000-01-01 00:00:00", calendar=calendar, has_year_zero=True,
        )
        return values + float(start) / 365.0
    dates = cftime.num2date(values, units, calendar=calendar, has_year_zero=True)
    days = cftime.date2num(dates, "days since 0000-01-01 00:00:00", calendar="noleap",
                           has_year_zero=True)
    return np.asarray(days, float) / 365.0


def smb_from_config(config) -> Optional[SurfaceMassBalance]:
    """Build an SMB model from a config dictionary (see the module docstring).

    ``None`` or ``{"type": "none"}`` gives None (no SMB). A number gives a uniform
    :class:`FieldSMB`. Raises ``ValueError`` for unknown types or keys.
    """
    if config is None:
        return None
    if isinstance(config, (int, float)) and not isinstance(config, bool):
        return FieldSMB(float(config))
    if not isinstance(config, dict):
        raise ValueError(f"an SMB config must be a mapping with a 'type'. Received: {config!r}")
    cfg = dict(config)
    kind = str(cfg.pop("type", "")).strip().lower()

    def check_keys(allowed):
        unknown = sorted(set(cfg) - set(allowed))
        if unknown:
            raise ValueError(
                f"unknown key(s) {unknown} in the {kind!r} SMB config; allowed: {sorted(allowed)}"
            )

    if kind == "none":
        check_keys(())
        return None
    if kind == "field":
        check_keys(("value", "file", "variable"))
        if "file" in cfg:
            import xarray as xr

            from ..io.netcdf import check_netcdf3_complete

            path = os.fspath(cfg["file"])
            if not os.path.exists(path):
                raise FileNotFoundError(f"SMB field file not found: {path}")
            variable = cfg.get("variable", "smb")
            check_netcdf3_complete(path)
            with xr.open_dataset(path) as ds:
                if variable not in ds:
                    raise ValueError(f"{path}: no variable {variable!r}; found {sorted(ds.data_vars)}")
                return FieldSMB(ds[variable].values.astype(float))
        if "value" not in cfg:
            raise ValueError("a 'field' SMB config needs 'value' (m ice/yr) or 'file'")
        return FieldSMB(cfg["value"])
    if kind == "ela":
        if "table" in cfg:
            check_keys(("table",))
            return ELASMB(cfg["table"])
        check_keys(("ela", "gradabl", "gradacc", "accmax"))
        missing = [k for k in ("ela", "gradabl", "gradacc", "accmax") if k not in cfg]
        if missing:
            raise ValueError(
                "an 'ela' SMB config needs 'table' or all of ela, gradabl, gradacc, accmax; "
                f"missing {missing}"
            )
        return ELASMB.constant(**{k: float(v) for k, v in cfg.items()})
    if kind == "timeseries":
        check_keys(("file", "variable", "times", "values", "base"))
        base = smb_from_config(cfg.get("base"))
        if "file" in cfg:
            return TimeSeriesSMB.from_file(cfg["file"], variable=cfg.get("variable", "smb"), base=base)
        if "times" not in cfg or "values" not in cfg:
            raise ValueError("a 'timeseries' SMB config needs 'file' or both 'times' and 'values'")
        return TimeSeriesSMB(cfg["times"], cfg["values"], base=base)
    raise ValueError(f"Unknown SMB type {kind!r}; valid: {', '.join(SMB_TYPES)}")
