"""Keras layers of the velocity emulator: padding, scalings, the ice mask and mirror symmetry.

Every layer here is registered with Keras (package ``glacier_emulator``) so that models holding
them load from ``.keras`` files under ``safe_mode=True`` once this module is imported; none is a
``Lambda``. They work on channels-last tensors ``(batch, ny, nx, channels)`` whose spatial size
may be unknown until call time, so one model serves every grid.

The layers, in the order a velocity is computed (see :func:`glacier_emulator.models.build_unet`):

* :class:`MirrorStack` -- stacks the input with its mirror images along the batch axis;
* :class:`InputNormalization` -- ``(x - offset) / scale`` per channel, constants in the config;
* :class:`PadToMultiple` / :class:`CropTo` -- pad the grid to a multiple of ``2**depth`` by
  symmetric (or reflect) extension, and crop the result back;
* :class:`MirrorAverage` -- maps each mirrored prediction back and averages them, which makes the
  model exactly equivariant under the mirror;
* :class:`GridTranspose` -- swaps the x and y axes and the x and y components (the model's
  ``"dihedral"`` mode evaluates the network on the glacier and on its transpose and averages);
* :class:`OutputScaling` -- multiplies by the velocity scale (m/yr);
* :class:`IceMask` -- multiplies by ``thickness > 0``: ice-free nodes get exactly zero velocity.
"""
from __future__ import annotations

from typing import Sequence

import keras
import numpy as np
import tensorflow as tf

from ..constants import DEFAULT_PHYSICS
from ..numerics.grid import gaussian_kernel_1d

PACKAGE = "glacier_emulator"

MIRROR_MODES = ("none", "x", "xy")
"""The modes of :class:`MirrorStack` / :class:`MirrorAverage`; the U-Net's ``symmetrise`` modes
(:data:`glacier_emulator.constants.SYMMETRISE_MODES`) add ``"dihedral"``, which is ``"xy"`` plus
the transpose (:class:`GridTranspose`)."""
PADDING_MODES = ("symmetric", "reflect")


def _as_float_tuple(values, name: str) -> tuple:
    try:
        out = tuple(float(v) for v in values)
    except TypeError as exc:
        raise ValueError(f"`{name}` must be a sequence of numbers. Received: {name}={values!r}") from exc
    if not all(np.isfinite(out)):
        raise ValueError(f"`{name}` must be finite. Received: {name}={values!r}")
    return out


def _as_index_tuple(values, name: str) -> tuple:
    out = tuple(int(v) for v in values)
    if any(v < 0 for v in out) or len(set(out)) != len(out):
        raise ValueError(f"`{name}` must be distinct channel indices >= 0. Received: {name}={values!r}")
    return out


def _padding(size, multiple: int):
    """(before, after) padding that brings ``size`` to a multiple of ``multiple``, split evenly."""
    total = (-size) % multiple
    before = total // 2
    return before, total - before


def _extension_indices(size, before, after, mode: str):
    """Indices into an axis of length ``size`` that extend it by mirror images.

    ``symmetric`` repeats the edge node (``c b a | a b c | c b a``), ``reflect`` does not
    (``d c b | a b c d | c b a``). Any amount of padding works, also more than ``size``: the
    indices follow the periodic mirror pattern.
    """
    index = tf.range(-before, size + after)
    if mode == "symmetric":
        period = 2 * size
        index = index % period
        return tf.where(index >= size, period - 1 - index, index)
    period = tf.maximum(2 * size - 2, 1)
    index = index % period
    return tf.where(index >= size, period - index, index)


