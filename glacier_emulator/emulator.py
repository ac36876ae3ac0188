r"""The emulator: a trained U-Net plus the metadata that says what it may be used for.

An :class:`Emulator` is a velocity provider like the reference solver: it takes a glacier's
geometry and returns a :class:`~glacier_emulator.fields.Velocity` (m/yr), in milliseconds instead
of seconds. It is called four ways:

* numpy: :meth:`Emulator.velocity` (one glacier ``(ny, nx)`` or a batch ``(B, ny, nx)``);
* the provider interface: :meth:`Emulator.predict_geometry` (also ``emulator(geometry)``), used by
  the time stepper;
* xarray: :meth:`Emulator.predict_dataset`;
* TensorFlow: :meth:`Emulator.tf_velocity`, differentiable with respect to every input channel
  (for physics-informed training and inversions).

Where the network's few per cent are not close enough, ``predict_geometry(geometry, refine=N)``
(or :meth:`Emulator.with_refine`) continues from its prediction with at most N iterations of the
reference solver: a chosen amount of time for a chosen accuracy, between the network alone and a
converged solve (the ``refine`` rows of the model cards, ``scripts/bench_refine.py``).

Every numpy/xarray call validates its inputs against the model's metadata (shapes, finite values,
thickness >= 0, plausible ranges, the grid spacing range the model was trained on) and raises
:class:`~glacier_emulator.fields.InputError` with a message that names the variable, what was
expected and what was found.

Model files
-----------
A model is two files side by side: ``NAME.keras`` (the Keras model, *without* optimizer state) and
``NAME.json`` (its :class:`ModelMetadata`: input channels and their units and scalings, outputs,
vertical levels, valid grid spacing, the physical constants it was trained for, training data,
measured accuracy, version, creation date). :meth:`Emulator.save` writes both,
:meth:`Emulator.load` reads both (``keras.saving.load_model(..., safe_mode=True, compile=False)``).

Shipped models live in the package folder ``glacier_emulator/pretrained/``;
:func:`list_pretrained` lists them and :meth:`Emulator.pretrained` loads one. While none ships,
:meth:`Emulator.pretrained` raises :class:`NoPretrainedModelError` -- never random weights.

Example:
    >>> import numpy as np
    >>> from glacier_emulator.models import build_unet
    >>> model = build_unet(filters=8, depth=2)          # untrained: for illustration only
    >>> emulator = Emulator(model, ModelMetadata.from_model(model, name="demo"))
    >>> thickness = np.full((20, 30), 200.0)
    >>> surface = 1000.0 - 0.05 * np.arange(30) * 100.0 + thickness
    >>> velocity = emulator.velocity(thickness=thickness, surface=surface, dx=100.0)
    >>> velocity.ubar.shape
    (20, 30)
"""
from __future__ import annotations

import datetime
import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import keras
import numpy as np
import tensorflow as tf

from . import __version__
from .constants import (
    COARSEN_TARGET_CELLS,
    DEFAULT_PHYSICS,
    DEFAULT_VERTICAL,
    EXAMPLE_EXTENT_ERRORS,
    REFINE_LEVELS_MAX,
    UNITS,
    WIDE_ICE_CELLS,
    Physics,
    VerticalDiscretisation,
)
from .fields import Geometry, InputError, Velocity
from .io.weights import WEIGHTS_DTYPES, store_weights
from .models import layers as _layers  # noqa: F401  (registers the custom layers with Keras)
from .models.unet import INPUT_CHANNELS, INPUT_UNITS, GlacierUNet, output_names
from .numerics.grid import node_gradient

PathLike = Union[str, Path]

FORMAT = "glacier-emulator-model"
FORMAT_VERSION = 1

def _pretrained_dir() -> Path:
    """The installed :mod:`glacier_emulator.pretrained` package (the repository's ``pretrained/``)."""
    try:
        from . import pretrained

        return Path(pretrained.__file__).resolve().parent
    except ImportError:  # pragma: no cover - a broken installation
        return Path(__file__).resolve().parent / "pretrained"


PRETRAINED_DIR = _pretrained_dir()
"""Package folder that holds the shipped models (``NAME.keras`` + ``NAME.json``)."""

DEFAULT_INPUT_RANGES: Dict[str, Tuple[float, float]] = {
    "thickness": (0.0, 5000.0),
    "surface_slope_x": (-5.0, 5.0),
    "surface_slope_y": (-5.0, 5.0),
    "sliding_coefficient": (0.0, 100.0),
    "rate_factor": (0.01, 1000.0),
}
"""Plausible ranges of the inputs (units of :data:`~glacier_emulator.models.unet.INPUT_UNITS`).

Values outside them almost always mean wrong units (thickness in km, A in Pa^-3 s^-1, c in Pa);
they are rejected. The grid spacing range is per model (:attr:`ModelMetadata.grid_spacing_range`).
"""

DEFAULT_GRID_SPACING_RANGE = (10.0, 1000.0)

def _fixed_coarsening_levels(coarsen) -> Optional[int]:
    """The halvings ``coarsen`` asks for: 0 for None, log2 of a power of 2, None for ``"auto"``
    (which depends on the glacier)."""
    if coarsen == "auto":
        return None
    if coarsen is None or (coarsen == 1 and not isinstance(coarsen, bool)):
        return 0
    if isinstance(coarsen, (int, np.integer)) and not isinstance(coarsen, bool) and coarsen >= 1:
        levels = int(coarsen).bit_length() - 1
        if 2 ** levels == coarsen:
            return levels
    raise ValueError(f"coarsen must be None, 'auto' or a power of 2. Received: coarsen={coarsen!r}")


def _refine_iterations(iterations) -> int:
    """``refine`` checked: a whole number of solver iterations >= 0."""
    if (isinstance(iterations, bool) or not isinstance(iterations, (int, np.integer))
            or iterations < 0):
        raise ValueError(f"refine must be a whole number of iterations >= 0. Received: refine={iterations!r}")
    return int(iterations)


class ExtentWarning(UserWarning):
    """The ice spans more than :data:`WIDE_ICE_CELLS` grid cells, where the emulator's error grows."""


def ice_extent_cells(thickness) -> int:
    """The side, in grid cells, of the smallest box holding every ice node (0 without ice); for a
    batch ``(B, ny, nx)`` the largest over the glaciers."""
    ice = np.asarray(thickness) > 0
    if ice.ndim == 2:
        ice = ice[None]
    extent = 0
    for sample in ice:
        rows, cols = np.nonzero(sample.any(axis=1))[0], np.nonzero(sample.any(axis=0))[0]
        if rows.size:
            extent = max(extent, int(rows[-1] - rows[0]), int(cols[-1] - cols[0]))
    return extent


def spacing_in_range(dx: float, bounds) -> bool:
    """Whether grid spacing ``dx`` (m) lies in ``bounds = (min, max)``, with a relative 1e-9 of
    slack for round-off: the rule of the emulator's valid range and of training's
    ``grid_spacing_range``."""
    lo, hi = bounds
    return bool(lo * (1 - 1e-9) <= float(dx) <= hi * (1 + 1e-9))


class NoPretrainedModelError(LookupError):
    """No shipped model (or none of the requested name) is installed in the package."""


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat()


