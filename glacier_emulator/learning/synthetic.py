"""Diverse synthetic glacier geometries for training and testing the emulator.

Each geometry is drawn from a seeded generator, so a dataset is reproducible sample by sample:
sample ``i`` of seed ``s`` uses ``numpy.random.default_rng([s, i])``. Kinds:

* ``valley``: a curved valley (random slope, width, length, curvature) with steps and
  overdeepenings along its floor, filled by a glacier whose thickness grows from the terminus up;
* ``tributary``: a valley glacier with a side branch joining it;
* ``icecap``: a Vialov-like dome on rough terrain, possibly elongated;
* ``piedmont``: a valley glacier that spreads into a lobe on a plain.

The sliding coefficient is a smooth random field spanning near no-slip to fast sliding
(log-uniform), the rate factor a scalar (or a smooth field) around temperate values, and the grid
spacing is drawn from 50-200 m. Thickness ranges from 0 to about 1000 m; units m, yr, MPa.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from ..fields import Geometry

KINDS = ("valley", "tributary", "icecap", "piedmont")


@dataclass(frozen=True)
class SyntheticConfig:
    """Ranges of the synthetic geometries.

    Args:
        grid: nodes per side.
        dx_range: grid spacing range (m); ``dx`` fixes it.
        max_thickness_range: (smallest trunk, cap) of the glacier thickness (m).
        sliding_range: bounds of the Weertman coefficient c, MPa (m/yr)^-1/3 (large values mean
            little sliding); within them c is set from a drawn typical basal speed.
        rate_factor_range: range of A, MPa^-3 yr^-1.
        kinds: which geometry kinds to draw from (uniformly).
        driving_stress_range: range of the yield stress (MPa) that ties thickness to slope.
        uniform_sliding: a constant sliding coefficient for every glacier instead of the random
            field (e.g. the package default 0.0464: glaciers as a run without a ``slidingco``
            field sees them). The random draws are made either way, so the geometries of a
            seed do not depend on it.
    """

    grid: int = 64
    dx: Optional[float] = None
    dx_range: tuple = (50.0, 200.0)
    max_thickness_range: tuple = (30.0, 1000.0)
    sliding_range: tuple = (0.01, 3.0)
    rate_factor_range: tuple = (30.0, 120.0)
    kinds: Sequence[str] = KINDS
    driving_stress_range: tuple = (0.04, 0.15)
    uniform_sliding: Optional[float] = None

    def __post_init__(self):
        if self.grid < 8:
            raise ValueError(f"grid must be >= 8. Received: grid={self.grid!r}")
        unknown = set(self.kinds) - set(KINDS)
        if unknown or not self.kinds:
            raise ValueError(f"kinds must be a non-empty subset of {KINDS}. Received: {self.kinds!r}")


def smooth_noise(rng, shape, correlation_cells: float) -> np.ndarray:
    """Gaussian random field (zero mean, unit std) with the given correlation length in cells."""
    ny, nx = shape
    kx = np.fft.fftfreq(nx)[None, :]
    ky = np.fft.fftfreq(ny)[:, None]
    spectrum = np.exp(-0.5 * (kx**2 + ky**2) * (2 * np.pi * correlation_cells) ** 2)
    field = np.real(np.fft.ifft2(np.fft.fft2(rng.standard_normal(shape)) * spectrum))
    field = field - field.mean()
    std = field.std()
    return field / std if std > 0 else field


def _valley_frame(rng, X, Y, size):
    """Along-valley coordinate s (0 at the head) and signed distance d from a curved centreline."""
    direction = rng.uniform(0, 2 * np.pi)
    c, s_ = np.cos(direction), np.sin(direction)
    xc, yc = X - 0.5 * size, Y - 0.5 * size
    along = c * xc + s_ * yc + 0.5 * size
    across = -s_ * xc + c * yc
    amplitude = rng.uniform(0.0, 0.15) * size
    wavelength = rng.uniform(0.6, 1.5) * size
    across = across - amplitude * np.sin(2 * np.pi * along / wavelength + rng.uniform(0, 2 * np.pi))
    return along, across


RHO_G = 910.0 * 9.81 * 1e-6  # MPa per metre (only sets the scale of the synthetic thickness)


def _plastic(distance, tau):
    """Thickness of a perfectly plastic profile at ``distance`` (m) from the margin."""
    return np.sqrt(2.0 * tau * np.clip(distance, 0.0, None) / RHO_G)


def _glacier_in_valley(rng, along, across, *, start, length, width, thickness, tau):
    """A glacier filling a valley between ``start`` and ``start + length`` (along-valley m).

    The thickness is ``thickness`` in the trunk, tapers to zero at the head and the terminus
    with a plastic profile (yield stress ``tau``, MPa) and has an elliptical cross-section.
    """
    longitudinal = np.minimum.reduce([
        np.full(along.shape, thickness),
        _plastic(along - start, tau),
        _plastic(start + length - along, tau),
    ])
    t = np.clip((along - start) / length, 0.0, 1.0)
    w = width * (1.0 + 0.3 * np.sin(2 * np.pi * t * rng.uniform(0.5, 1.5)))
    transverse = np.clip(1 - (across / w) ** 2, 0.0, None)
    return longitudinal * np.sqrt(transverse)


def _valley_bed(rng, along, across, size, slope, width):
    steps = np.zeros_like(along)
    for _ in range(rng.integers(0, 4)):
        pos = rng.uniform(0.1, 0.9) * size
        height = rng.uniform(-60, 60)
        steps += height * np.tanh((along - pos) / rng.uniform(0.03, 0.08) / size)
    # valley walls rise to a few hundred metres with slopes of at most ~30 degrees
    height = min(rng.uniform(100.0, 600.0), 0.5 * width)
    walls = height * (1.0 - np.exp(-((across / width) ** 2)))
    return 2500.0 - slope * along + walls + steps


def _blur(field, sigma_cells: float):
    """Gaussian smoothing (periodic FFT; the geometries keep an ice-free rim, so no wrap-around)."""
    ny, nx = field.shape
    kx = np.fft.fftfreq(nx)[None, :]
    ky = np.fft.fftfreq(ny)[:, None]
    kernel = np.exp(-2 * (np.pi * sigma_cells) ** 2 * (kx**2 + ky**2))
    return np.real(np.fft.ifft2(np.fft.fft2(field) * kernel))


def random_geometry(rng: np.random.Generator, config: SyntheticConfig = SyntheticConfig(), kind=None) -> Geometry:
    """One random glacier geometry (see the module docstring for the kinds).

    Thickness and slope are tied by a driving stress drawn from 0.04-0.15 MPa by default (a yield stress
    ``tau``): trunks of valley glaciers have H ~ tau / (rho g alpha f) with a shape factor f, ice
    caps and lobes plastic profiles H = sqrt(2 tau d / (rho g)) at distance d from the margin.
    This keeps the geometries glaciological (speeds of metres to hundreds of metres per year).
    """
    n = config.grid
    dx = float(config.dx) if config.dx is not None else float(rng.uniform(*config.dx_range))
    kind = kind or str(rng.choice(list(config.kinds)))
    size = n * dx
    x = np.arange(n) * dx
    X, Y = np.meshgrid(x, x)
    hmin, hmax_cap = config.max_thickness_range
    tau = rng.uniform(*config.driving_stress_range)
    roughness = rng.uniform(5, 30) * smooth_noise(rng, (n, n), rng.uniform(2, 8))
    if kind in ("valley", "tributary", "piedmont"):
        along, across = _valley_frame(rng, X, Y, size)
        slope = rng.uniform(0.03, 0.25)
        shape_factor = rng.uniform(0.5, 0.9)
        width = rng.uniform(0.08, 0.25) * size
        trunk = float(np.clip(tau / (RHO_G * slope * shape_factor), 30.0, hmax_cap))
        bed = _valley_bed(rng, along, across, size, slope, width)
        length = rng.uniform(0.5, 0.95) * size
        start = rng.uniform(-0.1, 0.05) * size
        thickness = _glacier_in_valley(rng, along, across, start=start, length=length, width=width,
                                       thickness=trunk, tau=tau)
        if kind == "tributary":
            join = start + rng.uniform(0.3, 0.6) * length
            angle = rng.uniform(0.5, 1.2) * rng.choice([-1, 1])
            t_along = (along - join) * np.cos(angle) + across * np.sin(angle)
            t_across = -(along - join) * np.sin(angle) + across * np.cos(angle)
            t_width = width * rng.uniform(0.4, 0.8)
            t_len = rng.uniform(0.25, 0.5) * size
            branch = _glacier_in_valley(rng, -t_along, t_across, start=0.0, length=t_len,
                                        width=t_width, thickness=trunk * rng.uniform(0.5, 0.9), tau=tau)
            bed = np.minimum(bed, _valley_bed(rng, join - t_along, t_across, size, slope, t_width) + 50.0)
            thickness = np.maximum(thickness, branch)
        if kind == "piedmont":
            lobe_at = start + length
            r = np.hypot(along - lobe_at, across)
            radius = rng.uniform(0.12, 0.25) * size
            thickness = np.maximum(thickness, np.minimum(_plastic(radius - r, tau), trunk))
            # the valley opens onto a gently sloping plain (smooth transition, no cliff)
            plain = 2500.0 - slope * lobe_at - 0.01 * (along - lobe_at)
            blend = 1.0 / (1.0 + np.exp(-(along - lobe_at) / (0.05 * size)))
            bed = (1 - blend) * bed + blend * plain
    elif kind == "icecap":
        cx, cy = rng.uniform(0.4, 0.6, size=2) * size
        stretch = rng.uniform(0.6, 1.0)
        angle = rng.uniform(0, np.pi)
        xr = (X - cx) * np.cos(angle) + (Y - cy) * np.sin(angle)
        yr = (-(X - cx) * np.sin(angle) + (Y - cy) * np.cos(angle)) / stretch
        radius = rng.uniform(0.25, 0.45) * size
        thickness = _plastic(radius - np.hypot(xr, yr), tau)
        bed = 1500.0 + rng.uniform(50, 300) * smooth_noise(rng, (n, n), rng.uniform(4, 12))
    else:
        raise ValueError(f"unknown kind {kind!r}; expected one of {KINDS}")
    bed = bed + roughness
    thickness = np.minimum(thickness, hmax_cap)
    thickness = _blur(thickness, 0.7) * np.clip(1 + 0.05 * smooth_noise(rng, (n, n), 4), 0.8, 1.2)
    thickness[thickness < 1.0] = 0.0
    # keep a one-cell ice-free rim (finite domain)
    thickness[[0, -1], :] = 0.0
    thickness[:, [0, -1]] = 0.0
    # sliding: a smooth random field whose typical basal speed (at the median driving stress)
    # is drawn log-uniformly from about 0.1 to 300 m/yr, clipped to the configured range and so
    # that even the steepest ice slides at most ~3 km/yr
    sx, sy = Geometry(thickness=thickness, bed=bed, dx=dx).slopes()
    tau_d = RHO_G * thickness * np.hypot(sx, sy)
    ice = thickness > 0
    tau_med = float(np.median(tau_d[ice])) if ice.any() else 0.1
    tau_hi = float(np.percentile(tau_d[ice], 99)) if ice.any() else 0.1
    basal_speed = 10 ** rng.uniform(-1.0, np.log10(300.0))
    log_c = np.log10(tau_med / basal_speed ** (1 / 3)) + 0.3 * smooth_noise(rng, (n, n), rng.uniform(3, 12))
    lower = max(config.sliding_range[0], tau_hi / 3000.0 ** (1 / 3))
    sliding = np.clip(10**log_c, lower, max(lower, config.sliding_range[1]))
    if config.uniform_sliding is not None:
        sliding = np.full_like(thickness, float(config.uniform_sliding))
    rate = float(rng.uniform(*config.rate_factor_range))
    return Geometry(
        thickness=thickness, bed=bed, dx=dx, sliding_coefficient=sliding, rate_factor=rate,
        attrs={"kind": kind, "yield_stress_MPa": float(tau)},
    )


def sample_geometry(index: int, *, seed: int, config: SyntheticConfig = SyntheticConfig()) -> Geometry:
    """Sample ``index`` of the dataset with ``seed`` (independent of the other samples)."""
    return random_geometry(np.random.default_rng([int(seed), int(index)]), config)
