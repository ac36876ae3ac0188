r"""The U-Net that maps a glacier's geometry to its velocity.

Inputs are channels-last ``(batch, ny, nx, C)`` in physical units, in the order of
:data:`INPUT_CHANNELS` (the first ``in_channels`` of them):

====  =======================  ======================  =========================
 #    name                     units                   default scale (offset 0)
====  =======================  ======================  =========================
 0    ``thickness``            m                       500
 1    ``surface_slope_x``      1                       0.1
 2    ``surface_slope_y``      1                       0.1
 3    ``sliding_coefficient``  MPa m-1/3 year1/3       0.05
 4    ``rate_factor``          MPa-3 year-1            100   (``in_channels >= 5``)
 5    ``grid_spacing``         m                       100   (``in_channels == 6``)
====  =======================  ======================  =========================

Outputs are ``(batch, ny, nx, out_channels)`` in m/yr: ``[ubar, vbar]`` for ``out_channels=2``,
or ``[u_0 .. u_{Nz-1}, v_0 .. v_{Nz-1}]`` on the solver's ``Nz`` levels (bed to surface) for
``out_channels=2*Nz``.

Inside the model (all registered layers, no ``Lambda``):

.. code-block:: text

    inputs ─▶ MirrorStack ─▶ InputNormalization ─▶ PadToMultiple(2**depth)
           ─▶ encoder (depth x [blocks_per_level convs, 2x2 max-pool]) ─▶ bottleneck
           ─▶ decoder (depth x [2x upsample, concat skip, blocks_per_level convs])
           ─▶ CropTo ─▶ 1x1 conv ─▶ MirrorAverage ─▶ OutputScaling(velocity_scale) ─▶ IceMask

(``symmetrise="dihedral"``: the part before ``OutputScaling`` also runs on the transposed
input, and the transposed-back result is averaged in.)

With ``prior=...`` a :class:`~.layers.LocalFlowPrior` computes a local shallow-ice + Weertman
velocity estimate from the raw (mirrored) inputs: its two channels, in units of its RMS over the
glacier, join the normalised inputs, and the 1x1 conv's output is multiplied by that RMS
(``ScaleBy``) before the mirror average.

Mirror symmetry is exact by construction: with ``symmetrise="x"`` the model computes
:math:`F(x) = \tfrac12 (f(x) + M_x f(M_x x))`, where :math:`M_x` reverses the x axis and negates
the x-slope input and the u outputs, so mirroring a glacier in x mirrors its velocity and flips the
sign of u, to round-off. ``"xy"`` also symmetrises y (four evaluations); ``"dihedral"`` adds the
transpose :math:`T` (:class:`~.layers.GridTranspose`: x and y swapped), :math:`F(x) = \tfrac12
(f_{xy}(x) + T f_{xy}(T x))`, which makes the model commute with all eight rotations and mirrors
of the grid (eight evaluations); ``"none"`` turns it off. The layers (and weights) are the same
in every mode (:meth:`GlacierUNet.with_symmetrise`), the transposed glacier goes through the same
layers as a second tensor. Training uses ``"x"`` with random mirrors and rotations of the crops;
averaging over more images at prediction time then removes the network's residual asymmetry,
which is part of its error: for ``velocity3d-prior`` 1.2 the held-out error fell from 0.139 to
0.119 (median) with ``"dihedral"``, for 1.3 from 0.110 to 0.088, for 1.4 from 0.097 to 0.082,
at 2-3x the inference time of ``"x"`` on a 2-core CPU (its model card, training/runs/notes.md).
"""
from __future__ import annotations

from typing import Optional, Sequence

import keras

from ..constants import SYMMETRISE_MODES, UNITS
from .layers import (
    CropTo,
    GridTranspose,
    IceMask,
    InputNormalization,
    LocalFlowPrior,
    MirrorAverage,
    MirrorStack,
    OutputScaling,
    PadToMultiple,
    ScaleBy,
)

INPUT_CHANNELS = (
    "thickness",
    "surface_slope_x",
    "surface_slope_y",
    "sliding_coefficient",
    "rate_factor",
    "grid_spacing",
)
"""Canonical order of the input channels; a model takes the first ``in_channels`` of them."""

INPUT_UNITS = {
    "thickness": UNITS["length"],
    "surface_slope_x": UNITS["slope"],
    "surface_slope_y": UNITS["slope"],
    "sliding_coefficient": UNITS["sliding_coefficient"],
    "rate_factor": UNITS["rate_factor"],
    "grid_spacing": UNITS["length"],
}

