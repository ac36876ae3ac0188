r"""Training objectives: supervised error, the Blatter-Pattyn energy of the prediction, metrics.

All functions take the network output ``y`` ``(B, ny, nx, K)`` (m/yr; ``K = 2``: ubar, vbar, or
``K = 2 Nz``: u then v on the levels, bed to surface) and a batch of sample fields ``(B, ny, nx,
F)`` in the layout of :class:`glacier_emulator.learning.data.Layout`, and return one value per
example ``(B,)``, to be averaged over the *global* batch by the training loop.

Supervised loss (nodes with ice only; ``H > 0``):

* ``"relative"`` (default): :math:`\sum |y - y^*|^2 / (\sum |y^*|^2 + N_{ice} K u_0^2)` per
  glacier, with a floor speed :math:`u_0` (``velocity_floor``, 1 m/yr) so that a glacier at rest
  does not divide by zero. Every glacier counts the same whatever its speed.
* ``"mse"``: the mean of :math:`|y - y^*|^2 / U^2` over the ice nodes (``velocity_scale`` U).

With 3-D outputs and 3-D labels the error is taken on every level (``supervise_levels``), else on
the depth averages (the trapezoidal rule on the levels, as the solver computes them).

Physics loss: the Blatter-Pattyn energy :func:`glacier_emulator.physics.energy.blatter_pattyn_energy`
(the very function the reference solver minimises) of the predicted velocity, divided by the ice
area of the glacier and by ``energy_scale`` (MPa m yr^-1, default 10: about
:math:`\rho g H |\nabla s| \bar u` for H = 100 m, a slope of 0.1 and 100 m/yr), so that it is
O(1) and comparable between glaciers of different size. Its minimum is the solver's solution.
Per unit area a glacier flowing 10 times as fast still has a far larger energy and pulls harder
on the weights; ``energy_weighting: relative`` divides each glacier's gradient by its own |E|
instead (the value stays the per-area energy).

* A 3-D output is used as the velocity on the levels directly.
* A 2-channel output is expanded to the levels with a fixed shape function,
  :math:`u(\zeta) = \bar u\, [b + (1 - b)\, \tfrac{n+2}{n+1}(1 - (1-\zeta)^{n+1})]` (the
  shallow-ice profile without sliding for ``basal_fraction`` b = 0), normalised so that its
  discrete depth average is exactly 1. **A 2-channel model trained with the physics loss
  therefore assumes this vertical shape**: with b = 0 its basal velocity is zero and it cannot
  represent sliding. Use a 3-D output for physics-informed training of sliding glaciers.
* With ``physics.no_slip`` the basal level of a 3-D output is set to zero before the energy is
  taken (the solver fixes it there).

Metrics: the relative L2 error of (ubar, vbar) on ice, and the energy gap
:math:`(E(\text{net}) - E(\text{label})) / |E(\text{label})|` when 3-D labels exist (>= 0 up to the
solver's tolerance when the labels are the energy minimum).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable, Dict, Optional, Tuple

import numpy as np
import tensorflow as tf

from ..constants import Physics, VerticalDiscretisation
from ..physics.energy import blatter_pattyn_energy
from .data import LEVELS_START, SURFACE, UBAR, VBAR, Layout

SUPERVISED_KINDS = ("relative", "mse")
ENERGY_WEIGHTINGS = ("area", "relative")
MODES = ("supervised", "physics", "hybrid")


@dataclass(frozen=True)
class LossConfig:
    """Settings of the training objective (the ``loss:`` section of a training config).

    Args:
        supervised: ``"relative"`` or ``"mse"`` (see the module docstring).
        supervise_levels: compare all levels when both the output and the labels are 3-D.
        supervised_weight: weight of the supervised term (hybrid mode).
        physics_weight: weight of the normalised energy (hybrid mode).
        energy_scale: MPa m yr^-1; the energy per unit ice area is divided by it.
        velocity_floor: m/yr, the floor speed of the ``"relative"`` loss.
        velocity_scale: m/yr, the scale of the ``"mse"`` loss.
        basal_fraction: b in [0, 1) of the shape function that expands a 2-channel output to the
            levels for the energy (0: the no-sliding shallow-ice profile).
        energy_weighting: how the glaciers of a batch share the gradient of the physics term.
            ``"area"`` (default): each glacier's energy per unit ice area, so a fast glacier (a
            larger energy) pulls harder. ``"relative"``: each glacier's gradient is divided by
            the size of its own energy, |E| (taken as a constant), so every glacier counts the
            same whatever its speed, as with the ``"relative"`` supervised loss. The value (the
            logged ``physics``) is the per-area energy either way.
    """

    supervised: str = "relative"
    supervise_levels: bool = True
    supervised_weight: float = 1.0
    physics_weight: float = 1.0
    energy_scale: float = 10.0
    velocity_floor: float = 1.0
    velocity_scale: float = 100.0
    basal_fraction: float = 0.0
    energy_weighting: str = "area"

    def __post_init__(self):
        if self.supervised not in SUPERVISED_KINDS:
            raise ValueError(f"loss.supervised must be one of {SUPERVISED_KINDS}. "
                             f"Received: {self.supervised!r}")
        for name in ("supervised_weight", "physics_weight"):
            if not (np.isfinite(getattr(self, name)) and getattr(self, name) >= 0):
                raise ValueError(f"loss.{name} must be >= 0. Received: {getattr(self, name)!r}")
        for name in ("energy_scale", "velocity_floor", "velocity_scale"):
            if not (np.isfinite(getattr(self, name)) and getattr(self, name) > 0):
                raise ValueError(f"loss.{name} must be > 0. Received: {getattr(self, name)!r}")
        if self.energy_weighting not in ENERGY_WEIGHTINGS:
            raise ValueError(f"loss.energy_weighting must be one of {ENERGY_WEIGHTINGS}. "
                             f"Received: {self.energy_weighting!r}")
        if not 0.0 <= self.basal_fraction < 1.0:
            raise ValueError(f"loss.basal_fraction must be in [0, 1). Received: {self.basal_fraction!r}")

    @classmethod
    def from_dict(cls, values: Optional[dict]) -> "LossConfig":
        from ..constants import dataclass_from_mapping

        return dataclass_from_mapping(cls, values, what="unknown loss setting")

    def to_dict(self) -> dict:
        return asdict(self)


def shape_function(vertical: VerticalDiscretisation, *, glen_exponent: float,
                   basal_fraction: float = 0.0) -> np.ndarray:
    r"""Level weights ``f_k`` with ``u_k = ubar * f_k``, discrete depth average exactly 1.

    :math:`f(\zeta) = b + (1-b) \frac{n+2}{n+1} (1 - (1-\zeta)^{n+1})`, then divided by its
    trapezoidal depth average on the levels.
    """
    n = float(glen_exponent)
    zeta = vertical.zeta
    f = basal_fraction + (1 - basal_fraction) * (n + 2) / (n + 1) * (1 - (1 - zeta) ** (n + 1))
    return f / float(np.dot(vertical.depth_average_weights, f))


def output_levels(y, *, vertical: VerticalDiscretisation, physics: Physics,
                  basal_fraction: float = 0.0) -> Tuple[tf.Tensor, tf.Tensor]:
    """The network output as velocities on the levels, ``u, v`` each ``(B, Nz, ny, nx)`` m/yr.

    A 2-channel output is expanded with :func:`shape_function`; with ``physics.no_slip`` the basal
    level is zero.
    """
    nz = int(vertical.levels)
    k = y.shape[-1]
    if k == 2:
        f = tf.constant(shape_function(vertical, glen_exponent=physics.glen_exponent,
                                       basal_fraction=basal_fraction), y.dtype)[None, :, None, None]
        u = y[..., 0][:, None] * f
        v = y[..., 1][:, None] * f
    elif k == 2 * nz:
        u = tf.transpose(y[..., :nz], [0, 3, 1, 2])
        v = tf.transpose(y[..., nz:], [0, 3, 1, 2])
    else:
        raise ValueError(f"the output has {k} channels; expected 2 or 2 * Nz = {2 * nz}")
    if physics.no_slip:
        keep = tf.constant([0.0] + [1.0] * (nz - 1), y.dtype)[None, :, None, None]
        u, v = u * keep, v * keep
    return u, v


def depth_average(y, *, vertical: VerticalDiscretisation) -> tf.Tensor:
    """``(B, ny, nx, 2)`` [ubar, vbar] of an output (the output itself if it has 2 channels)."""
    if y.shape[-1] == 2:
        return y
    nz = int(vertical.levels)
    w = tf.constant(vertical.depth_average_weights, y.dtype)
    return tf.stack([tf.reduce_sum(y[..., :nz] * w, -1), tf.reduce_sum(y[..., nz:] * w, -1)], -1)


def label_levels(fields_, layout: Layout) -> Tuple[tf.Tensor, tf.Tensor]:
    """The 3-D labels ``u, v`` ``(B, Nz, ny, nx)`` of a batch of fields."""
    if not layout.has_levels:
        raise ValueError("the data has no 3-D labels")
    u = tf.transpose(fields_[..., layout.u_levels()], [0, 3, 1, 2])
    v = tf.transpose(fields_[..., layout.v_levels()], [0, 3, 1, 2])
    return u, v


def _ice(fields_):
    return tf.cast(fields_[..., 0] > 0, fields_.dtype)


def supervised_loss(y, fields_, *, layout: Layout, vertical: VerticalDiscretisation,
                    config: LossConfig) -> tf.Tensor:
    """Supervised error per example ``(B,)`` (dimensionless); see the module docstring."""
    if not layout.has_labels:
        raise ValueError("supervised loss needs labels (ubar, vbar) in the data")
    if y.shape[-1] > 2 and layout.has_levels and config.supervise_levels:
        if y.shape[-1] != 2 * layout.levels:
            raise ValueError(f"the model outputs {y.shape[-1] // 2} levels but the labels have "
                             f"{layout.levels}")
        pred = y
        target = fields_[..., LEVELS_START : LEVELS_START + 2 * layout.levels]
    else:
        pred = depth_average(y, vertical=vertical)
        target = fields_[..., UBAR : VBAR + 1]
    ice = _ice(fields_)[..., None]
    channels = float(pred.shape[-1])
    err = tf.reduce_sum(tf.square(pred - target) * ice, axis=[1, 2, 3])
    n_ice = tf.reduce_sum(ice, axis=[1, 2, 3])
    if config.supervised == "relative":
        ref = tf.reduce_sum(tf.square(target) * ice, axis=[1, 2, 3])
        # an example without ice (a training crop that missed the glacier) contributes 0, not 0/0
        return tf.math.divide_no_nan(err, ref + n_ice * channels * config.velocity_floor**2)
    return err / (tf.maximum(n_ice, 1.0) * channels * config.velocity_scale**2)


def make_energy_fn(*, physics: Physics, vertical: VerticalDiscretisation,
                   uniform_spacing: Optional[Tuple[float, float]] = None,
                   batch_shares_spacing: bool = False, jit_compile: bool = False) -> Callable:
    """``energy(u, v, fields, spacing) -> (B,)`` Blatter-Pattyn energy, MPa m^3 yr^-1.

    ``u, v`` are ``(B, Nz, ny, nx)``; ``fields`` supplies the thickness, surface, sliding
    coefficient and rate factor, ``spacing`` ``(B, 2)`` the grid spacing (m). With
    ``uniform_spacing`` the whole batch is evaluated at once with that constant (dx, dy); with
    ``batch_shares_spacing`` at once with the spacing of its first example; otherwise example by
    example, each with its own spacing (unrolled for a static batch size, else ``tf.map_fn``).
    ``jit_compile`` XLA-compiles the energy.
    """

    def one(u, v, f, dx, dy):
        return blatter_pattyn_energy(
            u, v, thickness=f[..., 0], surface=f[..., SURFACE], dx=dx, dy=dy,
            sliding_coefficient=f[..., 3], rate_factor=f[..., 4], physics=physics,
            vertical=vertical, periodic=False,
        )

    def energy(u, v, fields_, spacing):
        if uniform_spacing is not None:
            return one(u, v, fields_, float(uniform_spacing[0]), float(uniform_spacing[1]))
        if batch_shares_spacing:
            return one(u, v, fields_, spacing[0, 0], spacing[0, 1])
        batch = u.shape[0]
        if batch is not None:
            return tf.stack([
                one(u[i], v[i], fields_[i], spacing[i, 0], spacing[i, 1]) for i in range(batch)
            ])
        return tf.map_fn(
            lambda a: one(a[0], a[1], a[2], a[3][0], a[3][1]), (u, v, fields_, spacing),
            fn_output_signature=u.dtype,
        )

    return tf.function(energy, jit_compile=True) if jit_compile else energy


def ice_area(fields_, spacing) -> tf.Tensor:
    """Ice-covered area per example (m^2): ice nodes times dx dy, at least one cell."""
    n = tf.reduce_sum(_ice(fields_), axis=[1, 2])
    cell = spacing[:, 0] * spacing[:, 1]
    return tf.maximum(n, 1.0) * cell


@dataclass(frozen=True)
class Objective:
    """The training objective of one mode, callable on a batch.

    ``objective(y, fields, spacing)`` returns ``(total, parts)``: the per-example loss ``(B,)`` and
    a dict of per-example terms (``supervised``, ``physics`` = normalised energy) that make it up.
    """

    mode: str
    layout: Layout
    vertical: VerticalDiscretisation
    physics: Physics
    config: LossConfig
    energy: Optional[Callable] = None

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}. Received: mode={self.mode!r}")
        if self.mode in ("supervised", "hybrid") and not self.layout.has_labels:
            raise ValueError(f"{self.mode} training needs labels (ubar, vbar) in the data")

    def physics_term(self, y, fields_, spacing) -> tf.Tensor:
        """Normalised energy per example: E / (ice area * energy_scale), dimensionless.

        With ``energy_weighting: relative`` the value is the same but the gradient is that of
        E / |E| (|E| held constant): every glacier's pull is relative to its own energy.
        """
        u, v = output_levels(y, vertical=self.vertical, physics=self.physics,
                             basal_fraction=self.config.basal_fraction)
        energy = self.energy(u, v, fields_, spacing)
        value = self.normalise_energy(energy, fields_, spacing)
        if self.config.energy_weighting == "area":
            return value
        # value + (E - E) / |E| with the first E and |E| constants: the value of the per-area
        # energy, the gradient of E / |E|; the floor keeps an energy near zero from blowing it up
        fixed = tf.stop_gradient(energy)
        floor = tf.stop_gradient(ice_area(fields_, spacing) * self.config.energy_scale * 1e-3)
        return tf.stop_gradient(value) + (energy - fixed) / tf.maximum(tf.abs(fixed), floor)

    def normalise_energy(self, energy, fields_, spacing) -> tf.Tensor:
        """E (MPa m^3 yr^-1) -> E / (ice area * energy_scale), dimensionless."""
        return energy / (ice_area(fields_, spacing) * self.config.energy_scale)

    def combine(self, parts: Dict[str, tf.Tensor]) -> tf.Tensor:
        """The per-example loss of this mode from its terms (extra terms are ignored)."""
        if self.mode == "supervised":
            return parts["supervised"]
        if self.mode == "physics":
            return parts["physics"]
        return (self.config.supervised_weight * parts["supervised"]
                + self.config.physics_weight * parts["physics"])

    def __call__(self, y, fields_, spacing) -> Tuple[tf.Tensor, Dict[str, tf.Tensor]]:
        parts: Dict[str, tf.Tensor] = {}
        if self.mode in ("supervised", "hybrid"):
            parts["supervised"] = supervised_loss(y, fields_, layout=self.layout,
                                                  vertical=self.vertical, config=self.config)
        if self.mode in ("physics", "hybrid"):
            parts["physics"] = self.physics_term(y, fields_, spacing)
        return self.combine(parts), parts


def relative_l2_sums(y, fields_, *, vertical: VerticalDiscretisation) -> Tuple[tf.Tensor, tf.Tensor]:
    """Per example ``(sum |ubar - ubar*|^2, sum |ubar*|^2)`` over ice nodes, (m/yr)^2.

    The relative L2 error of a set is ``sqrt(sum of the first / sum of the second)``.
    """
    pred = depth_average(y, vertical=vertical)
    target = fields_[..., UBAR : VBAR + 1]
    ice = _ice(fields_)[..., None]
    return (tf.reduce_sum(tf.square(pred - target) * ice, axis=[1, 2, 3]),
            tf.reduce_sum(tf.square(target) * ice, axis=[1, 2, 3]))