@dataclass(frozen=True)
class ModelMetadata:
    """What a model file is and what it may be used for; stored as ``NAME.json`` next to it.

    Args:
        name: the model's name (``glacier-emulator predict --model NAME``).
        inputs: input channel names, in channel order (a prefix of ``INPUT_CHANNELS``).
        outputs: ``"depth_averaged"`` (2 channels: ubar, vbar) or ``"levels"`` (``2 * Nz``
            channels: u then v on the ``vertical.levels`` levels, bed to surface).
        vertical: the terrain-following levels of the training data (of the outputs for
            ``"levels"``).
        physics: the physical constants of the training data. Constants that are not input
            channels (Glen's and the sliding exponent, the rate factor of a model without a
            ``rate_factor`` channel) are fixed by them.
        grid_spacing_range: (min, max) grid spacing in m the model was trained on.
        input_scale, input_offset: the model's per-channel input normalisation (documentation;
            the model applies it itself).
        velocity_scale: the model's output scale (m/yr; documentation).
        input_ranges: plausible (min, max) per input, checked on every call.
        architecture: the model's constructor arguments.
        training_data: free-form description (source, number of samples, geometries, solver
            tolerance).
        accuracy: measured accuracy, e.g. ``{"relative_l2_ubar": 0.03, "dataset": "..."}``.
        description, version, created, package_version: provenance; ``created`` is an ISO date.
        default: the model :meth:`Emulator.pretrained` returns when no name is given.
        forward_runs: whether the model may drive a time stepper. False for a model that failed
            the forward test (``tests/test_pretrained.py``: the bundled example glacier driven
            50 years stays plausible); ``glacier-emulator run`` warns when given such a model,
            and the default model must have True.
        levels_model: for a depth-averaged model made from a 3-D one by
            :meth:`Emulator.depth_averaged`, that model's name (its ``NAME.keras`` lies in the
            same folder): solver refinement (``refine``) then starts from its levels, whose depth
            average is this model's output, instead of the shallow-ice profile
            (:meth:`Emulator.levels_source`). Empty for none.
        weights_dtype: how the ``.keras`` file stores the weights: ``"float32"`` (Keras' own)
            or ``"float16"`` (the large kernels rounded to half precision: half the file size,
            predictions within about 1e-4 of the speed; :mod:`glacier_emulator.io.weights`).
            The network always computes in float32. :meth:`Emulator.save` writes this storage
            unless told another.
    """

    name: str
    inputs: Tuple[str, ...] = INPUT_CHANNELS[:4]
    outputs: str = "depth_averaged"
    vertical: VerticalDiscretisation = DEFAULT_VERTICAL
    physics: Physics = DEFAULT_PHYSICS
    grid_spacing_range: Tuple[float, float] = DEFAULT_GRID_SPACING_RANGE
    input_scale: Optional[Tuple[float, ...]] = None
    input_offset: Optional[Tuple[float, ...]] = None
    velocity_scale: Optional[float] = None
    input_ranges: Mapping[str, Tuple[float, float]] = field(
        default_factory=lambda: dict(DEFAULT_INPUT_RANGES)
    )
    architecture: Mapping = field(default_factory=dict)
    training_data: Mapping = field(default_factory=dict)
    accuracy: Mapping = field(default_factory=dict)
    description: str = ""
    version: str = "0.0.0"
    created: str = ""
    package_version: str = __version__
    default: bool = False
    forward_runs: bool = True
    levels_model: str = ""
    weights_dtype: str = "float32"

    def __post_init__(self):
        set_ = object.__setattr__
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"`name` must be a non-empty string. Received: name={self.name!r}")
        inputs = tuple(self.inputs)
        if inputs != INPUT_CHANNELS[: len(inputs)] or len(inputs) < 4:
            raise ValueError(
                f"`inputs` must be the first 4, 5 or 6 of {INPUT_CHANNELS}. Received: inputs={inputs!r}"
            )
        set_(self, "inputs", inputs)
        if self.outputs not in ("depth_averaged", "levels"):
            raise ValueError(
                f"`outputs` must be 'depth_averaged' or 'levels'. Received: outputs={self.outputs!r}"
            )
        lo, hi = (float(v) for v in self.grid_spacing_range)
        if not (0 < lo <= hi and np.isfinite(hi)):
            raise ValueError(
                "`grid_spacing_range` must be (min, max) with 0 < min <= max. "
                f"Received: grid_spacing_range={self.grid_spacing_range!r}"
            )
        set_(self, "grid_spacing_range", (lo, hi))
        ranges = dict(DEFAULT_INPUT_RANGES)
        ranges.update({k: (float(v[0]), float(v[1])) for k, v in dict(self.input_ranges).items()})
        set_(self, "input_ranges", ranges)
        for name in ("input_scale", "input_offset"):
            value = getattr(self, name)
            if value is not None:
                value = tuple(float(v) for v in value)
                if len(value) != len(inputs):
                    raise ValueError(f"`{name}` needs one value per input {inputs}. Received: {name}={value!r}")
                set_(self, name, value)
        if not self.created:
            set_(self, "created", _now())
        set_(self, "levels_model", str(self.levels_model or ""))
        if self.weights_dtype not in WEIGHTS_DTYPES:
            raise ValueError(f"`weights_dtype` must be one of {WEIGHTS_DTYPES}. "
                             f"Received: weights_dtype={self.weights_dtype!r}")
        if self.levels_model and self.outputs != "depth_averaged":
            raise ValueError(
                "`levels_model` names the 3-D model of a depth-averaged one; this model has levels "
                f"itself. Received: levels_model={self.levels_model!r}"
            )

    def covers_spacing(self, dx: float) -> bool:
        """Whether grid spacing ``dx`` (m) lies in :attr:`grid_spacing_range` (the emulator
        refuses others; :func:`spacing_in_range`)."""
        return spacing_in_range(dx, self.grid_spacing_range)

    @property
    def largest_training_grid(self) -> int:
        """The most nodes along a side of the training grids (``training_data["grid_shapes"]``,
        e.g. ``["64x64", "96x96"]``); 0 when not recorded."""
        largest = 0
        for shape in self.training_data.get("grid_shapes") or ():
            try:
                largest = max(largest, *(int(n) for n in str(shape).split("x")))
            except ValueError:
                pass
        return largest

    @property
    def output_channels(self) -> int:
        """Number of output channels: 2 or ``2 * Nz``."""
        return 2 if self.outputs == "depth_averaged" else 2 * int(self.vertical.levels)

    @classmethod
    def from_model(cls, model: keras.Model, *, name: str, **fields) -> "ModelMetadata":
        """Metadata for ``model`` with its channels, scalings and architecture filled in.

        For a :class:`~glacier_emulator.models.GlacierUNet` the inputs, outputs, scalings and
        architecture come from its config; the other fields (``physics``, ``vertical``,
        ``grid_spacing_range``, ``training_data``, ``accuracy``, ...) are passed as keywords. For a
        ``"levels"`` model without ``vertical``, ``VerticalDiscretisation(levels=Nz)`` is used.

        Example:
            >>> from glacier_emulator.models import build_unet
            >>> meta = ModelMetadata.from_model(build_unet(out_channels=8, filters=8, depth=2), name="m")
            >>> meta.outputs, meta.vertical.levels
            ('levels', 4)
        """
        n_in = int(model.inputs[0].shape[-1])
        n_out = int(model.outputs[0].shape[-1])
        values = dict(inputs=INPUT_CHANNELS[:n_in], outputs="depth_averaged" if n_out == 2 else "levels")
        if isinstance(model, GlacierUNet):
            config = model.get_config()
            values.update(
                input_scale=tuple(config["input_scale"]),
                input_offset=tuple(config["input_offset"]),
                velocity_scale=config["velocity_scale"],
                architecture=model.constructor_arguments(),
            )
        if values["outputs"] == "levels" and "vertical" not in fields:
            values["vertical"] = VerticalDiscretisation(levels=n_out // 2)
        values.update(fields)
        return cls(name=name, **values)

    def to_dict(self) -> dict:
        """The JSON layout of a model's metadata file (see the module docstring of the CLI)."""
        n_in = len(self.inputs)
        scale = self.input_scale or (None,) * n_in
        offset = self.input_offset or (None,) * n_in
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "name": self.name,
            "version": self.version,
            "description": self.description,
            "created": self.created,
            "package_version": self.package_version,
            "default": bool(self.default),
            "forward_runs": bool(self.forward_runs),
            **({"levels_model": self.levels_model} if self.levels_model else {}),
            "weights_dtype": self.weights_dtype,
            "inputs": [
                {"name": n, "units": INPUT_UNITS[n], "offset": o, "scale": s}
                for n, o, s in zip(self.inputs, offset, scale)
            ],
            "outputs": {
                "kind": self.outputs,
                "names": list(output_names(self.output_channels)),
                "units": UNITS["velocity"],
                "scale": self.velocity_scale,
            },
            "vertical": {
                "levels": int(self.vertical.levels),
                "spacing": float(self.vertical.spacing),
                "zeta": [float(z) for z in self.vertical.zeta],
            },
            "grid_spacing": {
                "min": self.grid_spacing_range[0],
                "max": self.grid_spacing_range[1],
                "units": UNITS["length"],
            },
            "input_ranges": {
                k: {"min": lo, "max": hi, "units": INPUT_UNITS[k]}
                for k, (lo, hi) in self.input_ranges.items()
            },
            "physics": self.physics.to_dict(),
            "architecture": dict(self.architecture),
            "training_data": dict(self.training_data),
            "accuracy": dict(self.accuracy),
        }

    @classmethod
    def from_dict(cls, data: Mapping, *, source: str = "metadata") -> "ModelMetadata":
        """Parse the JSON layout written by :meth:`to_dict` (``source`` names it in errors)."""
        if data.get("format") != FORMAT:
            raise InputError(f"{source}: not a glacier-emulator model file (format {data.get('format')!r})")
        if int(data.get("format_version", 0)) > FORMAT_VERSION:
            raise InputError(
                f"{source}: metadata format version {data['format_version']} is newer than this "
                f"package understands ({FORMAT_VERSION}); upgrade glacier-emulator"
            )
        try:
            inputs = [entry["name"] for entry in data["inputs"]]
            scale = [entry.get("scale") for entry in data["inputs"]]
            offset = [entry.get("offset") for entry in data["inputs"]]
            vertical = data.get("vertical") or {}
            spacing = data.get("grid_spacing") or {}
            return cls(
                name=data["name"],
                inputs=tuple(inputs),
                outputs=data["outputs"]["kind"],
                vertical=VerticalDiscretisation(
                    levels=int(vertical.get("levels", DEFAULT_VERTICAL.levels)),
                    spacing=float(vertical.get("spacing", DEFAULT_VERTICAL.spacing)),
                ),
                physics=Physics.from_dict(data.get("physics")),
                grid_spacing_range=(spacing["min"], spacing["max"]),
                input_scale=None if None in scale else tuple(scale),
                input_offset=None if None in offset else tuple(offset),
                velocity_scale=data["outputs"].get("scale"),
                input_ranges={
                    k: (v["min"], v["max"]) for k, v in (data.get("input_ranges") or {}).items()
                },
                architecture=data.get("architecture") or {},
                training_data=data.get("training_data") or {},
                accuracy=data.get("accuracy") or {},
                description=data.get("description", ""),
                version=data.get("version", "0.0.0"),
                created=data.get("created", ""),
                package_version=data.get("package_version", ""),
                default=bool(data.get("default", False)),
                forward_runs=bool(data.get("forward_runs", True)),
                levels_model=data.get("levels_model") or "",
                weights_dtype=data.get("weights_dtype") or "float32",
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(f"{source}: malformed model metadata ({type(exc).__name__}: {exc})") from exc


def metadata_path(model_path: PathLike) -> Path:
    """The metadata file that belongs to a model file: ``NAME.keras`` -> ``NAME.json``."""
    return Path(model_path).with_suffix(".json")


def uncompiled_copy(model: keras.Model) -> keras.Model:
    """A copy of ``model`` with the same weights but no optimizer and no compile configuration.

    ``model.save`` in Keras 3 has no ``include_optimizer``; saving this copy instead keeps
    optimizer state (and the training loss configuration) out of ``.keras`` files.
    """
    config = keras.saving.serialize_keras_object(model)
    config.pop("compile_config", None)
    fresh = keras.saving.deserialize_keras_object(config)
    fresh.set_weights(model.get_weights())
    return fresh


DEFAULT_PHYSICS_SET = "default-physics"
"""The name of the held-out set of the package's default physics in the model cards (training/README.md's
evaluation commands); the main set (``"test"``) varies the sliding coefficient and rate factor."""


def held_out_ubar_error(accuracy: Optional[Mapping], refine: int = 0, test_set: str = "test") -> dict:
    """The model card's headline: ``{"median", "p90", "n"}`` of the relative L2 error of ubar on
    held-out glaciers against the solver (``accuracy["held_out"]["rel_l2_ubar"]``, written by
    ``scripts/evaluate_model.py``), or ``{}`` when the model was not evaluated so. With
    ``refine=N``: the same for the prediction refined by N solver iterations (the card's refine
    row, ``evaluate_model.py --refine N``), ``{}`` if N was not measured. ``test_set``: the main
    set (``"test"``) or the name of a further one (``--extra-test``, e.g.
    :data:`DEFAULT_PHYSICS_SET`); ``{}`` if it was not measured."""
    held = (accuracy or {}).get("held_out") or {}
    if refine:
        held = ((held.get("refine") or {}).get(str(refine)) or {}).get(test_set) or {}
    elif test_set != "test":
        held = (held.get("extra") or {}).get(test_set) or {}
    return dict(held.get("rel_l2_ubar") or {})


def list_pretrained(directory: Optional[PathLike] = None) -> List[dict]:
    """The shipped models: the metadata of every ``*.json`` model file in ``directory``.

    Args:
        directory: where to look; default the package folder :data:`PRETRAINED_DIR`.

    Returns:
        One dict per model (the JSON layout of :meth:`ModelMetadata.to_dict`) with two keys
        added: ``"path"`` (the ``.keras`` file) and ``"available"`` (whether it exists). JSON files
        of another format (model cards) are skipped. Sorted by name.

    Example:
        >>> list_pretrained("/nonexistent")
        []
    """
    directory = Path(PRETRAINED_DIR if directory is None else directory)
    if not directory.is_dir():
        return []
    found = []
    for json_path in sorted(directory.glob("*.json")):
        try:
            data = json.loads(json_path.read_text())
        except json.JSONDecodeError as exc:
            raise InputError(f"{json_path}: not valid JSON ({exc})") from exc
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            continue
        model_path = json_path.with_suffix(".keras")
        data = dict(data, path=str(model_path), available=model_path.is_file())
        found.append(data)
    return sorted(found, key=lambda d: str(d.get("name", "")))


def _no_model_message(directory: Path, detail: str = "") -> str:
    return (
        f"No pretrained emulator is installed yet{detail} (looked in {directory}). Train one "
        "(see training/ and `glacier-emulator train`) and load it with "
        "Emulator.load('MODEL.keras') or `glacier-emulator predict --model MODEL.keras`, or use "
        "the reference solver (`glacier-emulator solve`)."
    )


class Emulator:
    """A trained velocity emulator: a Keras model plus its :class:`ModelMetadata`.

    Args:
        model: a Keras model mapping ``(batch, ny, nx, C)`` input channels (physical units, in
            the order of ``metadata.inputs``) to ``(batch, ny, nx, 2)`` or ``(..., 2 * Nz)``
            velocities in m/yr, usually a :class:`~glacier_emulator.models.GlacierUNet`.
        metadata: its :class:`ModelMetadata` (or the dict of its JSON file).

    Example:
        >>> from glacier_emulator.models import build_unet
        >>> model = build_unet(filters=8, depth=2)
        >>> emulator = Emulator(model, ModelMetadata.from_model(model, name="demo"))
        >>> emulator.name, emulator.has_levels
        ('demo', False)
    """

    def __init__(self, model: keras.Model, metadata: Union[ModelMetadata, Mapping]):
        if isinstance(metadata, Mapping):
            metadata = ModelMetadata.from_dict(metadata)
        if not isinstance(metadata, ModelMetadata):
            raise ValueError(f"`metadata` must be a ModelMetadata or a dict. Received: {type(metadata).__name__}")
        n_in = model.inputs[0].shape[-1] if model.inputs else None
        n_out = model.outputs[0].shape[-1] if model.outputs else None
        if n_in != len(metadata.inputs):
            raise ValueError(
                f"The model takes {n_in} input channels but its metadata lists {len(metadata.inputs)} "
                f"({', '.join(metadata.inputs)}). Received: model {model.name!r}, metadata {metadata.name!r}"
            )
        if n_out != metadata.output_channels:
            raise ValueError(
                f"The model has {n_out} output channels but its metadata describes "
                f"{metadata.output_channels} ({metadata.outputs}, Nz={metadata.vertical.levels}). "
                f"Received: model {model.name!r}, metadata {metadata.name!r}"
            )
        self.model = model
        self.metadata = metadata
        self.coarsen = None
        self.refine = 0
        self.refine_from = "auto"
        #: the ``.keras`` file this emulator was loaded from (None for one built in memory)
        self.source_path: Optional[Path] = None
        # the 3-D model of a depth-averaged one (levels_source): None until looked for, False
        # when it is missing
        self._levels_source = None
        self._forward = tf.function(
            lambda x: self.model(x, training=False),
            input_signature=[tf.TensorSpec((None, None, None, n_in), tf.float32)],
            jit_compile=False,
        )

    # ------------------------------------------------------------------ files
    @classmethod
    def load(cls, path: PathLike) -> "Emulator":
        """Load ``NAME.keras`` and its metadata ``NAME.json`` (no optimizer, safe mode).

        Raises:
            FileNotFoundError: the model or its metadata file is missing.
            InputError: the metadata is malformed or does not match the model.
        """
        path = Path(path)
        if path.suffix != ".keras":
            raise InputError(f"{path}: a model file must end in .keras")
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such model file")
        meta_path = metadata_path(path)
        if not meta_path.is_file():
            raise FileNotFoundError(
                f"{meta_path}: the metadata file of model {path.name} is missing; every model "
                "needs one (write both with Emulator.save)"
            )
        try:
            data = json.loads(meta_path.read_text())
        except json.JSONDecodeError as exc:
            raise InputError(f"{meta_path}: not valid JSON ({exc})") from exc
        metadata = ModelMetadata.from_dict(data, source=str(meta_path))
        model = keras.saving.load_model(path, compile=False, safe_mode=True)
        try:
            emulator = cls(model, metadata)
        except ValueError as exc:
            raise InputError(f"{path}: {exc}") from exc
        emulator.source_path = path
        return emulator

    @classmethod
    def pretrained(cls, name: Optional[str] = None) -> "Emulator":
        """A shipped model from the package folder ``glacier_emulator/pretrained/``.

        Args:
            name: the model's name (or file stem). Default: the model marked ``default`` in its
                metadata, else the most recently created one.

        Raises:
            NoPretrainedModelError: no model (or none called ``name``) is installed.
        """
        directory = Path(PRETRAINED_DIR)
        entries = list_pretrained(directory)
        available = [e for e in entries if e["available"]]
        if name is not None:
            matches = [e for e in available if name in (e.get("name"), Path(e["path"]).stem)]
            if not matches:
                names = ", ".join(e["name"] for e in available) or "none"
                raise NoPretrainedModelError(
                    f"No pretrained model named {name!r} is installed (installed: {names}; "
                    f"looked in {directory}). `glacier-emulator models` lists them."
                )
            return cls.load(matches[0]["path"])
        if not available:
            missing = [e["name"] for e in entries]
            detail = f" (metadata without weights for {', '.join(missing)})" if missing else ""
            raise NoPretrainedModelError(_no_model_message(directory, detail))
        defaults = [e for e in available if e.get("default")]
        chosen = sorted(defaults or available, key=lambda e: str(e.get("created", "")))[-1]
        return cls.load(chosen["path"])

    def save(self, path: PathLike, *, overwrite: bool = True,
             weights_dtype: Optional[str] = None) -> Path:
        """Write ``NAME.keras`` (weights and architecture, no optimizer state) and ``NAME.json``.

        Args:
            weights_dtype: ``"float32"`` or ``"float16"`` (half the size; the shipped models,
                :mod:`glacier_emulator.io.weights`); default: this model's
                :attr:`ModelMetadata.weights_dtype` (float32 unless it was loaded from a float16
                file), which the written metadata then records.

        Both files are written under temporary names and renamed into place, so an interrupted
        save leaves no partial model.

        Returns:
            The path of the ``.keras`` file.
        """
        import dataclasses

        path = Path(path)
        if path.suffix != ".keras":
            raise ValueError(f"The model file name must end in .keras. Received: path={str(path)!r}")
        meta_path = metadata_path(path)
        if not overwrite and (path.exists() or meta_path.exists()):
            raise FileExistsError(f"{path}: exists (pass overwrite=True to replace it)")
        dtype = weights_dtype or self.metadata.weights_dtype
        metadata = dataclasses.replace(self.metadata, weights_dtype=dtype)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.stem}.partial.keras")
        partial_meta = meta_path.with_name(f".{meta_path.name}.partial")
        try:
            uncompiled_copy(self.model).save(partial, overwrite=True)
            if dtype != "float32":
                store_weights(partial, dtype)
            partial_meta.write_text(json.dumps(metadata.to_dict(), indent=2) + "\n")
            os.replace(partial, path)
            os.replace(partial_meta, meta_path)
        finally:
            for leftover in (partial, partial_meta):
                if leftover.exists():
                    leftover.unlink()
        return path

    def depth_averaged(self, name: Optional[str] = None, **metadata) -> "Emulator":
        """A depth-averaged (ubar, vbar) emulator with exactly the depth average of this 3-D one.

        The U-Net's last layer is a 1 x 1 convolution to u and v on the levels and everything
        after it (the prior's per-glacier scale, mirror averaging, output scaling, ice mask) is
        linear, so contracting that layer's kernel and bias with the depth-average weights of the
        levels gives a 2-channel network whose output equals the trapezoidal depth average of this
        one's (to float32 round-off), with every other weight shared.

        The new model's ``levels_model`` names this one (its file stem, else its name), so that
        solver refinement starts from this model's levels (:meth:`levels_source`); save both in
        one folder, or pass ``levels_model=""`` to refine from the shallow-ice profile.

        Args:
            name: the new model's name (default: this name with ``-ubar``).
            **metadata: other :class:`ModelMetadata` fields to set (description, version, ...).
        """
        if not self.has_levels:
            raise ValueError(f"model {self.name!r} is already depth-averaged")
        import dataclasses

        arch = dict(self.model.constructor_arguments(), out_channels=2)
        model = GlacierUNet(**arch)
        w = np.asarray(self.vertical.depth_average_weights, np.float64)
        for layer in model.layers:
            source = self.model.get_layer(layer.name).get_weights()
            if layer.name == _VELOCITY_HEAD:
                source = [a.astype(np.float32) for a in _depth_averaged_head(source, w)]
            layer.set_weights(source)
        fields = dict(metadata)
        fields.setdefault("name", name or f"{self.name}-ubar")
        fields.setdefault("levels_model", self.source_path.stem if self.source_path else self.name)
        fields["outputs"] = "depth_averaged"
        fields["architecture"] = {**dict(self.metadata.architecture), "out_channels": 2}
        flat = Emulator(model, dataclasses.replace(self.metadata, **fields))
        if flat.metadata.levels_model:
            flat._levels_source = self
        return flat

    def levels_source(self) -> Optional["Emulator"]:
        """The 3-D emulator whose levels solver refinement starts from.

        This emulator itself if it has levels. For a depth-averaged one with a ``levels_model``
        (the shipped ``ubar-prior`` names ``velocity3d-prior``): that model, loaded from the
        folder this one was loaded from and checked to be the network this one was contracted
        from (:meth:`depth_averaged`: every weight shared, its depth-averaged output layer this
        one's), with this one's symmetry averaging; its depth average is this model's output,
        so only the starting levels change. Otherwise None: refinement then starts from the
        shallow-ice profile scaled to the prediction
        (:func:`~glacier_emulator.physics.sia.sia_shaped_levels`), which measured further from
        the solution after a few iterations
        (:data:`~glacier_emulator.constants.REFINE_LEVELS_MAX`). A ``levels_model`` file that is
        missing gives one warning and None.

        Raises:
            InputError: the ``levels_model`` file is not the model this one was made from.
        """
        if self.has_levels:
            return self
        name = self.metadata.levels_model
        if not name or self._levels_source is False:
            return None
        deep = self._levels_source
        if deep is None:
            path = self.source_path.with_name(f"{name}.keras") if self.source_path else None
            if path is None or not path.is_file():
                where = f"{path}" if path else f"model {self.name!r} was not loaded from a file, so"
                warnings.warn(
                    f"{where}: the 3-D model {name!r} that {self.name!r} was made from is not "
                    "there; solver refinement starts from the shallow-ice profile instead of its "
                    "levels (less accurate for a few iterations)", stacklevel=2,
                )
                self._levels_source = False
                return None
            deep = Emulator.load(path)
            _check_depth_averaged_from(self, deep, path)
        symmetrise = getattr(self.model, "symmetrise", "none")
        if getattr(deep.model, "symmetrise", "none") != symmetrise:
            deep = deep.with_symmetrise(symmetrise)
        self._levels_source = deep
        return deep

    def with_symmetrise(self, symmetrise: str) -> "Emulator":
        """This emulator with its network averaged over another set of grid symmetries.

        ``"dihedral"`` (all eight rotations and mirrors of the grid, 8 network evaluations),
        ``"xy"`` (both mirrors, 4), ``"x"`` (2) or ``"none"`` (1): the weights are the same
        (:meth:`GlacierUNet.with_symmetrise`); fewer images are faster and, for a model trained
        with mirrors and rotations, less accurate. The metadata's ``accuracy`` was measured with
        the shipped mode (``accuracy["symmetrise"]``).
        """
        import dataclasses

        model = self.model.with_symmetrise(symmetrise)
        architecture = {**dict(self.metadata.architecture), "symmetrise": symmetrise}
        out = Emulator(model, dataclasses.replace(self.metadata, architecture=architecture))
        out.source_path, out._levels_source = self.source_path, self._levels_source
        out.coarsen, out.refine, out.refine_from = self.coarsen, self.refine, self.refine_from
        return out

    # ------------------------------------------------------------- properties
    @property
    def name(self) -> str:
        return self.metadata.name

    @property
    def inputs(self) -> Tuple[str, ...]:
        """Input channel names, in order."""
        return self.metadata.inputs

    @property
    def physics(self) -> Physics:
        """The physical constants the model was trained for."""
        return self.metadata.physics

    @property
    def vertical(self) -> VerticalDiscretisation:
        return self.metadata.vertical

    @property
    def has_levels(self) -> bool:
        """Whether the model predicts u, v on ``Nz`` levels (else only ubar, vbar)."""
        return self.metadata.outputs == "levels"

    def __repr__(self) -> str:
        lo, hi = self.metadata.grid_spacing_range
        return (
            f"Emulator(name={self.name!r}, inputs={list(self.inputs)}, outputs={self.metadata.outputs!r}, "
            f"Nz={self.vertical.levels}, dx=[{lo:g}, {hi:g}] m)"
        )

    # ---------------------------------------------------------- numpy calls
    def prepare_inputs(
        self,
        *,
        thickness,
        surface=None,
        surface_slope=None,
        sliding_coefficient=None,
        rate_factor=None,
        dx: float,
        dy: Optional[float] = None,
    ) -> np.ndarray:
        """Validate the fields and stack them into the model's input ``(B, ny, nx, C)``, float32.

        Arguments as in :meth:`velocity`. Slopes on ice-free nodes are clipped to the plausible
        range (they only matter there through the receptive field of the network); on ice they
        must lie inside it.
        """
        thickness = np.asarray(thickness, dtype=np.float64)
        if thickness.ndim not in (2, 3) or thickness.shape[-1] < 2 or thickness.shape[-2] < 2:
            raise InputError(
                "thickness must be a (ny, nx) grid or a (batch, ny, nx) stack of grids with at least "
                f"2 x 2 nodes; got shape {thickness.shape}"
            )
        batch = thickness[None] if thickness.ndim == 2 else thickness
        shape = batch.shape
        ranges = self.metadata.input_ranges
        _check_finite("thickness", batch)
        if np.any(batch < 0):
            raise InputError(f"thickness is negative (minimum {batch.min():.4g} m); it must be >= 0")
        _check_range("thickness", batch, ranges["thickness"], "m", hint=" (is it in metres?)")
        dx, dy = self._check_spacing(dx, dy)
        self._warn_extent(batch)
        if surface_slope is not None:
            if len(surface_slope) != 2:
                raise InputError(f"surface_slope must be a pair (s_x, s_y); got {len(surface_slope)} items")
            sx, sy = (self._field(name, s, shape) for name, s in
                      zip(("surface_slope_x", "surface_slope_y"), surface_slope))
        elif surface is not None:
            surface = self._field("surface", surface, shape)
            sx, sy = node_gradient(surface, dx=dx, dy=dy)
        else:
            raise InputError("give the surface elevation (surface=) or its slope (surface_slope=)")
        ice = batch > 0
        for name, s in (("surface_slope_x", sx), ("surface_slope_y", sy)):
            lo, hi = ranges[name]
            _check_range(name, s[ice], (lo, hi), "m/m", hint=" on ice (are surface and dx in metres?)")
        sx, sy = (np.clip(s, *ranges[name]) for name, s in (("surface_slope_x", sx), ("surface_slope_y", sy)))
        physics = self.physics
        sliding = physics.sliding_coefficient if sliding_coefficient is None else sliding_coefficient
        sliding = self._field("sliding_coefficient", sliding, shape)
        _check_range("sliding_coefficient", sliding, ranges["sliding_coefficient"], UNITS["sliding_coefficient"])
        channels = {"thickness": batch, "surface_slope_x": sx, "surface_slope_y": sy,
                    "sliding_coefficient": sliding}
        if "rate_factor" in self.inputs:
            rate = physics.rate_factor if rate_factor is None else rate_factor
            rate = self._field("rate_factor", rate, shape)
            _check_range("rate_factor", rate, ranges["rate_factor"], UNITS["rate_factor"])
            channels["rate_factor"] = rate
        elif rate_factor is not None:
            rate = np.asarray(rate_factor, dtype=np.float64)
            if not np.allclose(rate, physics.rate_factor, rtol=1e-6, atol=0.0):
                raise InputError(
                    f"rate_factor {_describe(rate)} {UNITS['rate_factor']} differs from the value "
                    f"{physics.rate_factor:g} this emulator ({self.name!r}) was trained with, and the "
                    "model has no rate_factor input; use the reference solver or a model with one"
                )
        if "grid_spacing" in self.inputs:
            channels["grid_spacing"] = np.full(shape, dx)
        return np.stack([channels[n] for n in self.inputs], axis=-1).astype(np.float32)

    def velocity(
        self,
        *,
        thickness,
        surface=None,
        surface_slope=None,
        sliding_coefficient=None,
        rate_factor=None,
        dx: float,
        dy: Optional[float] = None,
        batch_size: int = 8,
    ) -> Union[Velocity, List[Velocity]]:
        """The emulated velocity (m/yr) of one glacier or of a batch of glaciers on the same grid.

        Args:
            thickness: ice thickness H (m), ``(ny, nx)`` or ``(B, ny, nx)``.
            surface: surface elevation s (m), same shape; its slope is taken by central
                differences (:func:`~glacier_emulator.numerics.grid.node_gradient`).
            surface_slope: ``(s_x, s_y)`` instead of ``surface`` (dimensionless). On ice the slope
                must lie in the plausible range; on ice-free nodes it is clipped to it.
            sliding_coefficient: c in MPa (m/yr)^-1/3: scalar, ``(ny, nx)`` or ``(B, ny, nx)``;
                default the trained ``physics.sliding_coefficient``.
            rate_factor: A in MPa^-3 yr^-1 (same shapes); default the trained value. A model
                without a rate-factor input only accepts its trained value.
            dx, dy: grid spacing (m); ``dy`` defaults to ``dx``. Cells must be square and ``dx``
                inside the model's ``grid_spacing_range``.
            batch_size: glaciers per forward pass.

        Returns:
            One :class:`~glacier_emulator.fields.Velocity` for a ``(ny, nx)`` input, a list of
            them (one per glacier) for a ``(B, ny, nx)`` input. Models with levels return the 3-D
            field (``Velocity.from_levels``), the others ``ubar`` and ``vbar`` only. Ice-free
            nodes get exactly zero.

        Raises:
            InputError: bad shapes, NaN, negative thickness, implausible values, grid spacing
                outside the trained range.
        """
        if int(batch_size) < 1:
            raise ValueError(f"`batch_size` must be >= 1. Received: batch_size={batch_size!r}")
        x = self.prepare_inputs(
            thickness=thickness, surface=surface, surface_slope=surface_slope,
            sliding_coefficient=sliding_coefficient, rate_factor=rate_factor, dx=dx, dy=dy,
        )
        outputs = [
            self._forward(tf.constant(x[i : i + batch_size])).numpy()
            for i in range(0, len(x), int(batch_size))
        ]
        y = np.concatenate(outputs, axis=0).astype(np.float64)
        velocities = [self._to_velocity(sample) for sample in y]
        return velocities if np.ndim(thickness) == 3 else velocities[0]

    def with_coarsen(self, coarsen) -> "Emulator":
        """This emulator (same network) with ``coarsen`` as the default of
        :meth:`predict_geometry` (so also of forward runs through it): None, an int power of 2
        or ``"auto"``."""
        import copy

        _fixed_coarsening_levels(coarsen)  # validates
        out = copy.copy(self)
        out.coarsen = coarsen
        return out

    def with_refine(self, iterations: int, start: Optional[str] = None) -> "Emulator":
        """This emulator (same network) with ``iterations`` as the default ``refine`` of
        :meth:`predict_geometry` (so also of forward runs through it); 0 switches it off.

        ``start``: where the iterations start (:attr:`refine_from`; unchanged when None):
        ``"auto"`` (the default; :data:`~glacier_emulator.constants.REFINE_LEVELS_MAX`),
        ``"levels"`` (the network's levels, a depth-averaged model's from its ``levels_model``)
        or ``"shallow-ice"`` (the shallow-ice profile of the network's depth average)."""
        import copy

        out = copy.copy(self)
        out.refine = _refine_iterations(iterations)
        if start is not None:
            if start not in REFINE_STARTS:
                raise ValueError(f"start must be one of {REFINE_STARTS}. Received: start={start!r}")
            out.refine_from = start
        return out

    def refine_velocity(self, geometry: Geometry, velocity: Velocity, iterations: int) -> Velocity:
        """``velocity`` moved towards the Blatter-Pattyn solution of ``geometry`` by at most
        ``iterations`` L-BFGS iterations of the reference solver
        (:func:`~glacier_emulator.numerics.solver.solve`, started from it, with this model's
        physics and levels; it stops earlier if it converges): :meth:`refine_solve`'s velocity.

        A 3-D prediction is the starting guess as it is; a depth-averaged one gets the
        shallow-ice vertical profile (:func:`~glacier_emulator.physics.sia.sia_shaped_levels`);
        :meth:`predict_geometry` starts instead from :meth:`refine_initial` (by
        :attr:`refine_from`). The iterations run in single precision. The first call for a grid
        size compiles the solver's energy (a few seconds); later calls on that grid size (a
        forward run, a dataset) reuse it. Returns the 3-D velocity on this model's levels
        (``velocity`` for 0 iterations).
        """
        if not _refine_iterations(iterations):
            return velocity
        return self.refine_solve(geometry, velocity, iterations).velocity

    def refine_solve(self, geometry: Geometry, velocity: Velocity, iterations: int, *, memory=None):
        """:meth:`refine_velocity` with the solver's whole
        :class:`~glacier_emulator.numerics.solver.SolveResult` (iterations, energy, ``memory``).

        ``memory``: the ``memory`` of an earlier result on the same grid, e.g. the previous time
        step of a forward run (:class:`~glacier_emulator.dynamics.providers.EmulatorProvider`
        passes it): the iterations start with its L-BFGS curvature pairs (see
        :func:`~glacier_emulator.numerics.solver.solve`). ``iterations`` must be >= 1.
        """
        from .numerics.solver import SolverConfig, solve

        iterations = _refine_iterations(iterations)
        if not iterations:
            raise ValueError("refine_solve needs at least one iteration. Received: iterations=0")
        velocity = self.refine_start(geometry, velocity)
        # single precision: as accurate as double for such budgets (the example glacier: the
        # same error to 4 digits after 10 and 30 iterations) and about 30 % faster
        return solve(geometry, physics=self.physics, vertical=self.vertical, initial=velocity,
                     config=SolverConfig(max_iterations=iterations, dtype="float32"), memory=memory)

    def refine_start(self, geometry: Geometry, velocity: Velocity) -> Velocity:
        """The starting guess :meth:`refine_solve` makes of a prediction: a 3-D one as it is, a
        depth-averaged one with the shallow-ice vertical profile on this model's levels
        (:func:`~glacier_emulator.physics.sia.sia_shaped_levels`)."""
        if velocity.u is not None:
            return velocity
        from .physics.sia import sia_shaped_levels

        return sia_shaped_levels(geometry, velocity.ubar, velocity.vbar,
                                 zeta=self.vertical.zeta, physics=self.physics)

    def refine_source(self, iterations: Optional[int] = None, *, forward: bool = False) -> Optional["Emulator"]:
        """The emulator whose predicted levels a refinement by ``iterations`` solver iterations
        (default :attr:`refine`) starts from, or None for the shallow-ice profile of the
        network's depth average.

        :attr:`refine_from` ``"levels"``: :meth:`levels_source` (None for a depth-averaged model
        without a ``levels_model``); ``"shallow-ice"``: None; ``"auto"`` (the default): the
        levels for at most :data:`~glacier_emulator.constants.REFINE_LEVELS_MAX` iterations of a
        single prediction, the profile for more and in forward runs (``forward``, as
        :class:`~glacier_emulator.dynamics.providers.EmulatorProvider` asks), which is what
        measured closer (the constant's documentation).
        """
        iterations = self.refine if iterations is None else _refine_iterations(iterations)
        mode = self.refine_from
        if mode == "auto":
            mode = "shallow-ice" if forward or iterations > REFINE_LEVELS_MAX else "levels"
        return self.levels_source() if mode == "levels" else None

    def refine_start_description(self, iterations: Optional[int] = None, *, forward: bool = False) -> str:
        """What :meth:`refine_source` picks, in words for output files: ``"levels of NAME
        VERSION"`` or ``"shallow-ice profile"``."""
        source = self.refine_source(iterations, forward=forward)
        return f"levels of {source.name} {source.metadata.version}" if source else "shallow-ice profile"

    def refine_initial(self, geometry: Geometry, *, coarsen="default", iterations: Optional[int] = None,
                       forward: bool = False) -> Velocity:
        """The network prediction that solver refinement of ``geometry`` by ``iterations``
        (default :attr:`refine`) starts from, on this model's levels: the levels predicted by
        :meth:`refine_source` (this model, or the 3-D model a depth-averaged one was made from,
        whose depth average is this model's output), or else the network's depth average with
        the shallow-ice profile (:meth:`refine_start`). ``coarsen`` as in
        :meth:`predict_geometry`; ``forward``: for a step of a forward run."""
        coarsen = self.coarsen if coarsen == "default" else coarsen
        source = self.refine_source(iterations, forward=forward)
        velocity = (source or self).predict_geometry(geometry, coarsen=coarsen, refine=0)
        if source is None:
            velocity = Velocity(ubar=velocity.ubar, vbar=velocity.vbar)
        return self.refine_start(geometry, velocity)

    def coarsening_levels(self, geometry: Geometry, coarsen="auto") -> int:
        """How many times :meth:`predict_geometry` halves the grid for ``coarsen``: 0 for None,
        log2 of an int power of 2, and for ``"auto"`` none unless the ice spans more than
        :data:`WIDE_ICE_CELLS` cells, then as many as bring it to at most
        :data:`COARSEN_TARGET_CELLS` while the coarse spacing stays in the model's range."""
        fixed = _fixed_coarsening_levels(coarsen)
        if fixed is not None:
            return fixed
        extent, levels = ice_extent_cells(geometry.thickness), 0
        if extent <= WIDE_ICE_CELLS:
            return 0
        while (extent / 2 ** levels > COARSEN_TARGET_CELLS
               and self.metadata.covers_spacing(geometry.dx * 2 ** (levels + 1))):
            levels += 1
        return levels

    def predict_geometry(self, geometry: Geometry, *, coarsen="default", refine="default") -> Velocity:
        """The velocity of a :class:`~glacier_emulator.fields.Geometry` (the provider interface).

        Uses ``geometry.slopes()``, its sliding coefficient and rate factor (the trained physics
        where they are None) and its grid spacing.

        Args:
            geometry: the glacier.
            coarsen: predict on a coarser grid and interpolate back (bilinearly; zero off the
                ice): None (the grid as given), a power of 2 (every 2nd, 4th, ... node), or
                ``"auto"`` (for ice wider than :data:`WIDE_ICE_CELLS` cells: halve
                until it spans at most :data:`COARSEN_TARGET_CELLS`, within the model's
                grid-spacing range). The emulator's error grows with the ice's extent in cells
                (:data:`EXAMPLE_EXTENT_ERRORS`): the bundled example glacier at 50 m (160
                cells) is far better predicted with ``"auto"`` (4x coarser) than on the grid as
                given; at 100 m (79 cells, left alone by ``"auto"``) ``coarsen=2`` also helped
                (``scripts/results/extent.md``), but on the generator's glaciers of 48-96 cells
                halving was worse on 13 of 19 (1.6). Default: the emulator's :attr:`coarsen`
                (None unless set by :meth:`with_coarsen`).
            refine: after the network, at most this many iterations of the reference solver
                started from its prediction on the levels (:meth:`refine_initial`, by
                :attr:`refine_from`; the result is 3-D): 0 for none. It trades
                time for accuracy: on the generator's 64 x 64 glaciers 30 iterations take the
                3-D model's error several-fold down at a fraction of a converged solve's time
                (``refine`` rows of the model cards). Default: the emulator's :attr:`refine`
                (0 unless set by :meth:`with_refine`).
        """
        coarsen = self.coarsen if coarsen == "default" else coarsen
        refine = self.refine if refine == "default" else _refine_iterations(refine)
        if refine:
            start = self.refine_initial(geometry, coarsen=coarsen, iterations=refine)
            return self.refine_solve(geometry, start, refine).velocity
        levels = self.coarsening_levels(geometry, coarsen)
        if levels:
            velocity = self._predict_coarsened(geometry, levels)
        else:
            velocity = self.velocity(
                thickness=geometry.thickness, surface_slope=geometry.slopes(),
                sliding_coefficient=geometry.sliding_coefficient, rate_factor=geometry.rate_factor,
                dx=geometry.dx, dy=geometry.dy,
            )
        return velocity

    __call__ = predict_geometry

    def _predict_coarsened(self, geometry: Geometry, levels: int) -> Velocity:
        """Predict on every ``2**levels``-th node, interpolate back, zero off the ice."""
        from .numerics.solver import coarsen as halve, prolong

        if geometry.periodic:
            raise InputError("coarsen is not available for periodic domains")
        shapes, coarse = [], geometry
        for _ in range(levels):
            shapes.append(coarse.shape)
            coarse = halve(coarse)
        v = self.predict_geometry(coarse, coarsen=None, refine=0)
        names = ("u", "v") if v.u is not None else ("ubar", "vbar")
        fields = {n: getattr(v, n) for n in names}
        for shape in reversed(shapes):
            fields = {n: prolong(a, shape, periodic=False) for n, a in fields.items()}
        ice = geometry.thickness > 0
        fields = {n: np.where(ice, a, 0.0) for n, a in fields.items()}
        if v.u is not None:
            return Velocity.from_levels(fields["u"], fields["v"], v.zeta)
        return Velocity(ubar=fields["ubar"], vbar=fields["vbar"])

    def predict_dataset(self, ds):
        """Emulate the velocity of a glacier given as an ``xarray.Dataset``.

        The dataset holds ``thk`` (m) and ``usurf`` or ``topg`` (m) on coordinates ``x``, ``y``
        (m), optionally ``slidingco`` and ``arrhenius``. Returns the dataset that
        :func:`glacier_emulator.io.netcdf.velocity_to_dataset` builds (the variables ``solve``
        writes).
        """
        from .io.netcdf import velocity_to_dataset

        geometry = geometry_from_dataset(ds)
        return velocity_to_dataset(self.predict_geometry(geometry), geometry)

    # ------------------------------------------------------ TensorFlow calls
    def tf_velocity(self, inputs, *, training: bool = False) -> tf.Tensor:
        """The velocity as a differentiable TensorFlow tensor (m/yr, float32).

        Args:
            inputs: the model input ``(B, ny, nx, C)`` in physical units and the channel order of
                :attr:`inputs`, or a dict of named tensors ``(B, ny, nx)``: ``thickness``,
                ``surface_slope_x``, ``surface_slope_y``, optionally ``sliding_coefficient`` and
                ``rate_factor`` (scalars allowed; default the trained values), and ``grid_spacing``
                (m) when the model takes it. Values are not checked (this runs inside graphs):
                use :meth:`prepare_inputs` for validated arrays.
            training: passed to the model.

        Returns:
            ``(B, ny, nx, 2)`` ``[ubar, vbar]`` or ``(B, ny, nx, 2 Nz)`` ``[u_0.., v_0..]``.

        Example:
            >>> import tensorflow as tf
            >>> from glacier_emulator.models import build_unet
            >>> model = build_unet(filters=8, depth=2)
            >>> em = Emulator(model, ModelMetadata.from_model(model, name="demo"))
            >>> h = tf.Variable(tf.fill((1, 8, 8), 100.0))
            >>> with tf.GradientTape() as tape:
            ...     uv = em.tf_velocity({"thickness": h, "surface_slope_x": tf.fill((1, 8, 8), 0.05),
            ...                          "surface_slope_y": tf.zeros((1, 8, 8))})
            ...     loss = tf.reduce_sum(uv**2)
            >>> tape.gradient(loss, h).shape
            TensorShape([1, 8, 8])
        """
        if isinstance(inputs, Mapping):
            x = self._stack_tensors(inputs)
        else:
            x = tf.cast(inputs, tf.float32)
            if x.shape.rank != 4 or x.shape[-1] != len(self.inputs):
                raise InputError(
                    f"inputs must be (batch, ny, nx, {len(self.inputs)}) with channels "
                    f"{list(self.inputs)}; got shape {tuple(x.shape)}"
                )
        return self.model(x, training=training)

    # --------------------------------------------------------------- helpers
    def _stack_tensors(self, named: Mapping) -> tf.Tensor:
        known = set(INPUT_CHANNELS)
        unknown = sorted(set(named) - known)
        if unknown:
            raise InputError(f"unknown input(s) {unknown}; this model takes {list(self.inputs)}")
        extra = sorted(set(named) - set(self.inputs))
        if extra:
            raise InputError(
                f"this model ({self.name!r}) has no input(s) {extra}; it takes {list(self.inputs)} "
                f"and was trained with {self.physics}"
            )
        for required in ("thickness", "surface_slope_x", "surface_slope_y") + (
            ("grid_spacing",) if "grid_spacing" in self.inputs else ()
        ):
            if required not in named:
                raise InputError(f"missing input {required!r}; this model takes {list(self.inputs)}")
        thickness = tf.cast(named["thickness"], tf.float32)
        if thickness.shape.rank != 3:
            raise InputError(f"thickness must be (batch, ny, nx); got shape {tuple(thickness.shape)}")
        defaults = {"sliding_coefficient": self.physics.sliding_coefficient,
                    "rate_factor": self.physics.rate_factor}
        channels = []
        for name in self.inputs:
            value = tf.cast(named.get(name, defaults.get(name)), tf.float32)
            if value.shape.rank not in (0, 3):
                raise InputError(f"{name} must be a scalar or (batch, ny, nx); got shape {tuple(value.shape)}")
            channels.append(tf.broadcast_to(value, tf.shape(thickness)))
        return tf.stack(channels, axis=-1)

    def _warn_extent(self, thickness) -> None:
        """Warn once per emulator when the ice spans more cells than :data:`WIDE_ICE_CELLS`."""
        if getattr(self, "_warned_extent", False):
            return
        trained = self.metadata.largest_training_grid
        extent = ice_extent_cells(thickness)
        if extent <= max(WIDE_ICE_CELLS, trained):
            return
        self._warned_extent = True
        seen = f"trained on grids of {trained} x {trained} nodes" if trained else "trained on smaller glaciers"
        example = EXAMPLE_EXTENT_ERRORS
        warnings.warn(
            f"the ice spans {extent} grid cells across, more than {WIDE_ICE_CELLS}; emulator "
            f"{self.name!r} was {seen}, and its error grows with the number of cells (the "
            f"bundled example glacier, {example.model}: {example.percentages()}): predict on a "
            "coarser grid (coarsen='auto', the CLI's --coarsen auto: "
            f"{100 * example.coarsen_auto_at_50m:.0f} % at 50 m), or check against the reference "
            "solver (run --check-every)", ExtentWarning, stacklevel=4)

    def _check_spacing(self, dx, dy) -> Tuple[float, float]:
        dy = dx if dy is None else dy
        for name, value in (("dx", dx), ("dy", dy)):
            if not (np.ndim(value) == 0 and np.isfinite(value) and value > 0):
                raise InputError(f"grid spacing {name} must be a positive number of metres; got {value!r}")
        dx, dy = float(dx), float(dy)
        if abs(dx - dy) > 1e-6 * dx:
            raise InputError(
                f"grid spacing dx = {dx:g} m and dy = {dy:g} m differ; the emulator needs square "
                "cells (resample the grid)"
            )
        if not self.metadata.covers_spacing(dx):
            lo, hi = self.metadata.grid_spacing_range
            raise InputError(
                f"grid spacing dx = {dx:g} m is outside the range {lo:g} to {hi:g} m that emulator "
                f"{self.name!r} was trained for; resample the grid or use the reference solver"
            )
        return dx, dy

    @staticmethod
    def _field(name: str, value, shape) -> np.ndarray:
        """A scalar, ``(ny, nx)`` or ``(B, ny, nx)`` field broadcast to ``shape`` (checked finite)."""
        arr = np.asarray(value, dtype=np.float64)
        if arr.ndim == 0 or arr.shape == shape[1:] or arr.shape == shape:
            arr = np.broadcast_to(arr, shape)
        else:
            expected = f"a scalar, {shape[1:]}" + (f" or {shape}" if shape[0] > 1 else "")
            raise InputError(f"{name} has shape {arr.shape}; expected {expected}")
        _check_finite(name, arr)
        return arr

    def _to_velocity(self, y: np.ndarray) -> Velocity:
        """``(ny, nx, K)`` model output -> Velocity."""
        if not self.has_levels:
            return Velocity(ubar=y[..., 0].copy(), vbar=y[..., 1].copy())
        nz = int(self.vertical.levels)
        u = np.moveaxis(y[..., :nz], -1, 0).copy()
        v = np.moveaxis(y[..., nz:], -1, 0).copy()
        return Velocity.from_levels(u, v, self.vertical.zeta)


