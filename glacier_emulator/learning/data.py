r"""Training data: NetCDF samples in memory, and a deterministic, resumable ``tf.data`` stream.

:func:`load_data` reads a list of NetCDF files and folders (a folder stands for its ``*.nc``
files, sorted) into one array per sample, the *fields* of :class:`Layout`, channels-last
``(ny, nx, F)`` float32:

====  ====================  =====================  ==============================================
 #    name                  units                  source
====  ====================  =====================  ==============================================
 0    thickness             m                      ``read_geometry``
 1    surface_slope_x       1                      ``node_gradient`` of the surface
 2    surface_slope_y       1                      (central differences, as the emulator does)
 3    sliding_coefficient   MPa m-1/3 year1/3      ``slidingco`` or the physics default
 4    rate_factor           MPa-3 year-1           ``arrhenius`` or the physics default
 5    grid_spacing          m                      dx of the sample
 6    surface               m                      bed + thickness minus its minimum
                                                   (for the energy, which only uses its
                                                   gradient; relative, so float32 keeps it
                                                   exact to the mm whatever the elevation)
 7-8  ubar, vbar            m year-1               labels (when the files have them)
 9-   u_0..u_{Nz-1},        m year-1               ``uvel``/``vvel`` on the levels, bed to
      v_0..v_{Nz-1}                                surface (when every file has them)
====  ====================  =====================  ==============================================

The first ``in_channels`` fields are the model input (the channel order of
:data:`glacier_emulator.models.unet.INPUT_CHANNELS`); the surface feeds the Blatter-Pattyn energy
of physics-informed training, which takes its slope element by element exactly as the reference
solver does. Each sample also carries its grid spacing ``(dx, dy)`` (m): grids of different
spacings may be mixed (the energy is evaluated sample by sample then).

Files flagged ``solver_converged = 0`` (written by ``make-dataset`` when the reference solver did
not converge) are skipped and counted. Geometry-only files (no velocities) are allowed; the
labels are then absent (physics-informed training only).

:func:`make_dataset_fn` builds the training stream. Element ``k`` of the stream (``k = step *
global_batch + position``) is a pure function of ``(seed, k)``: the sample is entry ``k mod N``
of a seeded permutation of epoch ``k // N``; the random crop, the mirrors and the rotation are
drawn from ``numpy.random.default_rng([seed, 1, k])``. So the stream can start at any step
(``--resume`` continues the same sequence of batches), and each global batch is the same whatever
the number of replicas and workers it is split across.

Augmentation (the symmetries of the Blatter-Pattyn equations on a regular grid):

* mirror in x: reverse the x axis, negate ``surface_slope_x``, ``ubar`` and ``u_k``;
* mirror in y: reverse the y axis, negate ``surface_slope_y``, ``vbar`` and ``v_k``;
* rotation by 90 degrees counter-clockwise: :math:`A'[j, i] = A[n_y - 1 - i, j]`, vector
  components :math:`(a_x, a_y) \to (-a_y, a_x)`, ``(dx, dy) -> (dy, dx)``. Only applied to square
  crops (a rotation changes the shape of a non-square one).

Every transform maps a solution of the equations to the solution of the transformed glacier; the
discrete energy is invariant too (tested).

Optional speed scaling (``StreamConfig.speed_scaling``, :func:`scale_speed`): with Glen's law and
Weertman sliding the Blatter-Pattyn energy obeys :math:`E(\mu \mathbf u; \mu A, \mu^{-m} c) =
\mu E(\mathbf u; A, c)`, so the glacier with rate factor :math:`\mu A` and sliding coefficient
:math:`\mu^{-m} c` flows at exactly :math:`\mu` times the speed. A random factor :math:`\mu`
(log-uniform) applied to ``rate_factor``, ``sliding_coefficient`` and every velocity label is a
further exact augmentation for models that see the rate factor as an input.
"""
from __future__ import annotations

import ast
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional, Sequence, Tuple, Union

import numpy as np

from ..constants import DEFAULT_PHYSICS, Physics, VerticalDiscretisation
from ..fields import InputError
from ..models.unet import INPUT_CHANNELS

PathLike = Union[str, os.PathLike]

INPUT_FIELDS = INPUT_CHANNELS
"""Names of the input fields 0-5: the U-Net's canonical input channel order."""

SURFACE = 6
UBAR, VBAR = 7, 8
LEVELS_START = 9
LABEL_KINDS = ("none", "depth_averaged", "levels")
_PHYSICS_CHECKED = ("glen_exponent", "ice_density", "gravity", "sliding_exponent", "no_slip")