DEFAULT_INPUT_SCALE = {
    "thickness": 500.0,
    "surface_slope_x": 0.1,
    "surface_slope_y": 0.1,
    "sliding_coefficient": 0.05,
    "rate_factor": 100.0,
    "grid_spacing": 100.0,
}

ACTIVATIONS = ("gelu", "relu", "leaky_relu", "silu", "elu", "tanh")


def input_names(in_channels: int) -> tuple:
    """Names of the input channels of a model with ``in_channels`` inputs (4, 5 or 6)."""
    if in_channels not in (4, 5, 6):
        raise ValueError(
            "`in_channels` must be 4 (thickness, slope x, slope y, sliding coefficient), 5 (+ rate "
            f"factor) or 6 (+ grid spacing). Received: in_channels={in_channels!r}"
        )
    return INPUT_CHANNELS[:in_channels]


def output_names(out_channels: int) -> tuple:
    """``("ubar", "vbar")`` or ``("u_0", ..., "u_{Nz-1}", "v_0", ..., "v_{Nz-1}")``."""
    if out_channels == 2:
        return ("ubar", "vbar")
    nz = out_channels // 2
    return tuple(f"u_{k}" for k in range(nz)) + tuple(f"v_{k}" for k in range(nz))


@keras.saving.register_keras_serializable(package="glacier_emulator")
class GlacierUNet(keras.Model):
    """U-Net emulator of the Blatter-Pattyn velocity, exactly mirror-equivariant, any grid size.

    Args:
        in_channels: 4 (thickness, surface slope x and y, sliding coefficient), 5 (+ rate factor)
            or 6 (+ grid spacing); see the module docstring for order and units.
        out_channels: 2 (depth-averaged ``ubar, vbar``) or ``2 * Nz`` (u then v on ``Nz`` levels).
        depth: number of 2x2 poolings; the grid is padded to a multiple of ``2**depth`` inside.
        filters: convolution filters at the finest level; doubled at each coarser level.
        kernel_size: odd size of the square convolution kernels.
        activation: activation of the hidden convolutions (one of :data:`ACTIVATIONS`).
        blocks_per_level: convolutions per level in the encoder and in the decoder.
        symmetrise: ``"x"`` (default), ``"xy"``, ``"dihedral"`` or ``"none"``: which symmetries
            of the grid are made exact by averaging over the transformed images (cost x2, x4, x8,
            x1); ``"dihedral"`` adds the transpose to both mirrors: all eight rotations and
            mirrors. The weights do not depend on it (:meth:`with_symmetrise`).
        input_scale: per-channel scale of the inputs, in their units (default: typical values).
        input_offset: per-channel offset of the inputs (default zeros).
        velocity_scale: the network's output is multiplied by this (m/yr).
        padding_mode: ``"symmetric"`` or ``"reflect"`` extension of the grid before the U-Net.
        log_inputs: names of inputs the network sees as logarithms (then ``input_offset`` and
            ``input_scale`` apply to the logarithm), e.g. ``["sliding_coefficient"]``, which
            spans orders of magnitude and enters the sliding speed as c^(-1/m).
        prior: ``None`` (default), or the arguments of :class:`~.layers.LocalFlowPrior`
            (``smoothing`` in cells and the physical constants ``rho_g``, ``glen_exponent``,
            ``sliding_exponent``, ``rate_factor``): the network then also sees the local
            shallow-ice + Weertman velocity estimate (two channels, in units of its RMS over the
            glacier) and its output is multiplied by that RMS, i.e. it predicts the velocity in
            units of the glacier's own shallow-ice speed (``velocity_scale`` then multiplies a
            dimensionless number; use 1).
        **kwargs: passed to :class:`keras.Model` (``name``, ``dtype``, ...).

    Example:
        >>> import numpy as np
        >>> model = GlacierUNet(filters=8, depth=2)
        >>> x = np.zeros((1, 37, 53, 4), "float32"); x[..., 0] = 100.0; x[..., 1] = 0.05
        >>> model(x).shape
        TensorShape([1, 37, 53, 2])
    """

    def __init__(
        self,
        *,
        in_channels: int = 4,
        out_channels: int = 2,
        depth: int = 4,
        filters: int = 32,
        kernel_size: int = 3,
        activation: str = "gelu",
        blocks_per_level: int = 2,
        symmetrise: str = "x",
        input_scale: Optional[Sequence[float]] = None,
        input_offset: Optional[Sequence[float]] = None,
        velocity_scale: float = 100.0,
        padding_mode: str = "symmetric",
        log_inputs: Sequence[str] = (),
        prior: Optional[dict] = None,
        **kwargs,
    ):
        names = input_names(in_channels)
        if int(out_channels) != out_channels or out_channels < 2 or out_channels % 2:
            raise ValueError(
                "`out_channels` must be 2 (ubar, vbar) or 2 * Nz (u and v on Nz levels). "
                f"Received: out_channels={out_channels!r}"
            )
        if int(depth) != depth or not 0 <= depth <= 8:
            raise ValueError(f"`depth` must be an integer in [0, 8]. Received: depth={depth!r}")
        if int(filters) != filters or filters < 1:
            raise ValueError(f"`filters` must be a positive integer. Received: filters={filters!r}")
        if int(kernel_size) != kernel_size or kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(
                f"`kernel_size` must be a positive odd integer. Received: kernel_size={kernel_size!r}"
            )
        if activation not in ACTIVATIONS:
            raise ValueError(f"`activation` must be one of {ACTIVATIONS}. Received: activation={activation!r}")
        if int(blocks_per_level) != blocks_per_level or blocks_per_level < 1:
            raise ValueError(
                f"`blocks_per_level` must be a positive integer. Received: blocks_per_level={blocks_per_level!r}"
            )
        if symmetrise not in SYMMETRISE_MODES:
            raise ValueError(
                f"`symmetrise` must be one of {SYMMETRISE_MODES}. Received: symmetrise={symmetrise!r}"
            )
        scale = [DEFAULT_INPUT_SCALE[n] for n in names] if input_scale is None else list(input_scale)
        offset = [0.0] * len(names) if input_offset is None else list(input_offset)
        for arg, values in (("input_scale", scale), ("input_offset", offset)):
            if len(values) != len(names):
                raise ValueError(
                    f"`{arg}` needs one value per input channel {names}. Received: {arg}={values!r}"
                )
        in_channels, out_channels, depth, filters = int(in_channels), int(out_channels), int(depth), int(filters)
        kernel_size, blocks_per_level = int(kernel_size), int(blocks_per_level)

        # === Layers (created once: "dihedral" calls the network on two tensors) ===
        inputs = keras.Input(shape=(None, None, in_channels), name="geometry")
        half = out_channels // 2
        mirrors = "xy" if symmetrise == "dihedral" else symmetrise
        log_inputs = tuple(log_inputs or ())
        unknown = [n for n in log_inputs if n not in names]
        if unknown:
            raise ValueError(f"`log_inputs` must name input channels {names}. Received: {list(log_inputs)!r}")
        prior = None if prior is None else dict(prior)
        mirror_stack = MirrorStack(mode=mirrors, odd_x=[1], odd_y=[2], name="mirror_stack")
        normalise = InputNormalization(scale=scale, offset=offset, name="input_normalization",
                                       log_channels=[names.index(n) for n in log_inputs])
        if prior is not None:
            flow_prior = LocalFlowPrior(**prior, name="flow_prior")
            prior_concat = keras.layers.Concatenate(name="prior_concat")
            prior_scaling = ScaleBy(name="prior_scaling")
        pad = PadToMultiple(2**depth, mode=padding_mode, name="pad")

        def conv(width, name):
            return keras.layers.Conv2D(width, kernel_size, padding="same", activation=activation, name=name)

        down = [[conv(filters * 2**level, f"down{level}_conv{block}") for block in range(blocks_per_level)]
                for level in range(depth)]
        pools = [keras.layers.MaxPooling2D(2, name=f"down{level}_pool") for level in range(depth)]
        bottom = [conv(filters * 2**depth, f"bottom_conv{block}") for block in range(blocks_per_level)]
        up = {level: (keras.layers.UpSampling2D(2, interpolation="nearest", name=f"up{level}_upsample"),
                      keras.layers.Concatenate(name=f"up{level}_concat"),
                      [conv(filters * 2**level, f"up{level}_conv{block}") for block in range(blocks_per_level)])
              for level in reversed(range(depth))}
        crop = CropTo(2**depth, name="crop")
        head = keras.layers.Conv2D(out_channels, 1, name="velocity_head")
        mirror_average = MirrorAverage(
            mode=mirrors, odd_x=list(range(half)), odd_y=list(range(half, out_channels)),
            name="mirror_average",
        )

        def network(geometry):
            """The mirror-averaged U-Net on one input tensor."""
            x = stacked = mirror_stack(geometry)
            x = normalise(x)
            if prior is not None:
                features, prior_scale = flow_prior(stacked)
                x = prior_concat([x, features])
            x = pad(x)
            skips = []
            for level in range(depth):
                for layer in down[level]:
                    x = layer(x)
                skips.append(x)
                x = pools[level](x)
            for layer in bottom:
                x = layer(x)
            for level in reversed(range(depth)):
                upsample, concat, convs = up[level]
                x = concat([upsample(x), skips[level]])
                for layer in convs:
                    x = layer(x)
            x = head(crop([x, stacked]))
            if prior is not None:
                x = prior_scaling([x, prior_scale])
            return mirror_average(x)

        # === Functional model ===
        x = network(inputs)
        if symmetrise == "dihedral":
            # F(x) = (f(x) + T f(T x)) / 2 with f the xy-mirror-averaged network
            transposed = GridTranspose(pairs=[(1, 2)], name="transpose_geometry")(inputs)
            back = GridTranspose(pairs=[(k, half + k) for k in range(half)], name="transpose_velocity")(
                network(transposed))
            x = keras.layers.Average(name="transpose_average")([x, back])
        x = OutputScaling(velocity_scale, name="velocity_scaling")(x)
        outputs = IceMask(thickness_channel=0, name="ice_mask")([x, inputs])
        kwargs.setdefault("name", "glacier_unet")
        super().__init__(inputs=inputs, outputs=outputs, **kwargs)

        # === Config ===
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.depth = depth
        self.filters = filters
        self.kernel_size = kernel_size
        self.activation = activation
        self.blocks_per_level = blocks_per_level
        self.symmetrise = symmetrise
        self.input_scale = [float(s) for s in scale]
        self.input_offset = [float(o) for o in offset]
        self.velocity_scale = float(velocity_scale)
        self.padding_mode = padding_mode
        self.log_inputs = log_inputs
        self.prior = prior

    @property
    def input_channel_names(self) -> tuple:
        """Names of the input channels, in order."""
        return input_names(self.in_channels)

    @property
    def output_channel_names(self) -> tuple:
        """Names of the output channels, in order."""
        return output_names(self.out_channels)

    def get_config(self):
        return {
            "name": self.name,
            "trainable": self.trainable,
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
            "depth": self.depth,
            "filters": self.filters,
            "kernel_size": self.kernel_size,
            "activation": self.activation,
            "blocks_per_level": self.blocks_per_level,
            "symmetrise": self.symmetrise,
            "input_scale": list(self.input_scale),
            "input_offset": list(self.input_offset),
            "velocity_scale": self.velocity_scale,
            "padding_mode": self.padding_mode,
            **({"log_inputs": list(self.log_inputs)} if self.log_inputs else {}),
            **({"prior": dict(self.prior)} if self.prior is not None else {}),
        }

    def constructor_arguments(self) -> dict:
        """The keyword arguments that build this architecture again (``GlacierUNet(**args)``)."""
        return {k: v for k, v in self.get_config().items() if k not in ("name", "trainable")}

    def with_symmetrise(self, symmetrise: str) -> "GlacierUNet":
        """The same network (same weights, copied) averaged over another set of grid symmetries.

        The weights do not depend on ``symmetrise``, only the number of transformed images the
        network is evaluated on: a model trained with ``"x"`` can predict with ``"dihedral"``
        (more accurate when it was trained with mirrors and rotations, eight evaluations instead
        of two), and a ``"dihedral"`` model can be made faster with ``"x"``.
        """
        config = self.get_config()
        config["symmetrise"] = symmetrise
        model = type(self).from_config(config)
        model.set_weights(self.get_weights())
        return model

    @classmethod
    def from_config(cls, config, custom_objects=None):
        return cls(**config)


def build_unet(**kwargs) -> GlacierUNet:
    """Build a :class:`GlacierUNet`; the keyword arguments are those of its constructor.

    Example:
        >>> model = build_unet(out_channels=8, filters=8, depth=2)
        >>> model.output_channel_names[:2]
        ('u_0', 'u_1')
    """
    return GlacierUNet(**kwargs)