REFINE_STARTS = ("auto", "levels", "shallow-ice")
"""Where solver refinement starts (:meth:`Emulator.with_refine`, :meth:`Emulator.refine_source`)."""

_VELOCITY_HEAD = "velocity_head"  # the U-Net's last layer (GlacierUNet): 1 x 1 conv to the outputs


def _depth_averaged_head(weights, w) -> Tuple[np.ndarray, np.ndarray]:
    """The kernel and bias of a 3-D model's velocity head (u then v on the levels) contracted
    with the depth-average weights ``w`` of the levels: those of its (ubar, vbar) (float64)."""
    kernel, bias = (np.asarray(a, np.float64) for a in weights)
    nz = len(w)
    kernel = np.stack([kernel[..., :nz] @ w, kernel[..., nz:] @ w], axis=-1)
    bias = np.array([bias[:nz] @ w, bias[nz:] @ w])
    return kernel, bias


def _check_depth_averaged_from(flat: Emulator, deep: Emulator, path: Path) -> None:
    """Raise InputError unless ``flat`` is :meth:`Emulator.depth_averaged` of ``deep`` (loaded
    from ``path``): same inputs, physics and levels, every weight the same but the velocity head,
    and that one ``deep``'s contracted by the depth-average weights (to float32 round-off)."""
    prefix = (f"{path}: not the 3-D model that {flat.name!r} was made from (its metadata's "
              f"levels_model {flat.metadata.levels_model!r})")
    if not deep.has_levels:
        raise InputError(f"{prefix}: it is depth-averaged itself")
    if (deep.inputs != flat.inputs or deep.physics != flat.physics
            or not np.allclose(deep.vertical.zeta, flat.vertical.zeta)):
        raise InputError(f"{prefix}: its inputs, physics or levels differ")
    w = np.asarray(flat.vertical.depth_average_weights, np.float64)
    for layer in flat.model.layers:
        mine = layer.get_weights()
        try:
            theirs = deep.model.get_layer(layer.name).get_weights()
        except ValueError:
            raise InputError(f"{prefix}: it has no layer {layer.name!r}") from None
        if layer.name == _VELOCITY_HEAD and len(theirs) == 2:
            theirs = _depth_averaged_head(theirs, w)
            same = all(a.shape == b.shape and np.allclose(a, b, rtol=1e-5, atol=1e-6 * np.abs(b).max())
                       for a, b in zip(mine, theirs))
        else:
            same = len(mine) == len(theirs) and all(
                a.shape == b.shape and np.array_equal(a, b) for a, b in zip(mine, theirs))
        if not same:
            raise InputError(f"{prefix}: the weights of layer {layer.name!r} differ")