@dataclass(frozen=True)
class Layout:
    """The channel layout of the sample arrays (see the module docstring).

    Args:
        labels: ``"none"`` (geometry only), ``"depth_averaged"`` (ubar, vbar) or ``"levels"``
            (ubar, vbar and u, v on ``levels`` levels).
        levels: number of label levels Nz (0 unless ``labels == "levels"``).
    """

    labels: str = "none"
    levels: int = 0

    def __post_init__(self):
        if self.labels not in LABEL_KINDS:
            raise ValueError(f"labels must be one of {LABEL_KINDS}. Received: labels={self.labels!r}")
        if (self.labels == "levels") != (self.levels >= 2):
            raise ValueError(f"levels must be >= 2 exactly when labels == 'levels'. Received: {self!r}")

    @property
    def channels(self) -> int:
        """Number of channels F of a sample array."""
        if self.labels == "none":
            return SURFACE + 1
        return LEVELS_START + (2 * self.levels if self.labels == "levels" else 0)

    @property
    def has_labels(self) -> bool:
        return self.labels != "none"

    @property
    def has_levels(self) -> bool:
        return self.labels == "levels"

    def u_levels(self) -> slice:
        return slice(LEVELS_START, LEVELS_START + self.levels)

    def v_levels(self) -> slice:
        return slice(LEVELS_START + self.levels, LEVELS_START + 2 * self.levels)

    def odd_x(self) -> list:
        """Channels that change sign under the x mirror (x components)."""
        out = [1]
        if self.has_labels:
            out.append(UBAR)
        if self.has_levels:
            out += list(range(LEVELS_START, LEVELS_START + self.levels))
        return out

    def odd_y(self) -> list:
        """Channels that change sign under the y mirror (y components)."""
        out = [2]
        if self.has_labels:
            out.append(VBAR)
        if self.has_levels:
            out += list(range(LEVELS_START + self.levels, LEVELS_START + 2 * self.levels))
        return out

    def vector_pairs(self) -> list:
        """(x component, y component) channel pairs, for rotations."""
        pairs = [(1, 2)]
        if self.has_labels:
            pairs.append((UBAR, VBAR))
        if self.has_levels:
            pairs += [(LEVELS_START + k, LEVELS_START + self.levels + k) for k in range(self.levels)]
        return pairs


@dataclass(frozen=True)
class Sample:
    """One glacier: its fields ``(ny, nx, F)`` float32 and its grid spacing (m)."""

    path: str
    fields: np.ndarray
    dx: float
    dy: float

    @property
    def shape(self) -> Tuple[int, int]:
        return tuple(self.fields.shape[:2])