@keras.saving.register_keras_serializable(package=PACKAGE)
class PadToMultiple(keras.layers.Layer):
    """Pads ``ny`` and ``nx`` up to the next multiple of ``multiple`` by mirror extension.

    The padding is split between the two sides (the extra node, if odd, goes after); use
    :class:`CropTo` with the same ``multiple`` to cut the result back to the original grid.

    Args:
        multiple: the spatial sizes after padding are multiples of this (``2**depth`` for a U-Net
            with ``depth`` poolings).
        mode: ``"symmetric"`` (repeat the edge node) or ``"reflect"`` (mirror about it).

    Example:
        >>> x = np.arange(5.0, dtype="float32").reshape(1, 1, 5, 1)
        >>> PadToMultiple(8)(x)[0, 0, :, 0].numpy().tolist()
        [0.0, 0.0, 1.0, 2.0, 3.0, 4.0, 4.0, 3.0]
    """

    def __init__(self, multiple: int, mode: str = "symmetric", **kwargs):
        super().__init__(**kwargs)
        if int(multiple) != multiple or multiple < 1:
            raise ValueError(f"`multiple` must be a positive integer. Received: multiple={multiple!r}")
        if mode not in PADDING_MODES:
            raise ValueError(f"`mode` must be one of {PADDING_MODES}. Received: mode={mode!r}")
        self.multiple = int(multiple)
        self.mode = mode

    def call(self, inputs):
        shape = tf.shape(inputs)
        out = inputs
        for axis in (1, 2):
            before, after = _padding(shape[axis], self.multiple)
            out = tf.gather(out, _extension_indices(shape[axis], before, after, self.mode), axis=axis)
        return out

    def compute_output_shape(self, input_shape):
        shape = list(input_shape)
        for axis in (1, 2):
            if shape[axis] is not None:
                shape[axis] = shape[axis] + sum(_padding(shape[axis], self.multiple))
        return tuple(shape)

    def get_config(self):
        config = super().get_config()
        config.update({"multiple": self.multiple, "mode": self.mode})
        return config


@keras.saving.register_keras_serializable(package=PACKAGE)
class CropTo(keras.layers.Layer):
    """Crops ``x`` back to the grid of ``reference``, undoing :class:`PadToMultiple`.

    Called on ``[x, reference]``: ``x`` is ``(batch, NY, NX, c)`` with ``NY, NX`` the padded
    sizes of ``reference``'s ``(ny, nx)``; returns ``(batch, ny, nx, c)``.

    Args:
        multiple: the ``multiple`` the matching :class:`PadToMultiple` used.
    """

    def __init__(self, multiple: int, **kwargs):
        super().__init__(**kwargs)
        if int(multiple) != multiple or multiple < 1:
            raise ValueError(f"`multiple` must be a positive integer. Received: multiple={multiple!r}")
        self.multiple = int(multiple)

    def call(self, inputs):
        x, reference = inputs
        shape = tf.shape(reference)
        ny, nx = shape[1], shape[2]
        top, _ = _padding(ny, self.multiple)
        left, _ = _padding(nx, self.multiple)
        return x[:, top : top + ny, left : left + nx, :]

    def compute_output_shape(self, input_shape):
        x_shape, ref_shape = input_shape
        return (x_shape[0], ref_shape[1], ref_shape[2], x_shape[3])

    def get_config(self):
        config = super().get_config()
        config.update({"multiple": self.multiple})
        return config