def _describe(arr) -> str:
    arr = np.asarray(arr)
    if arr.size == 1:
        return f"{float(arr):g}"
    return f"in [{arr.min():g}, {arr.max():g}]"


def _check_finite(name: str, arr: np.ndarray) -> None:
    bad = ~np.isfinite(arr)
    if np.any(bad):
        raise InputError(f"{name} contains NaN or infinite values ({int(bad.sum())} nodes)")


def _check_range(name: str, arr: np.ndarray, bounds, units: str, hint: str = "") -> None:
    if np.size(arr) == 0:
        return
    lo, hi = bounds
    amin, amax = float(np.min(arr)), float(np.max(arr))
    if amin < lo or amax > hi:
        raise InputError(
            f"{name} spans [{amin:.4g}, {amax:.4g}] {units}, outside the plausible range "
            f"[{lo:g}, {hi:g}]{hint}"
        )


def input_channels(
    geometry: Geometry,
    *,
    inputs: Sequence[str] = INPUT_CHANNELS[:4],
    physics: Physics = DEFAULT_PHYSICS,
) -> np.ndarray:
    """The model input of one geometry, ``(ny, nx, C)`` float32, without range checks.

    For building training data with exactly the channels the emulator computes at run time.
    ``geometry.sliding_coefficient`` / ``rate_factor`` default to ``physics``.

    Example:
        >>> g = Geometry(thickness=np.full((4, 5), 100.0), bed=np.zeros((4, 5)), dx=50.0)
        >>> input_channels(g).shape
        (4, 5, 4)
    """
    sx, sy = geometry.slopes()
    shape = geometry.shape
    sliding = geometry.sliding_coefficient
    sliding = physics.sliding_coefficient if sliding is None else sliding
    rate = physics.rate_factor if geometry.rate_factor is None else geometry.rate_factor
    channels = {
        "thickness": geometry.thickness,
        "surface_slope_x": sx,
        "surface_slope_y": sy,
        "sliding_coefficient": np.broadcast_to(sliding, shape),
        "rate_factor": np.broadcast_to(rate, shape),
        "grid_spacing": np.full(shape, geometry.dx),
    }
    unknown = [n for n in inputs if n not in channels]
    if unknown:
        raise ValueError(
            f"Unknown input channel(s) {unknown}; known: {list(INPUT_CHANNELS)}. Received: inputs={inputs!r}"
        )
    return np.stack([channels[n] for n in inputs], axis=-1).astype(np.float32)