@dataclass(frozen=True)
class TrainingData:
    """Samples in memory, with their layout and provenance.

    Attributes:
        samples: the samples, in file order.
        layout: the channel layout shared by all samples.
        vertical: the levels of the ``"levels"`` labels (else the levels the files report, or
            None).
        physics: the constants the labels were computed with, when every file says so
            (``make-dataset`` files do), else None.
        skipped: files left out because their solve did not converge.
        sources: the paths as given (files and folders).
    """

    samples: Tuple[Sample, ...]
    layout: Layout
    vertical: Optional[VerticalDiscretisation] = None
    physics: Optional[Physics] = None
    skipped: Tuple[str, ...] = ()
    sources: Tuple[str, ...] = ()
    notes: Tuple[str, ...] = field(default=())

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def files(self) -> Tuple[str, ...]:
        return tuple(s.path for s in self.samples)

    @property
    def spacings(self) -> np.ndarray:
        """``(N, 2)`` array of (dx, dy) in m."""
        return np.array([(s.dx, s.dy) for s in self.samples], dtype=np.float64).reshape(-1, 2)

    @property
    def uniform_spacing(self) -> Optional[Tuple[float, float]]:
        """The common (dx, dy) if every sample has the same and dx == dy, else None.

        (dx == dy is required because a rotated sample has its dx and dy swapped.)
        """
        sp = self.spacings
        if len(sp) == 0 or not np.allclose(sp, sp[0], rtol=1e-6, atol=0):
            return None
        if not np.isclose(sp[0, 0], sp[0, 1], rtol=1e-6, atol=0):
            return None
        return float(sp[0, 0]), float(sp[0, 1])

    @property
    def min_shape(self) -> Tuple[int, int]:
        """The smallest ny and nx over the samples (the largest possible crop)."""
        return (min(s.shape[0] for s in self.samples), min(s.shape[1] for s in self.samples))

    def subset(self, indices: Sequence[int]) -> "TrainingData":
        return TrainingData(
            samples=tuple(self.samples[i] for i in indices), layout=self.layout,
            vertical=self.vertical, physics=self.physics, skipped=self.skipped,
            sources=self.sources, notes=self.notes,
        )

    def split(self, *, validation_fraction: float, seed: int) -> Tuple["TrainingData", "TrainingData"]:
        """(training, validation) split by file, deterministic for ``seed``.

        ``round(validation_fraction * N)`` files (at least one if the fraction is > 0 and there
        are two files or more; never all of them) go to validation.
        """
        if not 0.0 <= validation_fraction < 1.0:
            raise ValueError(
                f"validation_fraction must be in [0, 1). Received: {validation_fraction!r}"
            )
        n = len(self.samples)
        n_val = int(round(validation_fraction * n))
        if validation_fraction > 0 and n >= 2:
            n_val = min(max(n_val, 1), n - 1)
        else:
            n_val = 0
        order = np.random.default_rng([int(seed), 7]).permutation(n)
        val = sorted(order[:n_val].tolist())
        train = sorted(order[n_val:].tolist())
        return self.subset(train), self.subset(val)

    def describe(self) -> dict:
        """A JSON-able summary (for the model metadata and the log)."""
        sp = self.spacings
        return {
            "files": list(self.files),
            "count": len(self.samples),
            "skipped_not_converged": list(self.skipped),
            "sources": list(self.sources),
            "labels": self.layout.labels,
            "levels": int(self.layout.levels),
            "grid_shapes": sorted({f"{s.shape[0]}x{s.shape[1]}" for s in self.samples}),
            "dx_range_m": [float(sp.min()), float(sp.max())] if len(sp) else None,
        }

    def rate_factor_varies(self) -> bool:
        values = [s.fields[..., 4][s.fields[..., 0] > 0] for s in self.samples]
        values = np.concatenate([v for v in values if v.size] or [np.zeros(0)])
        return bool(values.size and values.max() > values.min() * (1 + 1e-6))