@keras.saving.register_keras_serializable(package=PACKAGE)
class InputNormalization(keras.layers.Layer):
    """Per-channel ``(x - offset) / scale`` with fixed constants (stored in the config, not trained).

    Channels listed in ``log_channels`` are first replaced by their natural logarithm (of at
    least ``log_floor``): for inputs spanning orders of magnitude, such as the sliding
    coefficient; their ``offset`` and ``scale`` then apply to the logarithm.

    Args:
        scale: one positive number per channel, in the channel's units.
        offset: one number per channel (default zeros).
        log_channels: indices of the channels to take the logarithm of (default none).
        log_floor: the smallest value whose logarithm is taken.

    Example:
        >>> layer = InputNormalization(scale=[500.0, 0.1], offset=[0.0, 0.0])
        >>> layer(np.array([[[[250.0, 0.05]]]], "float32")).numpy().ravel().tolist()
        [0.5, 0.5]
    """

    def __init__(self, scale: Sequence[float], offset: Sequence[float] | None = None,
                 log_channels: Sequence[int] = (), log_floor: float = 1e-6, **kwargs):
        super().__init__(**kwargs)
        scale = _as_float_tuple(scale, "scale")
        offset = tuple(0.0 for _ in scale) if offset is None else _as_float_tuple(offset, "offset")
        if not scale or any(s <= 0 for s in scale):
            raise ValueError(f"`scale` must be a non-empty list of positive numbers. Received: scale={scale!r}")
        if len(offset) != len(scale):
            raise ValueError(
                f"`offset` needs one value per channel ({len(scale)}). Received: offset={offset!r}"
            )
        self.scale = scale
        self.offset = offset
        self.log_channels = tuple(sorted({int(c) for c in log_channels}))
        if any(not 0 <= c < len(scale) for c in self.log_channels):
            raise ValueError(f"`log_channels` must index the {len(scale)} channels. "
                             f"Received: log_channels={tuple(log_channels)!r}")
        if not float(log_floor) > 0:
            raise ValueError(f"`log_floor` must be > 0. Received: log_floor={log_floor!r}")
        self.log_floor = float(log_floor)

    def build(self, input_shape):
        if input_shape[-1] is not None and input_shape[-1] != len(self.scale):
            raise ValueError(
                f"InputNormalization has {len(self.scale)} channel scalings but the input has "
                f"{input_shape[-1]} channels. Received: input_shape={input_shape}"
            )
        super().build(input_shape)

    def call(self, inputs):
        offset = tf.constant(self.offset, dtype=inputs.dtype)
        inverse_scale = tf.constant([1.0 / s for s in self.scale], dtype=inputs.dtype)
        if self.log_channels:
            is_log = tf.constant([i in self.log_channels for i in range(len(self.scale))])
            logs = tf.math.log(tf.maximum(inputs, tf.constant(self.log_floor, inputs.dtype)))
            inputs = tf.where(is_log, logs, inputs)
        return (inputs - offset) * inverse_scale

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update({"scale": list(self.scale), "offset": list(self.offset)})
        if self.log_channels:  # absent for linear-only layers: older model files stay identical
            config.update({"log_channels": list(self.log_channels), "log_floor": self.log_floor})
        return config