def geometry_from_dataset(ds) -> Geometry:
    """A minimal :class:`~glacier_emulator.fields.Geometry` from an ``xarray.Dataset``.

    Reads ``thk`` and ``usurf`` (or ``topg``) on coordinates ``y``, ``x`` (m), and, if present,
    ``slidingco`` and ``arrhenius``; size-1 dimensions (a single time) are dropped, and a
    descending ``y`` is put in ascending order. The full reader with unit conversion is
    :func:`glacier_emulator.io.netcdf.read_geometry`.
    """
    def grid(name):
        var = ds[name].squeeze(drop=True)
        if var.dims != ("y", "x"):
            try:
                var = var.transpose("y", "x")
            except ValueError as exc:
                raise InputError(f"variable {name!r} has dimensions {ds[name].dims}; expected (y, x)") from exc
        return var

    if "thk" not in ds:
        raise InputError(f"the dataset has no 'thk' (ice thickness, m) variable; found {sorted(ds.data_vars)}")
    if "usurf" not in ds and "topg" not in ds:
        raise InputError("the dataset has neither 'usurf' (surface elevation) nor 'topg' (bed elevation)")
    for coord in ("x", "y"):
        if coord not in ds.coords or ds[coord].size < 2:
            raise InputError(f"the dataset needs a coordinate {coord!r} (m) with at least 2 values")
    flip = bool(ds["y"].values[1] < ds["y"].values[0])
    fields = {}
    for name in ("thk", "usurf", "topg", "slidingco", "arrhenius"):
        if name in ds:
            arr = np.asarray(grid(name).values, dtype=np.float64)
            fields[name] = arr[::-1] if flip else arr
    x = np.asarray(ds["x"].values, float)
    y = np.asarray(ds["y"].values, float)
    y = y[::-1] if flip else y
    dx = float(np.mean(np.diff(x)))
    dy = float(np.mean(np.diff(y)))
    thickness = fields["thk"]
    bed = fields["topg"] if "topg" in fields else fields["usurf"] - thickness
    return Geometry(
        thickness=thickness, bed=bed, dx=dx, dy=dy, x=x, y=y,
        sliding_coefficient=fields.get("slidingco"), rate_factor=fields.get("arrhenius"),
        attrs=dict(ds.attrs),
    )
