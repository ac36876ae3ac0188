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
        max_thickness_range: range of the largest thickness of a glacier (m).
        sliding_range: log-uniform range of the Weertman coefficient c, MPa (m/yr)^-1/3
            (large values mean little sliding).
        rate_factor_range: range of A, MPa^-3 yr^-1.
        kinds: which geometry kinds to draw from (uniformly).
    """

    grid: int = 64
    dx: Optional[float] = None
    dx_range: tuple = (50.0, 200.0)
    max_thickness_range: tuple = (120.0, 1000.0)
    sliding_range: tuple = (0.02, 2.0)
    rate_factor_range: tuple = (30.0, 120.0)
    kinds: Sequence[str] = KINDS

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


def _glacier_in_valley(rng, along, across, size, hmax, *, start, length, width):
    """Thickness of a glacier filling a valley between ``start`` and ``start + length``."""
    t = np.clip((along - start) / length, 0.0, 1.0)
    inside = (along >= start) & (along <= start + length)
    # thickest a bit below the head, zero at the terminus
    longitudinal = np.where(inside, np.sqrt(np.clip(1 - t, 0, 1)) * np.clip(3.0 * t + 0.35, 0, 1), 0)
    w = width * (1.0 + 0.3 * np.sin(2 * np.pi * t * rng.uniform(0.5, 1.5)))
    transverse = np.clip(1 - (across / w) ** 2, 0.0, None)
    return hmax * longitudinal * np.sqrt(transverse)


def _valley_bed(rng, along, across, size, slope, width):
    steps = np.zeros_like(along)
    for _ in range(rng.integers(0, 4)):
        pos = rng.uniform(0.1, 0.9) * size
        height = rng.uniform(-80, 80)
        steps += height * np.tanh((along - pos) / rng.uniform(0.02, 0.08) / size)
    return (
        2500.0
        - slope * along
        + 0.6 * width * (across / width) ** 2 * rng.uniform(0.3, 1.0) * 1.0
        + steps
    )


def random_geometry(rng: np.random.Generator, config: SyntheticConfig = SyntheticConfig(), kind=None) -> Geometry:
    """One random glacier geometry (see the module docstring for the kinds)."""
    n = config.grid
    dx = float(config.dx) if config.dx is not None else float(rng.uniform(*config.dx_range))
    kind = kind or str(rng.choice(list(config.kinds)))
    size = n * dx
    x = np.arange(n) * dx
    X, Y = np.meshgrid(x, x)
    hmax = rng.uniform(*config.max_thickness_range)
    # keep the thickness plausible for the domain: a 1000 m thick glacier needs ~10 km of ice
    hmax = min(hmax, 0.12 * size + 60.0)
    roughness = rng.uniform(5, 40) * smooth_noise(rng, (n, n), rng.uniform(2, 8))
    if kind in ("valley", "tributary", "piedmont"):
        along, across = _valley_frame(rng, X, Y, size)
        slope = rng.uniform(0.03, 0.25)
        width = rng.uniform(0.08, 0.25) * size
        bed = _valley_bed(rng, along, across, size, slope, width)
        length = rng.uniform(0.5, 0.95) * size
        start = rng.uniform(-0.1, 0.05) * size
        thickness = _glacier_in_valley(rng, along, across, size, hmax, start=start, length=length, width=width)
        if kind == "tributary":
            join = start + rng.uniform(0.3, 0.6) * length
            angle = rng.uniform(0.5, 1.2) * rng.choice([-1, 1])
            t_along = (along - join) * np.cos(angle) + across * np.sin(angle)
            t_across = -(along - join) * np.sin(angle) + across * np.cos(angle)
            t_width = width * rng.uniform(0.4, 0.8)
            t_len = rng.uniform(0.25, 0.5) * size
            branch = _glacier_in_valley(
                rng, -t_along, t_across, size, hmax * rng.uniform(0.4, 0.8), start=0.0,
                length=t_len, width=t_width,
            )
            bed = np.minimum(bed, _valley_bed(rng, join - t_along, t_across, size, slope, t_width) + 50.0)
            thickness = np.maximum(thickness, branch)
        if kind == "piedmont":
            lobe_at = start + length
            r = np.hypot(along - lobe_at, across)
            radius = rng.uniform(0.12, 0.25) * size
            lobe = 0.5 * hmax * np.sqrt(np.clip(1 - (r / radius) ** 2, 0, None))
            thickness = np.maximum(thickness, lobe)
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
        r = np.hypot(xr, yr) / radius
        thickness = hmax * np.clip(1 - r ** (4 / 3), 0, None) ** (3 / 8)
        bed = 1500.0 + rng.uniform(50, 300) * smooth_noise(rng, (n, n), rng.uniform(4, 12))
    else:
        raise ValueError(f"unknown kind {kind!r}; expected one of {KINDS}")
    bed = bed + roughness
    thickness = thickness * np.clip(1 + 0.1 * smooth_noise(rng, (n, n), 4), 0.5, 1.5)
    thickness[thickness < 1.0] = 0.0
    # keep a one-cell ice-free rim (finite domain)
    thickness[[0, -1], :] = 0.0
    thickness[:, [0, -1]] = 0.0
    log_c = np.log10(config.sliding_range)
    mean = rng.uniform(*log_c)
    sliding = 10 ** np.clip(mean + 0.4 * smooth_noise(rng, (n, n), rng.uniform(3, 12)), *log_c)
    rate = float(rng.uniform(*config.rate_factor_range))
    return Geometry(
        thickness=thickness, bed=bed, dx=dx, sliding_coefficient=sliding, rate_factor=rate,
        attrs={"kind": kind},
    )


def sample_geometry(index: int, *, seed: int, config: SyntheticConfig = SyntheticConfig()) -> Geometry:
    """Sample ``index`` of the dataset with ``seed`` (independent of the other samples)."""
    return random_geometry(np.random.default_rng([int(seed), int(index)]), config)