# ------------------------------------------------------------------------------ reading
def expand_paths(paths: Sequence[PathLike]) -> list:
    """Files as given, folders replaced by their ``*.nc`` files (sorted); duplicates dropped.

    Raises:
        InputError: a path does not exist, or a folder has no ``.nc`` file.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    out: list = []
    for p in paths:
        p = Path(p)
        if p.is_dir():
            found = sorted(p.glob("*.nc"))
            if not found:
                raise InputError(f"{p}: folder contains no .nc files")
            out += found
        elif p.exists():
            out.append(p)
        else:
            raise InputError(f"{p}: no such file or folder")
    seen, unique = set(), []
    for p in out:
        key = str(p.resolve())
        if key not in seen:
            seen.add(key)
            unique.append(p)
    if not unique:
        raise InputError("no training data given")
    return unique


def _velocity_units_factor(var, label: str, name: str) -> float:
    from ..io.netcdf import CONVERSIONS

    units = var.attrs.get("units")
    if units is None or not str(units).strip():
        return 1.0
    key = " ".join(str(units).lower().replace("^", "").split())
    if key not in CONVERSIONS["velocity"]:
        raise InputError(f"{label}: variable '{name}' has units '{units}', which this package does "
                         f"not convert; use 'm year-1'")
    return float(CONVERSIONS["velocity"][key])


def _label_array(ds, name: str, label: str, shape, *, levels: bool) -> np.ndarray:
    """A label variable in m/yr, (ny, nx) or (Nz, ny, nx), y and x ascending, checked finite."""
    var = ds[name]
    for dim in [d for d in var.dims if d not in ("zeta", "x", "y")]:
        if var.sizes[dim] != 1:
            raise InputError(f"{label}: variable '{name}' has an extra dimension '{dim}' of length "
                             f"{var.sizes[dim]}; training needs one time slice per file")
        var = var.isel({dim: 0})
    want = ("zeta", "y", "x") if levels else ("y", "x")
    if set(var.dims) != set(want):
        raise InputError(f"{label}: variable '{name}' has dimensions {var.dims}; expected {want}")
    values = np.asarray(var.transpose(*want).values, dtype=np.float64)
    for axis, dim in ((-2, "y"), (-1, "x")):
        coord = np.asarray(ds[dim].values, float) if dim in ds.variables else None
        if coord is not None and coord.size > 1 and coord[1] < coord[0]:
            values = np.flip(values, axis)
    if values.shape[-2:] != tuple(shape):
        raise InputError(f"{label}: variable '{name}' is on a {values.shape[-2:]} grid but the "
                         f"thickness is {tuple(shape)}")
    bad = ~np.isfinite(values)
    if bad.any():
        raise InputError(f"{label}: variable '{name}' has {int(bad.sum())} NaN or infinite values")
    return values * _velocity_units_factor(var, label, name)


def _vertical_of_zeta(zeta: np.ndarray, label: str) -> VerticalDiscretisation:
    """The :class:`VerticalDiscretisation` whose levels are ``zeta`` (checked to 1e-6)."""
    zeta = np.asarray(zeta, float)
    n = len(zeta)
    if n < 2 or abs(zeta[0]) > 1e-6 or abs(zeta[-1] - 1) > 1e-6:
        raise InputError(f"{label}: coordinate 'zeta' must run from 0 (bed) to 1 (surface); got {zeta}")
    t1 = 1.0 / (n - 1)
    denom = zeta[1] - t1 * t1
    c = (t1 - zeta[1]) / denom if n > 2 and abs(denom) > 1e-12 else 0.0
    vertical = VerticalDiscretisation(levels=n, spacing=float(max(1.0, 1.0 + 2.0 * c)))
    if not np.allclose(vertical.zeta, zeta, atol=1e-6):
        raise InputError(f"{label}: the levels 'zeta' = {np.round(zeta, 4).tolist()} are not the "
                         "package's terrain-following levels for any spacing")
    return vertical


def _file_physics(ds) -> Optional[dict]:
    text = ds.attrs.get("physics")
    if not isinstance(text, str):
        return None
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return None
    return value if isinstance(value, dict) else None


def read_sample(path: PathLike, *, physics: Physics = DEFAULT_PHYSICS, labels: str = "levels"):
    """Read one file into a :class:`Sample` of the widest layout it supports up to ``labels``.

    Returns:
        ``(sample_or_None, info)``: None when the file is flagged ``solver_converged = 0``;
        ``info`` holds ``labels`` (what the file has), ``zeta`` and ``physics`` (the file's
        constants, if recorded).

    Raises:
        InputError: naming the file and the variable (missing, NaN, wrong grid or units).
    """
    import xarray as xr

    from ..io.netcdf import read_geometry

    path = Path(path)
    label = str(path)
    geometry = read_geometry(path)  # InputError naming the file for missing/NaN inputs
    try:
        ds = xr.open_dataset(path, engine="netcdf4", decode_times=False, decode_timedelta=False)
    except (OSError, ValueError, RuntimeError) as exc:
        raise InputError(f"{label}: not a readable NetCDF file: {exc}") from exc
    with ds:
        converged = ds.attrs.get("solver_converged")
        info = {"labels": "none", "zeta": None, "physics": _file_physics(ds)}
        if converged is not None and int(np.asarray(converged).ravel()[0]) == 0:
            return None, info
        shape = geometry.shape
        have = {n for n in ("ubar", "vbar", "uvel", "vvel") if n in ds.variables}
        for pair in ({"ubar", "vbar"}, {"uvel", "vvel"}):
            if len(have & pair) == 1:
                raise InputError(f"{label}: has '{next(iter(have & pair))}' but not "
                                 f"'{next(iter(pair - have))}'; the labels need both velocity "
                                 "components")
        arrays = {}
        if {"ubar", "vbar"} <= have and labels != "none":
            info["labels"] = "depth_averaged"
            arrays["ubar"] = _label_array(ds, "ubar", label, shape, levels=False)
            arrays["vbar"] = _label_array(ds, "vbar", label, shape, levels=False)
            if {"uvel", "vvel"} <= have and labels == "levels":
                if "zeta" not in ds.variables:
                    raise InputError(f"{label}: 'uvel'/'vvel' have no 'zeta' coordinate (the level "
                                     "positions, 0 = bed, 1 = surface)")
                info["labels"] = "levels"
                info["zeta"] = np.asarray(ds["zeta"].values, float)
                arrays["uvel"] = _label_array(ds, "uvel", label, shape, levels=True)
                arrays["vvel"] = _label_array(ds, "vvel", label, shape, levels=True)
    sx, sy = geometry.replace(periodic=False).slopes()
    sliding = (physics.sliding_coefficient if geometry.sliding_coefficient is None
               else geometry.sliding_coefficient)
    rate = physics.rate_factor if geometry.rate_factor is None else geometry.rate_factor
    channels = [
        geometry.thickness, sx, sy, np.broadcast_to(sliding, shape), np.broadcast_to(rate, shape),
        np.full(shape, geometry.dx), geometry.surface - np.min(geometry.surface),
    ]
    if info["labels"] != "none":
        channels += [arrays["ubar"], arrays["vbar"]]
    if info["labels"] == "levels":
        channels += list(arrays["uvel"]) + list(arrays["vvel"])
    fields = np.stack(channels, axis=-1).astype(np.float32)
    return Sample(path=label, fields=fields, dx=geometry.dx, dy=geometry.dy), info


def load_data(
    paths: Sequence[PathLike],
    *,
    physics: Physics = DEFAULT_PHYSICS,
    require_labels: bool = False,
    labels: str = "levels",
) -> TrainingData:
    """Read NetCDF files and folders of them into a :class:`TrainingData`.

    Args:
        paths: files and folders (a folder means its ``*.nc`` files).
        physics: the defaults for a sliding coefficient or rate factor a file does not have.
        require_labels: every file must have ``ubar`` and ``vbar`` (supervised and hybrid
            training); otherwise geometry-only files are fine.
        labels: the widest labels to read: ``"levels"`` (3-D when every file has them),
            ``"depth_averaged"`` or ``"none"``.

    Returns:
        The samples with the layout all of them support (3-D labels only if every file has them).

    Raises:
        InputError: naming the file and variable: unreadable files, missing inputs or labels,
            NaN values, 3-D labels on different levels, or no usable file at all.
    """
    if labels not in LABEL_KINDS:
        raise ValueError(f"labels must be one of {LABEL_KINDS}. Received: labels={labels!r}")
    files = expand_paths(paths)
    samples, infos, skipped = [], [], []
    for path in files:
        sample, info = read_sample(path, physics=physics, labels=labels)
        if sample is None:
            skipped.append(str(path))
            continue
        samples.append(sample)
        infos.append(info)
    if not samples:
        raise InputError(f"no usable training file: all {len(files)} were flagged "
                         "solver_converged = 0")
    kinds = [i["labels"] for i in infos]
    if require_labels:
        missing = [s.path for s, k in zip(samples, kinds) if k == "none"]
        if missing:
            more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            raise InputError(f"{missing[0]}{more}: no velocity labels (variables 'ubar' and "
                             "'vbar'); supervised and hybrid training need them, physics "
                             "training does not")
    kind = min(kinds, key=LABEL_KINDS.index)
    notes = []
    if kind != max(kinds, key=LABEL_KINDS.index):
        notes.append(f"labels: only {kind} used (not every file has more)")
    vertical = None
    if kind == "levels":
        zetas = [i["zeta"] for i in infos]
        for s, z in zip(samples, zetas):
            if len(z) != len(zetas[0]) or not np.allclose(z, zetas[0], atol=1e-6):
                raise InputError(f"{s.path}: 'uvel'/'vvel' are on levels zeta = "
                                 f"{np.round(z, 4).tolist()} but {samples[0].path} has "
                                 f"{np.round(zetas[0], 4).tolist()}; all files need the same levels")
        vertical = _vertical_of_zeta(zetas[0], samples[0].path)
    layout = Layout(labels=kind, levels=vertical.levels if vertical else 0)
    if layout.labels != "levels":
        # drop the 3-D channels of files that have them
        samples = [Sample(s.path, s.fields[..., : layout.channels], s.dx, s.dy) for s in samples]
    file_physics = [i["physics"] for i in infos]
    common = None
    if all(p is not None for p in file_physics):
        first = {k: file_physics[0].get(k) for k in _PHYSICS_CHECKED}
        if all({k: p.get(k) for k in _PHYSICS_CHECKED} == first for p in file_physics):
            try:
                common = Physics.from_dict(file_physics[0])
            except (TypeError, ValueError):
                common = None
    return TrainingData(
        samples=tuple(samples), layout=layout, vertical=vertical, physics=common,
        skipped=tuple(skipped), sources=tuple(str(p) for p in paths), notes=tuple(notes),
    )


def check_physics(data: TrainingData, physics: Physics) -> None:
    """Refuse training constants that contradict the ones the labels were computed with.

    Compares Glen's exponent, the density, gravity, the sliding exponent and ``no_slip`` (the
    rate factor and the sliding coefficient are fields of the samples).

    Raises:
        InputError: a constant differs.
    """
    if data.physics is None or not data.layout.has_labels:
        return
    for name in _PHYSICS_CHECKED:
        a, b = getattr(physics, name), getattr(data.physics, name)
        if a != b:
            raise InputError(
                f"physics.{name} = {a!r} differs from the value {b!r} the labels in "
                f"{data.samples[0].path} were computed with; remove it from the config or "
                "regenerate the data"
            )


# ---------------------------------------------------------------------------- augmentation
def transform(
    fields: np.ndarray,
    spacing: Tuple[float, float],
    *,
    layout: Layout,
    flip_x: bool = False,
    flip_y: bool = False,
    rotations: int = 0,
) -> Tuple[np.ndarray, Tuple[float, float]]:
    """Mirror and rotate a sample's fields ``(ny, nx, F)``, components transformed with the grid.

    Applied in this order: mirror in x, mirror in y, then ``rotations`` counter-clockwise
    rotations by 90 degrees (see the module docstring). Returns the new fields (a copy) and the new
    ``(dx, dy)``; the ``grid_spacing`` channel is set to the new dx.
    """
    out = np.array(fields, dtype=np.float32, copy=True)
    dx, dy = float(spacing[0]), float(spacing[1])
    if flip_x:
        out = out[:, ::-1, :]
        out[..., layout.odd_x()] *= -1.0
    if flip_y:
        out = out[::-1, :, :]
        out[..., layout.odd_y()] *= -1.0
    for _ in range(int(rotations) % 4):
        out = np.swapaxes(out[::-1, :, :], 0, 1)
        pairs = layout.vector_pairs()
        xs = [p[0] for p in pairs]
        ys = [p[1] for p in pairs]
        new_x = -out[..., ys]
        new_y = out[..., xs].copy()
        out[..., xs] = new_x
        out[..., ys] = new_y
        dx, dy = dy, dx
    out = np.ascontiguousarray(out)
    out[..., 5] = dx
    return out, (dx, dy)


def scale_speed(fields: np.ndarray, factor: float, *, layout: Layout,
                sliding_exponent: float) -> np.ndarray:
    """The glacier that flows ``factor`` times as fast (see the module docstring).

    Multiplies the rate factor by ``factor``, the sliding coefficient by
    ``factor ** -sliding_exponent`` and every velocity label by ``factor``; a copy.
    """
    if not (np.isfinite(factor) and factor > 0):
        raise ValueError(f"factor must be a positive number. Received: {factor!r}")
    out = np.array(fields, dtype=np.float32, copy=True)
    out[..., 4] *= factor
    out[..., 3] *= factor ** (-float(sliding_exponent))
    if layout.has_labels:
        out[..., UBAR:] *= factor
    return out


@dataclass(frozen=True)
class StreamConfig:
    """How training elements are drawn (see :func:`element`).

    Args:
        crop: ``(cy, cx)`` crop size in nodes (each at most the smallest grid).
        mirror: random mirrors in x and y.
        rotate: random 90-degree rotations (square crops only).
        seed: the stream's seed.
        speed_scaling: ``(low, high)``: scale each element's speed by a log-uniform random factor
            in this range (:func:`scale_speed`); None: off.
        sliding_exponent: m of the Weertman law the labels obey (for ``speed_scaling``).
        wide_crop: ``(cy, cx)`` or None: every ``wide_every``-th step draws its whole batch as
            crops of this (larger) size from the samples whose grid holds it
            (:func:`wide_element`), so that a network trained mostly on small crops also learns
            from glaciers seen whole or nearly so. None: every step as :func:`element`.
        wide_every: the period of those steps (steps ``wide_every - 1``, ``2 wide_every - 1``, ...).
    """

    crop: Tuple[int, int]
    mirror: bool = True
    rotate: bool = True
    seed: int = 0
    speed_scaling: Optional[Tuple[float, float]] = None
    sliding_exponent: float = DEFAULT_PHYSICS.sliding_exponent
    wide_crop: Optional[Tuple[int, int]] = None
    wide_every: int = 4

    def __post_init__(self):
        if self.wide_crop is not None and int(self.wide_every) < 2:
            raise ValueError(f"wide_every must be >= 2. Received: {self.wide_every!r}")

    def is_wide_step(self, step: int) -> bool:
        """Whether optimizer step ``step`` (0-based) draws a batch of wide crops."""
        return self.wide_crop is not None and (int(step) + 1) % int(self.wide_every) == 0


def element(data: TrainingData, index: int, config: StreamConfig) -> Tuple[np.ndarray, np.ndarray]:
    """Element ``index`` of the infinite training stream: ``(fields (cy, cx, F), spacing (2,))``.

    A pure function of ``(data, index, config)``: epoch ``index // N`` visits the samples in a
    seeded permutation; the crop position and the augmentation come from
    ``default_rng([seed, 1, index])``.
    """
    n = len(data.samples)
    epoch, position = divmod(int(index), n)
    sample = data.samples[int(_permutation(n, config.seed, epoch)[position])]
    rng = np.random.default_rng([int(config.seed), 1, int(index)])
    return _crop_and_augment(data, sample, rng, config.crop, config)


def wide_pool(data: TrainingData, crop: Tuple[int, int]) -> Tuple[int, ...]:
    """The indices of the samples whose grid holds a ``crop`` (ny >= cy and nx >= cx)."""
    return tuple(i for i, s in enumerate(data.samples)
                 if s.shape[0] >= crop[0] and s.shape[1] >= crop[1])


def wide_element(data: TrainingData, index: int, config: StreamConfig,
                 pool: Optional[Sequence[int]] = None) -> Tuple[np.ndarray, np.ndarray]:
    """Element ``index`` of the stream of wide crops (``config.wide_crop``), as :func:`element`
    but over the samples of :func:`wide_pool` (``pool``, if computed already), with its own
    seeded permutations and random numbers."""
    if config.wide_crop is None:
        raise ValueError("wide_element needs config.wide_crop")
    pool = wide_pool(data, config.wide_crop) if pool is None else tuple(pool)
    if not pool:
        raise ValueError(f"no sample's grid holds the wide crop {config.wide_crop}")
    n = len(pool)
    epoch, position = divmod(int(index), n)
    order = np.random.default_rng([int(config.seed), 2, int(epoch)]).permutation(n)
    sample = data.samples[pool[int(order[position])]]
    rng = np.random.default_rng([int(config.seed), 3, int(index)])
    return _crop_and_augment(data, sample, rng, config.wide_crop, config)


def _crop_and_augment(data: TrainingData, sample, rng, crop: Tuple[int, int],
                      config: StreamConfig) -> Tuple[np.ndarray, np.ndarray]:
    """A random ``crop`` of ``sample``, mirrored, rotated and speed-scaled by ``rng``."""
    cy, cx = crop
    ny, nx = sample.shape
    y0 = int(rng.integers(0, ny - cy + 1))
    x0 = int(rng.integers(0, nx - cx + 1))
    fields = sample.fields[y0 : y0 + cy, x0 : x0 + cx, :]
    flips = rng.integers(0, 2, size=2)
    turns = int(rng.integers(0, 4))
    fields, spacing = transform(
        fields, (sample.dx, sample.dy), layout=data.layout,
        flip_x=bool(config.mirror and flips[0]), flip_y=bool(config.mirror and flips[1]),
        rotations=turns if (config.rotate and cy == cx) else 0,
    )
    if config.speed_scaling is not None:  # drawn last: the crops and mirrors stay as without it
        low, high = (float(v) for v in config.speed_scaling)
        factor = float(np.exp(rng.uniform(np.log(low), np.log(high))))
        fields = scale_speed(fields, factor, layout=data.layout,
                             sliding_exponent=config.sliding_exponent)
    return fields, np.asarray(spacing, dtype=np.float32)


def _permutation(n: int, seed: int, epoch: int) -> np.ndarray:
    """The seeded order of the samples in epoch ``epoch`` (O(N) per call; cheap)."""
    return np.random.default_rng([int(seed), 0, int(epoch)]).permutation(n)


def _crop_pair(value, name: str) -> Tuple[int, int]:
    """``(cy, cx)`` of a crop setting: an int (square) or ``[ny, nx]``."""
    if isinstance(value, (int, np.integer)):
        return (int(value), int(value))
    crop = tuple(int(c) for c in value)
    if len(crop) != 2:
        raise ValueError(f"{name} must be an int or [ny, nx]. Received: {value!r}")
    return crop


def resolve_crop(data: TrainingData, crop_size) -> Tuple[int, int]:
    """The crop ``(cy, cx)``: ``None`` = the smallest grid of the data, an int = square.

    Raises:
        InputError: the crop is larger than some grid, or smaller than 4 nodes.
    """
    smallest = data.min_shape
    if crop_size is None:
        return smallest
    crop = _crop_pair(crop_size, "crop_size")
    if min(crop) < 4:
        raise ValueError(f"crop_size must be at least 4 nodes. Received: crop_size={crop_size!r}")
    for s in data.samples:
        if s.shape[0] < crop[0] or s.shape[1] < crop[1]:
            raise InputError(f"{s.path}: its grid {s.shape[0]} x {s.shape[1]} is smaller than the "
                             f"crop size {crop[0]} x {crop[1]}; lower crop_size")
    return crop


def resolve_wide_crop(data: TrainingData, wide_crop_size, crop: Tuple[int, int]):
    """The wide crop ``(cy, cx)`` of ``wide_crop_size`` (None: None) and the number of samples
    whose grid holds it.

    Raises:
        ValueError: the wide crop is smaller than ``crop`` in a direction, or the same.
        InputError: no training sample's grid holds it.
    """
    if wide_crop_size is None:
        return None, 0
    wide = _crop_pair(wide_crop_size, "wide_crop_size")
    if wide[0] < crop[0] or wide[1] < crop[1] or wide == tuple(crop):
        raise ValueError(f"wide_crop_size {list(wide)} must be larger than the crop {list(crop)}")
    count = len(wide_pool(data, wide))
    if not count:
        raise InputError(f"no training glacier's grid holds the wide crop {wide[0]} x {wide[1]} "
                         f"(the largest grid is {max(s.shape for s in data.samples)}); lower "
                         "wide_crop_size")
    return wide, count


def make_dataset_fn(
    data: TrainingData,
    *,
    global_batch_size: int,
    stream: StreamConfig,
    start_step: int = 0,
    steps: Optional[int] = None,
):
    """A ``dataset_fn(input_context)`` for ``strategy.distribute_datasets_from_function``.

    Each input pipeline (worker) yields, per step, its share of the global batch (the elements
    ``step * global_batch_size + j``), batched per replica, from ``start_step`` up to ``steps``
    (or forever). With one pipeline and R replicas, the R consecutive per-replica batches of a step
    make up exactly the global batch. The wide steps of ``stream`` (:meth:`StreamConfig.is_wide_step`)
    yield the wide elements ``(step // wide_every) * global_batch_size + j`` instead; a batch
    then has the wide crop's shape (the dataset's spatial shape is left unknown).
    """
    import tensorflow as tf

    if global_batch_size < 1:
        raise ValueError(f"global_batch_size must be >= 1. Received: {global_batch_size!r}")
    n_fields = data.layout.channels
    cy, cx = stream.crop
    pool = None
    if stream.wide_crop is not None:
        pool = wide_pool(data, stream.wide_crop)
        if not pool:
            raise ValueError(f"no sample's grid holds the wide crop {stream.wide_crop}")
        cy = cx = None  # batches of two shapes

    def dataset_fn(context=None):
        pipelines = 1 if context is None else context.num_input_pipelines
        pipeline = 0 if context is None else context.input_pipeline_id
        per_replica = (global_batch_size if context is None
                       else context.get_per_replica_batch_size(global_batch_size))
        if global_batch_size % pipelines:
            raise ValueError(f"batch size {global_batch_size} is not divisible by the "
                             f"{pipelines} workers")
        share = global_batch_size // pipelines

        def generator() -> Iterator:
            step = int(start_step)
            while steps is None or step < steps:
                if stream.is_wide_step(step):
                    base = (step // stream.wide_every) * global_batch_size + pipeline * share
                    for j in range(share):
                        yield wide_element(data, base + j, stream, pool)
                else:
                    base = step * global_batch_size + pipeline * share
                    for j in range(share):
                        yield element(data, base + j, stream)
                step += 1

        ds = tf.data.Dataset.from_generator(
            generator,
            output_signature=(
                tf.TensorSpec((cy, cx, n_fields), tf.float32),
                tf.TensorSpec((2,), tf.float32),
            ),
        )
        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
        options.deterministic = True
        return ds.with_options(options).batch(per_replica, drop_remainder=True).prefetch(2)

    return dataset_fn


def validation_batches(data: TrainingData, *, batch_size: int):
    """Whole-grid validation batches ``(fields (b, ny, nx, F), spacing (b, 2))`` (numpy).

    Samples are grouped by grid shape and spacing so that each batch shares one ``(dx, dy)``.
    """
    groups: dict = {}
    for s in data.samples:
        key = (s.shape, round(s.dx, 6), round(s.dy, 6))
        groups.setdefault(key, []).append(s)
    for key in sorted(groups, key=str):
        members = groups[key]
        for i in range(0, len(members), max(1, int(batch_size))):
            chunk = members[i : i + batch_size]
            fields = np.stack([s.fields for s in chunk]).astype(np.float32)
            spacing = np.array([(s.dx, s.dy) for s in chunk], dtype=np.float32)
            yield fields, spacing