@keras.saving.register_keras_serializable(package=PACKAGE)
class OutputScaling(keras.layers.Layer):
    """Multiplies the network output by a fixed velocity scale (m/yr), giving m/yr.

    Args:
        scale: a positive number (m/yr), the typical speed of the training data.
    """

    def __init__(self, scale: float, **kwargs):
        super().__init__(**kwargs)
        if not (np.isfinite(scale) and scale > 0):
            raise ValueError(f"`scale` must be a positive number. Received: scale={scale!r}")
        self.scale = float(scale)

    def call(self, inputs):
        return inputs * tf.constant(self.scale, dtype=inputs.dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update({"scale": self.scale})
        return config


@keras.saving.register_keras_serializable(package=PACKAGE)
class IceMask(keras.layers.Layer):
    """Zeroes the velocity where there is no ice: ``velocity * (thickness > 0)``.

    Called on ``[velocity, inputs]`` where ``inputs`` are the raw (unscaled) model inputs holding
    the thickness in channel ``thickness_channel``. The result is exactly zero on ice-free nodes.

    Args:
        thickness_channel: index of the thickness channel in ``inputs``.
    """

    def __init__(self, thickness_channel: int = 0, **kwargs):
        super().__init__(**kwargs)
        if int(thickness_channel) != thickness_channel or thickness_channel < 0:
            raise ValueError(
                f"`thickness_channel` must be an integer >= 0. Received: "
                f"thickness_channel={thickness_channel!r}"
            )
        self.thickness_channel = int(thickness_channel)

    def call(self, inputs):
        velocity, raw = inputs
        c = self.thickness_channel
        ice = tf.cast(raw[..., c : c + 1] > 0, velocity.dtype)
        return velocity * ice

    def compute_output_shape(self, input_shape):
        return input_shape[0]

    def get_config(self):
        config = super().get_config()
        config.update({"thickness_channel": self.thickness_channel})
        return config


def _mirror_images(mode: str):
    """The mirror operations of ``mode`` as (flip_x, flip_y) pairs; the identity first."""
    if mode == "none":
        return ((False, False),)
    if mode == "x":
        return ((False, False), (True, False))
    return ((False, False), (True, False), (False, True), (True, True))


class _Mirror(keras.layers.Layer):
    """Shared part of :class:`MirrorStack` and :class:`MirrorAverage`."""

    def __init__(self, mode: str = "x", odd_x: Sequence[int] = (), odd_y: Sequence[int] = (), **kwargs):
        super().__init__(**kwargs)
        if mode not in MIRROR_MODES:
            raise ValueError(f"`mode` must be one of {MIRROR_MODES}. Received: mode={mode!r}")
        self.mode = mode
        self.odd_x = _as_index_tuple(odd_x, "odd_x")
        self.odd_y = _as_index_tuple(odd_y, "odd_y")

    def build(self, input_shape):
        channels = input_shape[-1]
        if channels is None:
            raise ValueError(f"{type(self).__name__} needs a known number of channels. Received: {input_shape}")
        for name in ("odd_x", "odd_y"):
            bad = [c for c in getattr(self, name) if c >= channels]
            if bad:
                raise ValueError(
                    f"`{name}` names channels {bad} but there are only {channels}. "
                    f"Received: input_shape={input_shape}"
                )
        self.channels = int(channels)
        super().build(input_shape)

    def _sign(self, odd, dtype):
        sign = np.ones(self.channels)
        sign[list(odd)] = -1.0
        return tf.constant(sign, dtype=dtype)

    def _apply(self, x, flip_x: bool, flip_y: bool):
        """The mirror: reverse the axis and negate the channels that are odd under it."""
        if flip_x:
            x = tf.reverse(x, axis=[2]) * self._sign(self.odd_x, x.dtype)
        if flip_y:
            x = tf.reverse(x, axis=[1]) * self._sign(self.odd_y, x.dtype)
        return x

    @property
    def copies(self) -> int:
        return len(_mirror_images(self.mode))

    def get_config(self):
        config = super().get_config()
        config.update({"mode": self.mode, "odd_x": list(self.odd_x), "odd_y": list(self.odd_y)})
        return config


@keras.saving.register_keras_serializable(package=PACKAGE)
class MirrorStack(_Mirror):
    r"""Stacks the input with its mirror images along the batch axis.

    For ``mode="x"`` the output is ``concat([x, M_x x])`` (batch ``2B``); for ``"xy"`` it is
    ``concat([x, M_x x, M_y x, M_x M_y x])`` (batch ``4B``); ``"none"`` passes ``x`` through.
    :math:`M_x` reverses the x axis and negates the channels ``odd_x`` (the x-component of the
    surface slope); :math:`M_y` likewise for y. Pair with :class:`MirrorAverage`.

    Args:
        mode: ``"none"``, ``"x"`` or ``"xy"``.
        odd_x: input channels that change sign under the x mirror.
        odd_y: input channels that change sign under the y mirror.
    """

    def call(self, inputs):
        images = [self._apply(inputs, fx, fy) for fx, fy in _mirror_images(self.mode)]
        return images[0] if len(images) == 1 else tf.concat(images, axis=0)

    def compute_output_shape(self, input_shape):
        batch = None if input_shape[0] is None else input_shape[0] * self.copies
        return (batch,) + tuple(input_shape[1:])


@keras.saving.register_keras_serializable(package=PACKAGE)
class MirrorAverage(_Mirror):
    r"""Maps the predictions for the mirror images back and averages them.

    With :class:`MirrorStack` around any network :math:`f` this computes

    .. math:: F(x) = \frac{1}{|G|} \sum_{M \in G} M f(M x),

    with :math:`G = \{I, M_x\}` (``"x"``) or :math:`\{I, M_x, M_y, M_x M_y\}` (``"xy"``), which
    satisfies :math:`F(M x) = M F(x)` exactly: mirroring the glacier in x mirrors the velocity
    field and flips the sign of u. ``odd_x`` are the output channels of u, ``odd_y`` those of v.

    Args:
        mode: ``"none"``, ``"x"`` or ``"xy"`` (as in the matching :class:`MirrorStack`).
        odd_x: output channels that change sign under the x mirror (u).
        odd_y: output channels that change sign under the y mirror (v).
    """

    def call(self, inputs):
        mirrors = _mirror_images(self.mode)
        if len(mirrors) == 1:
            return inputs
        parts = tf.split(inputs, len(mirrors), axis=0)
        total = tf.add_n([self._apply(p, fx, fy) for p, (fx, fy) in zip(parts, mirrors)])
        return total * tf.constant(1.0 / len(mirrors), dtype=inputs.dtype)

    def compute_output_shape(self, input_shape):
        batch = None if input_shape[0] is None else input_shape[0] // self.copies
        return (batch,) + tuple(input_shape[1:])


@keras.saving.register_keras_serializable(package=PACKAGE)
class GridTranspose(keras.layers.Layer):
    r"""The glacier seen with x and y swapped: transposes the grid and swaps vector components.

    :math:`T` maps ``(batch, ny, nx, c)`` to ``(batch, nx, ny, c)`` and exchanges the channels of
    each ``(x component, y component)`` pair in ``pairs`` (the surface slopes of an input, u and v
    of an output). :math:`T` is its own inverse. Together with the mirrors :math:`M_x, M_y` it
    generates all eight rotations and reflections of a grid with square cells (the dihedral
    group; a rotation by 90 degrees is :math:`T M_y`). Scalar channels, among them the grid
    spacing, are unchanged, so the cells must be square (the emulator requires ``dx == dy``).

    Args:
        pairs: ``(x channel, y channel)`` index pairs to exchange.
    """

    def __init__(self, pairs: Sequence[Sequence[int]] = (), **kwargs):
        super().__init__(**kwargs)
        pairs = [tuple(int(c) for c in p) for p in pairs]
        flat = [c for p in pairs for c in p]
        if any(len(p) != 2 for p in pairs) or any(c < 0 for c in flat) or len(set(flat)) != len(flat):
            raise ValueError(f"`pairs` must be (x, y) pairs of distinct channel indices >= 0. Received: pairs={pairs!r}")
        self.pairs = pairs

    def build(self, input_shape):
        channels = input_shape[-1]
        if channels is None:
            raise ValueError(f"GridTranspose needs a known number of channels. Received: {input_shape}")
        order = list(range(int(channels)))
        for a, b in self.pairs:
            if max(a, b) >= channels:
                raise ValueError(f"`pairs` name channel {max(a, b)} but there are only {channels}.")
            order[a], order[b] = b, a
        self.order = order
        super().build(input_shape)

    def call(self, inputs):
        x = tf.transpose(inputs, perm=[0, 2, 1, 3])
        return tf.gather(x, self.order, axis=-1) if self.pairs else x

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[2], input_shape[1], input_shape[3])

    def get_config(self):
        config = super().get_config()
        config.update({"pairs": [list(p) for p in self.pairs]})
        return config


