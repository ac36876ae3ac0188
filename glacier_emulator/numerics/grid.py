"""Finite-element operators on the regular grid (TensorFlow, differentiable, batch-friendly).

Fields live on the nodes of a regular grid (the cell centres of the NetCDF raster), with arrays
shaped ``(..., ny, nx)``. Between four neighbouring nodes lies one *element*; inside it a field is
the bilinear interpolant of its four corner values and is sampled at the 2 x 2 Gauss points

.. math:: \\xi, \\eta \\in \\{\\tfrac12 - \\tfrac{1}{2\\sqrt3},\\ \\tfrac12 + \\tfrac{1}{2\\sqrt3}\\}

which integrate bilinear products exactly and, unlike the one-point (midpoint) rule, leave no
checkerboard null mode. Every Gauss point carries the weight ``dx * dy / 4``.

Boundaries:

* ``periodic=False`` (a finite domain): the ``(ny-1) x (nx-1)`` elements between the nodes;
* ``periodic=True``: the grid wraps around, giving ``ny x nx`` elements (ISMIP-HOM).

Returned quadrature arrays have the Gauss-point axis third from last: ``(..., 4, ey, ex)``.
"""
from __future__ import annotations

import math

import numpy as np
import tensorflow as tf

GAUSS = (0.5 - 0.5 / math.sqrt(3.0), 0.5 + 0.5 / math.sqrt(3.0))
# (gx, gy) for the four Gauss points of an element
GAUSS_POINTS = tuple((gx, gy) for gy in GAUSS for gx in GAUSS)
N_GAUSS = 4


def close_periodic(field: tf.Tensor) -> tf.Tensor:
    """Append the first row and column at the end, so that wrapped elements exist."""
    field = tf.concat([field, field[..., :1, :]], axis=-2)
    return tf.concat([field, field[..., :, :1]], axis=-1)


def _corners(field: tf.Tensor, periodic: bool):
    if periodic:
        field = close_periodic(field)
    return (field[..., :-1, :-1], field[..., :-1, 1:], field[..., 1:, :-1], field[..., 1:, 1:])


def element_values(field: tf.Tensor, *, periodic: bool) -> tf.Tensor:
    """Bilinear interpolant at the Gauss points: ``(..., ny, nx) -> (..., 4, ey, ex)``."""
    a00, a10, a01, a11 = _corners(field, periodic)
    out = [
        (1 - gx) * (1 - gy) * a00 + gx * (1 - gy) * a10 + (1 - gx) * gy * a01 + gx * gy * a11
        for gx, gy in GAUSS_POINTS
    ]
    return tf.stack(out, axis=-3)


def element_gradient(field: tf.Tensor, *, dx: float, dy: float, periodic: bool):
    """x and y derivatives of the bilinear interpolant at the Gauss points.

    Returns two arrays ``(..., 4, ey, ex)``: d/dx and d/dy, in field units per metre.
    """
    a00, a10, a01, a11 = _corners(field, periodic)
    ddx = [((1 - gy) * (a10 - a00) + gy * (a11 - a01)) / dx for gx, gy in GAUSS_POINTS]
    ddy = [((1 - gx) * (a01 - a00) + gx * (a11 - a10)) / dy for gx, gy in GAUSS_POINTS]
    return tf.stack(ddx, axis=-3), tf.stack(ddy, axis=-3)


def element_weight(dx: float, dy: float) -> float:
    """Area carried by each Gauss point (m^2)."""
    return dx * dy / N_GAUSS


def node_gradient(field, *, dx: float, dy: float, periodic: bool = False):
    """Nodal x and y derivatives by central differences (one-sided at finite edges), numpy.

    Used for the surface-slope input channels of the emulator and for diagnostics.
    """
    field = np.asarray(field, dtype=float)
    if periodic:
        gx = (np.roll(field, -1, axis=-1) - np.roll(field, 1, axis=-1)) / (2 * dx)
        gy = (np.roll(field, -1, axis=-2) - np.roll(field, 1, axis=-2)) / (2 * dy)
        return gx, gy
    gy, gx = np.gradient(field, dy, dx, axis=(-2, -1))
    return gx, gy


def gaussian_kernel_1d(sigma: float) -> np.ndarray:
    """Normalised 1-D Gaussian weights of standard deviation ``sigma`` (cells), radius 3 sigma."""
    if sigma <= 0:
        return np.ones(1)
    radius = max(1, int(np.ceil(3.0 * sigma)))
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    w = np.exp(-0.5 * (x / sigma) ** 2)
    return w / w.sum()