@keras.saving.register_keras_serializable(package=PACKAGE)
class LocalFlowPrior(keras.layers.Layer):
    r"""A shallow-ice + Weertman estimate of the flow from the raw inputs: a prior for the U-Net.

    From the raw channels ``[H, s_x, s_y, c, (A)]`` it forms the driving stress vector smoothed
    over ``smoothing`` cells, :math:`\boldsymbol\tau = \rho g\, G_\sigma * (H \nabla s)` (MPa),
    and the local speed estimate

    .. math:: u_{est} = \frac{2A}{n+2} |\tau|^n H + (|\tau| / c)^{1/m}

    (depth-averaged deformation plus Weertman sliding). It returns two things:

    * ``features`` ``(B, ny, nx, 2)``: the estimated velocity vector, pointing down the smoothed
      surface slope, divided by ``scale`` (zero off ice);
    * ``scale`` ``(B, 1, 1, 1)``: the RMS of :math:`u_{est}` over the ice of each glacier (m/yr),
      plus ``floor``.

    The U-Net sees the features as extra input channels and its output is multiplied by the
    scale, so the network predicts the velocity *in units of the glacier's own shallow-ice speed*.
    The speeds of the training glaciers span three orders of magnitude (RMS 1.8-3200 m/yr over
    the 211 glaciers of the default recipe, log-std 1.44); divided by this scale the log-std is
    0.46, which a network with a fixed output scale would otherwise have to learn.

    The computation is local and mirror-equivariant (the Gaussian is symmetric), so it can sit
    after :class:`MirrorStack`.

    Args:
        smoothing: standard deviation of the Gaussian smoothing of the driving stress (cells).
        rho_g: ice density times gravity (MPa/m).
        glen_exponent: n.
        sliding_exponent: m of the Weertman law.
        rate_factor: A (MPa^-3 yr^-1) used when the input has no rate-factor channel.
        (The physical constants default to the package's physics:
        ``glacier_emulator.physics.sia.local_flow_constants``.)
        floor: added to the scale (m/yr), so ice with no driving stress gives a finite result.
    """

    def __init__(self, smoothing: float = 2.0, rho_g: float = DEFAULT_PHYSICS.rho_g,
                 glen_exponent: float = DEFAULT_PHYSICS.glen_exponent,
                 sliding_exponent: float = DEFAULT_PHYSICS.sliding_exponent,
                 rate_factor: float = DEFAULT_PHYSICS.rate_factor, floor: float = 0.1, **kwargs):
        super().__init__(**kwargs)
        values = dict(smoothing=smoothing, rho_g=rho_g, glen_exponent=glen_exponent,
                      sliding_exponent=sliding_exponent, rate_factor=rate_factor, floor=floor)
        for key, value in values.items():
            ok = np.isfinite(value) and (value >= 0 if key == "smoothing" else value > 0)
            if not ok:
                raise ValueError(f"`{key}` must be a {'non-negative' if key == 'smoothing' else 'positive'} "
                                 f"number. Received: {key}={value!r}")
        self.smoothing = float(smoothing)
        self.rho_g = float(rho_g)
        self.glen_exponent = float(glen_exponent)
        self.sliding_exponent = float(sliding_exponent)
        self.rate_factor = float(rate_factor)
        self.floor = float(floor)

    def _smooth(self, x):
        w = gaussian_kernel_1d(self.smoothing)
        if w.size == 1:
            return x
        channels = int(x.shape[-1])
        k = tf.constant(np.outer(w, w)[:, :, None, None] * np.ones((1, 1, channels, 1)), x.dtype)
        return tf.nn.depthwise_conv2d(x, k, strides=[1, 1, 1, 1], padding="SAME")

    def call(self, raw):
        dtype = raw.dtype
        h = raw[..., 0:1]
        ice = tf.cast(h > 0, dtype)
        stress = self._smooth(h * raw[..., 1:3]) * tf.constant(self.rho_g, dtype)
        magnitude = tf.sqrt(tf.reduce_sum(stress**2, axis=-1, keepdims=True) + tf.constant(1e-20, dtype))
        c = tf.maximum(raw[..., 3:4], tf.constant(1e-6, dtype))
        a = raw[..., 4:5] if raw.shape[-1] is not None and raw.shape[-1] >= 5 else tf.constant(self.rate_factor, dtype)
        n = tf.constant(self.glen_exponent, dtype)
        speed = (2.0 * a / (n + 2.0) * magnitude**n * h
                 + (magnitude / c) ** tf.constant(1.0 / self.sliding_exponent, dtype)) * ice
        count = tf.maximum(tf.reduce_sum(ice, axis=[1, 2, 3], keepdims=True), tf.constant(1.0, dtype))
        scale = tf.sqrt(tf.reduce_sum(speed**2, axis=[1, 2, 3], keepdims=True) / count)
        scale = scale + tf.constant(self.floor, dtype)
        features = -stress / magnitude * speed / scale
        return features, scale

    def compute_output_shape(self, input_shape):
        return (tuple(input_shape[:3]) + (2,), (input_shape[0], 1, 1, 1))

    def get_config(self):
        config = super().get_config()
        config.update({"smoothing": self.smoothing, "rho_g": self.rho_g,
                       "glen_exponent": self.glen_exponent, "sliding_exponent": self.sliding_exponent,
                       "rate_factor": self.rate_factor, "floor": self.floor})
        return config


@keras.saving.register_keras_serializable(package=PACKAGE)
class ScaleBy(keras.layers.Layer):
    """Multiplies ``x`` by a per-glacier ``scale`` ``(B, 1, 1, 1)``: called on ``[x, scale]``."""

    def call(self, inputs):
        x, scale = inputs
        return x * scale

    def compute_output_shape(self, input_shape):
        return input_shape[0]
