r"""Training the emulator: supervised, physics-informed or hybrid, resumable, data-parallel.

:func:`train` reads the data (:mod:`glacier_emulator.learning.data`), builds a
:class:`~glacier_emulator.models.GlacierUNet` and runs a custom training loop:

* under a ``tf.distribute`` strategy: ``MirroredStrategy`` over the local devices (every GPU,
  else every logical CPU device), or ``MultiWorkerMirroredStrategy`` when ``TF_CONFIG`` is set.
  Each replica computes the per-example loss of its share of the batch and divides by the
  *global* batch size (``tf.nn.compute_average_loss``), so gradients summed over replicas are
  those of the global mean, whatever the number of replicas;
* with the objective of :mod:`glacier_emulator.learning.losses` (``mode``: ``supervised``,
  ``physics`` or ``hybrid``) and Adam with a warm-up then cosine or exponential decay;
* with a ``tf.function``-compiled step (the energy optionally XLA-compiled, ``jit_energy``).

Files written next to ``OUTPUT.keras``:

* ``OUTPUT.ckpt/``: ``tf.train.Checkpoint`` (model, optimizer with its step count, the step,
  the early-stopping state) every ``checkpoint_every`` steps, via a ``CheckpointManager``;
  ``OUTPUT.ckpt/best/`` holds the weights of the best validation so far; ``config.json`` the
  settings of the run (a resumed run must use compatible ones). The training stream is a pure
  function of the seed and the step (see :mod:`~glacier_emulator.learning.data`), so
  ``resume=True`` continues the same sequence of batches and the same loss curve;
* ``OUTPUT.log.csv``: step, loss (and its terms), learning rate, validation metrics, wall time;
* at the end ``OUTPUT.keras`` + ``OUTPUT.json`` via :meth:`glacier_emulator.emulator.Emulator.save`
  (no optimizer state), with the best validation weights (``keep: final``: the last step's) and
  metadata: data, config, mode and the measured validation accuracy.

Training draws the initial weights after ``keras.utils.set_random_seed(seed)`` (which seeds
Python's, NumPy's and TensorFlow's global generators).
"""
from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from ..constants import DEFAULT_PHYSICS, DEFAULT_VERTICAL, Physics, VerticalDiscretisation
from ..fields import InputError
from .data import (
    StreamConfig,
    TrainingData,
    check_physics,
    load_data,
    make_dataset_fn,
    resolve_crop,
    resolve_wide_crop,
    validation_batches,
)
from .losses import MODES, LossConfig, Objective, make_energy_fn, relative_l2_sums

PathLike = Union[str, os.PathLike]

SCHEDULES = ("cosine", "exponential", "constant")
LOG_COLUMNS = (
    "step", "loss", "supervised", "physics", "learning_rate", "val_loss", "val_supervised",
    "val_physics", "val_rel_l2", "val_energy_gap", "time_s",
)
MONITORS = ("auto", "val_loss", "val_rel_l2", "val_physics", "val_energy_gap")
# settings that must not change when a run is resumed
_RESUME_FIXED = ("mode", "batch_size", "crop_size", "wide_crop_size", "wide_every", "mirror",
                 "rotate", "speed_scaling",
                 "validation_fraction",
                 "seed", "model", "init_from", "output_init_scale", "physics", "vertical", "loss",
                 "learning_rate", "schedule",
                 "warmup_steps", "decay_rate", "decay_steps", "final_learning_rate_fraction")


class TrainingDiverged(ValueError):
    """The training loss became NaN or infinite."""


@dataclass(frozen=True)
class TrainConfig:
    """Settings of a training run (a YAML file of these keys: :meth:`from_yaml`).

    Args:
        mode: ``"supervised"`` (labels), ``"physics"`` (the Blatter-Pattyn energy, no labels
            needed) or ``"hybrid"`` (weighted sum, weights in ``loss``).
        steps: optimizer steps in total (a resumed run continues up to this).
        batch_size: the global batch (split across replicas; divisible by their number).
        learning_rate: peak learning rate of Adam.
        schedule: ``"cosine"`` (to ``final_learning_rate_fraction`` of the peak at ``steps``),
            ``"exponential"`` (times ``decay_rate`` every ``decay_steps``) or ``"constant"``,
            each after a linear warm-up of ``warmup_steps``.
        crop_size: training crop in nodes: None (the smallest grid of the data), an int (square)
            or ``[ny, nx]``; validation always uses whole grids.
        wide_crop_size, wide_every: None (default), or a larger crop (int or ``[ny, nx]``) that
            every ``wide_every``-th step's batch takes from the training glaciers whose grid
            holds it (e.g. 96-node crops of the 96 x 96 glaciers among 64 x 64 ones, whose
            64-node crops make the other steps): context beyond the small crop for the
            glaciers that span many cells. Such a step costs about (wide / crop)^2 as much.
        mirror, rotate: random mirrors and 90-degree rotations (square crops) of training samples.
        speed_scaling: ``[low, high]`` or None: each training element is replaced by the glacier
            that flows mu times as fast, mu log-uniform in the range (rate factor times mu,
            sliding coefficient times mu^-m, velocities times mu: an exact symmetry of the
            Blatter-Pattyn equations with Weertman sliding, ``learning.data.scale_speed``).
            Needs the rate factor as a model input (``in_channels >= 5``).
        validation_fraction: share of the files held out (split by file, by ``seed``).
        validate_every: steps between validations (also at the last step).
        checkpoint_every: steps between checkpoints (also at the last step).
        keep_checkpoints: how many checkpoints to keep.
        early_stopping_patience: stop after this many validations without improvement of
            ``monitor`` (0: never); with ``keep: best`` the model file gets the weights of the
            best validation.
        early_stopping_min_delta: an improvement is a decrease of ``monitor`` by more than this.
        monitor: the validation metric to select and stop on; ``"auto"``: ``val_rel_l2`` for
            supervised and hybrid, ``val_physics`` (the normalised energy) for physics training.
        keep: the weights the model file gets: ``"best"`` (of ``monitor`` over the validations)
            or ``"final"`` (of the last step, when the pooled ``monitor`` is not the measure the
            run is judged by; validation is still run, logged and drives early stopping).
        log_every: steps between rows of the CSV log (validation steps always get one).
        seed: seed of the weights, the split and the data stream.
        jit_energy: XLA-compile the energy. Off by default: for the per-example energy of
            mixed grid spacings the compilation takes about a minute on CPU (measured: 78 s for
            a batch of 4 on 16 x 16 grids) for no gain at these sizes.
        output_init_scale: the initial kernel of the U-Net's output layer is multiplied by this
            (1 = the Keras default), so that the untrained network predicts slow flow. Without it,
            the first steps of physics training can drive every hidden unit dead (measured: one
            seed in three ended on a spatially uniform velocity).
        model: constructor arguments of :class:`~glacier_emulator.models.GlacierUNet`;
            ``velocity_scale: auto`` sets it to the RMS speed of the labels.
        init_from: a ``.keras`` model (e.g. a shipped one, or an earlier run) to start from:
            fine-tuning. Its architecture and weights are used (``model`` may then only repeat
            its settings; ``output_init_scale`` is ignored); a relative path is taken from the
            working directory.
        physics: :class:`~glacier_emulator.constants.Physics` constants (default: those the
            labels were computed with, as the files record, else the package defaults).
        vertical: :class:`~glacier_emulator.constants.VerticalDiscretisation` of the levels
            (default: those of the 3-D labels).
        loss: :class:`~glacier_emulator.learning.losses.LossConfig` settings.
        grid_spacing_range: ``[min, max]`` grid spacing (m) the model is declared valid for,
            written into its metadata (``Emulator`` refuses grids outside it): the range the
            training glaciers were drawn from (``make-dataset`` draws 50-200 m). It must contain
            every training glacier's spacing. None: the smallest and largest spacing of the
            training glaciers (which, for glaciers drawn from 50-200 m, refuses 200 m exactly).
            The spacings seen are recorded either way (``training_data["grid_spacings_seen"]``).
        name, description, version, default: written into the model metadata (name: the file
            stem unless given; ``default``: the model ``Emulator.pretrained()`` picks).
    """

    mode: str = "supervised"
    steps: int = 1000
    batch_size: int = 8
    learning_rate: float = 1e-3
    schedule: str = "cosine"
    warmup_steps: int = 0
    decay_rate: float = 0.1
    decay_steps: Optional[int] = None
    final_learning_rate_fraction: float = 0.01
    crop_size: Any = None
    wide_crop_size: Any = None
    wide_every: int = 4
    mirror: bool = True
    rotate: bool = True
    speed_scaling: Optional[List[float]] = None
    validation_fraction: float = 0.1
    validate_every: int = 100
    checkpoint_every: int = 500
    keep_checkpoints: int = 3
    early_stopping_patience: int = 0
    early_stopping_min_delta: float = 0.0
    monitor: str = "auto"
    keep: str = "best"
    log_every: int = 1
    seed: int = 0
    jit_energy: bool = False
    output_init_scale: float = 0.1
    model: Dict[str, Any] = field(default_factory=dict)
    init_from: Optional[str] = None
    physics: Dict[str, Any] = field(default_factory=dict)
    vertical: Dict[str, Any] = field(default_factory=dict)
    loss: Dict[str, Any] = field(default_factory=dict)
    grid_spacing_range: Optional[List[float]] = None
    name: Optional[str] = None
    description: str = ""
    version: str = "0.0.0"
    default: bool = False

    def __post_init__(self):
        set_ = object.__setattr__
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}. Received: mode={self.mode!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}. Received: {self.schedule!r}")
        if self.monitor not in MONITORS:
            raise ValueError(f"monitor must be one of {MONITORS}. Received: {self.monitor!r}")
        if self.keep not in ("best", "final"):
            raise ValueError(f"keep must be 'best' or 'final'. Received: {self.keep!r}")
        positive = ("steps", "batch_size", "validate_every", "checkpoint_every", "keep_checkpoints",
                    "log_every")
        for name in positive:
            value = getattr(self, name)
            if int(value) != value or value < 1:
                raise ValueError(f"{name} must be a positive integer. Received: {name}={value!r}")
            set_(self, name, int(value))
        for name in ("warmup_steps", "early_stopping_patience"):
            value = getattr(self, name)
            if int(value) != value or value < 0:
                raise ValueError(f"{name} must be an integer >= 0. Received: {name}={value!r}")
            set_(self, name, int(value))
        if not (np.isfinite(self.learning_rate) and self.learning_rate > 0):
            raise ValueError(f"learning_rate must be > 0. Received: {self.learning_rate!r}")
        if not 0 < self.decay_rate <= 1:
            raise ValueError(f"decay_rate must be in (0, 1]. Received: {self.decay_rate!r}")
        if self.decay_steps is not None and int(self.decay_steps) < 1:
            raise ValueError(f"decay_steps must be >= 1. Received: {self.decay_steps!r}")
        if not 0 <= self.final_learning_rate_fraction <= 1:
            raise ValueError("final_learning_rate_fraction must be in [0, 1]. "
                             f"Received: {self.final_learning_rate_fraction!r}")
        if not (np.isfinite(self.early_stopping_min_delta) and self.early_stopping_min_delta >= 0):
            raise ValueError("early_stopping_min_delta must be >= 0. "
                             f"Received: {self.early_stopping_min_delta!r}")
        if not (np.isfinite(self.output_init_scale) and self.output_init_scale > 0):
            raise ValueError(f"output_init_scale must be > 0. Received: {self.output_init_scale!r}")
        if not 0 <= self.validation_fraction < 1:
            raise ValueError(f"validation_fraction must be in [0, 1). Received: {self.validation_fraction!r}")
        for name, what in (("speed_scaling", "[low, high] with 0 < low <= high"),
                           ("grid_spacing_range", "[min, max] in m with 0 < min <= max")):
            bounds = getattr(self, name)
            if bounds is None:
                continue
            ok = (isinstance(bounds, (list, tuple)) and len(bounds) == 2
                  and all(isinstance(b, (int, float)) and not isinstance(b, bool) and np.isfinite(b)
                          for b in bounds)
                  and 0 < bounds[0] <= bounds[1])
            if not ok:
                raise ValueError(f"{name} must be {what}. Received: {name}={bounds!r}")
            set_(self, name, [float(b) for b in bounds])
        for name in ("crop_size", "wide_crop_size"):
            if isinstance(getattr(self, name), (list, tuple)):
                set_(self, name, [int(c) for c in getattr(self, name)])
        if int(self.wide_every) != self.wide_every or self.wide_every < 2:
            raise ValueError(f"wide_every must be an integer >= 2. Received: wide_every={self.wide_every!r}")
        set_(self, "wide_every", int(self.wide_every))
        for name in ("model", "physics", "vertical", "loss"):
            value = getattr(self, name)
            if value is None:
                value = {}
            if not isinstance(value, dict):
                raise ValueError(f"{name} must be a mapping. Received: {name}={value!r}")
            set_(self, name, dict(value))
        LossConfig.from_dict(self.loss)  # validates early
        if self.physics:
            Physics.from_dict(self.physics)
        if self.vertical:
            VerticalDiscretisation(**self.vertical)

    def replace(self, **changes) -> "TrainConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Optional[dict]) -> "TrainConfig":
        """From a mapping of the field names (a ``train:`` section is unwrapped)."""
        values = dict(values or {})
        if set(values) == {"train"} or ("train" in values and isinstance(values["train"], dict)):
            inner = dict(values.pop("train"))
            inner.update(values)
            values = inner
        from ..constants import dataclass_from_mapping

        return dataclass_from_mapping(cls, values, what="unknown training setting")

    @classmethod
    def from_yaml(cls, path: PathLike, **overrides) -> "TrainConfig":
        """Read a YAML file of settings; ``overrides`` (not None) replace them."""
        from ..io.yaml_config import read_yaml_mapping

        values = read_yaml_mapping(path, what="training config")
        values.update({k: v for k, v in overrides.items() if v is not None})
        try:
            return cls.from_dict(values)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{path}: {exc}") from None


# ------------------------------------------------------------------------- helpers
def make_schedule(config: TrainConfig):
    """The learning-rate schedule (a Keras ``LearningRateSchedule`` of the optimizer step)."""
    import keras
    import tensorflow as tf

    peak = float(config.learning_rate)
    warmup = int(config.warmup_steps)
    total = max(int(config.steps) - warmup, 1)
    decay_steps = float(config.decay_steps or config.steps)
    kind = config.schedule
    alpha = float(config.final_learning_rate_fraction)
    rate = float(config.decay_rate)

    class WarmupDecay(keras.optimizers.schedules.LearningRateSchedule):
        """Linear warm-up to the peak, then cosine / exponential decay or constant."""

        def __call__(self, step):
            step = tf.cast(step, tf.float32)
            after = tf.maximum(step - warmup, 0.0)
            if kind == "cosine":
                t = tf.minimum(after / total, 1.0)
                lr = peak * (alpha + (1 - alpha) * 0.5 * (1 + tf.cos(math.pi * t)))
            elif kind == "exponential":
                lr = peak * tf.pow(rate, after / decay_steps)
            else:
                lr = tf.constant(peak, tf.float32)
            if warmup > 0:
                lr = tf.where(step < warmup, peak * (step + 1.0) / warmup, lr)
            return lr

        def get_config(self):
            return {"kind": kind, "peak": peak, "warmup": warmup}

    return WarmupDecay()


def make_strategy():
    """``MultiWorkerMirroredStrategy`` if ``TF_CONFIG`` is set, else ``MirroredStrategy`` over
    every local GPU, or every logical CPU device when there is no GPU."""
    import tensorflow as tf

    if os.environ.get("TF_CONFIG"):
        return tf.distribute.MultiWorkerMirroredStrategy()
    if tf.config.list_logical_devices("GPU"):
        return tf.distribute.MirroredStrategy()
    cpus = [d.name for d in tf.config.list_logical_devices("CPU")]
    return tf.distribute.MirroredStrategy(devices=cpus)


def _is_chief(strategy) -> bool:
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not os.environ.get("TF_CONFIG"):
        return True
    task_type, task_id = resolver.task_type, resolver.task_id
    if task_type in (None, "chief"):
        return True
    has_chief = "chief" in (resolver.cluster_spec().as_dict() or {})
    return task_type == "worker" and task_id == 0 and not has_chief


def _resolve_vertical(config: TrainConfig, data: TrainingData, out_channels: int) -> VerticalDiscretisation:
    if config.vertical:
        vertical = VerticalDiscretisation(**config.vertical)
        if data.vertical is not None and data.layout.has_levels and (
            vertical.levels != data.vertical.levels
            or not np.allclose(vertical.zeta, data.vertical.zeta, atol=1e-6)
        ):
            raise InputError(
                f"vertical = {config.vertical} differs from the levels of the 3-D labels in "
                f"{data.samples[0].path} (levels={data.vertical.levels}, "
                f"spacing={data.vertical.spacing:g}); remove it from the config"
            )
    elif data.vertical is not None:
        vertical = data.vertical
    elif out_channels > 2:
        vertical = VerticalDiscretisation(levels=out_channels // 2)
    else:
        vertical = DEFAULT_VERTICAL
    if out_channels > 2 and out_channels != 2 * vertical.levels:
        raise InputError(f"the model outputs {out_channels} channels (= {out_channels // 2} levels) "
                         f"but the data/config has {vertical.levels} levels; set "
                         f"model.out_channels: {2 * vertical.levels}")
    return vertical


def _initial_model(config: TrainConfig):
    """The model ``init_from`` names (None without one), loaded in safe mode."""
    if not config.init_from:
        return None
    import keras

    from ..models import unet as _registered  # noqa: F401  (registers the layers)

    path = Path(config.init_from)
    if path.suffix != ".keras" or not path.is_file():
        raise InputError(f"init_from: {path}: no such .keras model file")
    try:
        return keras.saving.load_model(path, compile=False, safe_mode=True)
    except Exception as exc:  # a broken or foreign file
        raise InputError(f"init_from: {path}: cannot load the model ({exc})") from None


def prior_arguments(prior, physics: Physics) -> Optional[dict]:
    """``model.prior`` of a config with the physical constants the training physics fixes.

    ``prior: true`` or ``prior: {smoothing: 2}`` in a config; ``rho_g``, ``glen_exponent``,
    ``sliding_exponent`` and ``rate_factor`` come from ``physics`` unless given.
    """
    if prior is None or prior is False:
        return None
    from ..physics.sia import local_flow_constants

    prior = {} if prior is True else dict(prior)
    return {**local_flow_constants(physics), **prior}


def _architecture(config: TrainConfig, data: TrainingData, initial=None,
                  physics: Physics = DEFAULT_PHYSICS) -> dict:
    if initial is not None:
        arch = initial.constructor_arguments()
        for key, value in config.model.items():
            if key == "prior":
                value = prior_arguments(value, physics)
            if key in arch and value != "auto" and value != arch[key]:
                raise InputError(f"model.{key} = {value!r} differs from init_from "
                                 f"{config.init_from} ({arch[key]!r}); remove it from the config")
        return arch
    arch = dict(config.model)
    if "prior" in arch:
        arch["prior"] = prior_arguments(arch["prior"], physics)
    if arch.get("velocity_scale") == "auto":
        if not data.layout.has_labels:
            raise ValueError("model.velocity_scale: auto needs labels; give a number (m/yr)")
        speeds = [np.hypot(s.fields[..., 7], s.fields[..., 8])[s.fields[..., 0] > 0]
                  for s in data.samples]
        speeds = np.concatenate([v for v in speeds if v.size] or [np.ones(1)])
        rms = float(np.sqrt(np.mean(speeds**2))) or 1.0
        arch["velocity_scale"] = float(f"{rms:.2g}")
    return arch


def _config_digest(config: TrainConfig, files: Sequence[str]) -> dict:
    d = config.to_dict()
    out = {k: d[k] for k in _RESUME_FIXED}
    out["files"] = [os.path.basename(f) for f in files]
    return json.loads(json.dumps(out))


def _read_log(path: Path, max_step: int) -> List[dict]:
    if not path.is_file():
        return []
    with path.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    return [r for r in rows if r.get("step") and int(r["step"]) <= max_step]


class _CsvLog:
    """The plain CSV log ``OUTPUT.log.csv`` (rewritten with the kept rows on resume)."""

    def __init__(self, path: Optional[Path], keep: List[dict]):
        self.path = path
        if path is None:
            self.fh = None
            return
        self.fh = path.open("w", newline="")
        self.writer = csv.DictWriter(self.fh, fieldnames=LOG_COLUMNS, extrasaction="ignore")
        self.writer.writeheader()
        for row in keep:
            self.writer.writerow(row)
        self.fh.flush()

    def write(self, row: dict) -> None:
        if self.fh is None:
            return
        self.writer.writerow({k: _fmt(row.get(k)) for k in LOG_COLUMNS})
        self.fh.flush()

    def close(self) -> None:
        if self.fh is not None:
            self.fh.close()


def _fmt(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.8g}"
    return str(value)


# ------------------------------------------------------------------------- evaluation
def evaluate(model, data: TrainingData, *, objective: Objective, batch_size: int = 8,
             evaluator=None) -> Dict[str, float]:
    """Metrics of ``model`` on whole grids of ``data`` (no augmentation).

    Returns:
        ``loss`` (mean objective), ``supervised`` and ``physics`` (mean terms, when the mode has
        them), ``physics`` is always computed (the normalised energy, dimensionless),
        ``rel_l2`` (relative L2 error of (ubar, vbar) on ice over the set, when labelled),
        ``energy_gap`` (mean of (E(net) - E(label)) / |E(label)|, with 3-D labels), ``samples``.
    """
    evaluator = evaluator or make_evaluator(model, objective)
    sums: Dict[str, float] = {}
    gaps: List[float] = []
    count = 0
    for fields_, spacing in validation_batches(data, batch_size=batch_size):
        out = {k: v.numpy() for k, v in evaluator(fields_, spacing).items()}
        n = len(fields_)
        count += n
        for key in ("loss", "supervised", "physics"):
            if key in out:
                sums[key] = sums.get(key, 0.0) + float(np.sum(out[key]))
        if "l2_num" in out:
            sums["l2_num"] = sums.get("l2_num", 0.0) + float(np.sum(out["l2_num"]))
            sums["l2_den"] = sums.get("l2_den", 0.0) + float(np.sum(out["l2_den"]))
        if "energy_label" in out:
            e_net, e_lab = out["energy_net"], out["energy_label"]
            gaps += [float((a - b) / abs(b)) for a, b in zip(e_net, e_lab) if b != 0]
    metrics: Dict[str, float] = {"samples": count}
    if count == 0:
        return metrics
    for key in ("loss", "supervised", "physics"):
        if key in sums:
            metrics[key] = sums[key] / count
    if "l2_num" in sums:
        den = sums["l2_den"]
        metrics["rel_l2"] = float(np.sqrt(sums["l2_num"] / den)) if den > 0 else float("nan")
    if gaps:
        metrics["energy_gap"] = float(np.mean(gaps))
    return metrics


def make_evaluator(model, objective: Objective):
    """A compiled ``f(fields, spacing) -> dict of per-example tensors`` for :func:`evaluate`.

    Batches must share one grid spacing (as :func:`~.data.validation_batches` groups them).
    The energy of the prediction is computed once and serves both the physics term and the
    energy gap.
    """
    import tensorflow as tf

    from .losses import label_levels, output_levels, supervised_loss

    layout = objective.layout
    n_in = int(model.inputs[0].shape[-1])
    energy = make_energy_fn(physics=objective.physics, vertical=objective.vertical,
                            batch_shares_spacing=True)
    spec = [tf.TensorSpec((None, None, None, layout.channels), tf.float32),
            tf.TensorSpec((None, 2), tf.float32)]

    @tf.function(input_signature=spec, autograph=False)
    def evaluator(fields_, spacing):
        y = model(fields_[..., :n_in], training=False)
        u, v = output_levels(y, vertical=objective.vertical, physics=objective.physics,
                             basal_fraction=objective.config.basal_fraction)
        e_net = energy(u, v, fields_, spacing)
        out = {"physics": objective.normalise_energy(e_net, fields_, spacing)}
        if layout.has_labels:
            out["supervised"] = supervised_loss(y, fields_, layout=layout,
                                                vertical=objective.vertical, config=objective.config)
            out["l2_num"], out["l2_den"] = relative_l2_sums(y, fields_, vertical=objective.vertical)
        out["loss"] = objective.combine(out)
        if layout.has_levels:
            out["energy_net"] = e_net
            lu, lv = label_levels(fields_, layout)
            out["energy_label"] = energy(lu, lv, fields_, spacing)
        return out

    return evaluator


# ------------------------------------------------------------------------------ training
def _spacing_range(config: TrainConfig, data) -> Tuple[float, float]:
    """The grid-spacing range the model is declared valid for (``config.grid_spacing_range``,
    which must contain every training glacier's spacing), else that of the training glaciers."""
    from ..emulator import spacing_in_range

    spacings = data.spacings  # (N, 2): dx, dy
    if config.grid_spacing_range is None:
        return float(spacings.min()), float(spacings.max())
    lo, hi = config.grid_spacing_range
    outside = [(f, row) for f, row in zip(data.files, spacings)
               if not all(spacing_in_range(d, (lo, hi)) for d in row)]
    if outside:
        f, row = outside[0]
        raise InputError(f"{f}: grid spacing {' x '.join(f'{v:g}' for v in row)} m is outside "
                         f"grid_spacing_range "
                         f"{lo:g}-{hi:g} m of the training config ({len(outside)} file(s) are); "
                         "widen the range or leave those files out")
    return float(lo), float(hi)


def train(
    files: Sequence[PathLike],
    output_path: PathLike,
    config: TrainConfig = TrainConfig(),
    *,
    resume: bool = False,
    validation: Optional[Sequence[PathLike]] = None,
    strategy=None,
    progress: Optional[bool] = None,
    stop_at_step: Optional[int] = None,
    log=None,
) -> dict:
    """Train an emulator on NetCDF samples and write ``OUTPUT.keras`` + ``OUTPUT.json``.

    Args:
        files: NetCDF files and folders of them (see :func:`~.data.load_data`).
        output_path: the model file, ``NAME.keras``.
        config: the settings (:class:`TrainConfig`).
        resume: continue from the latest checkpoint in ``NAME.ckpt/`` (a fresh start if there is
            none). Without it, existing checkpoints are an error (they belong to another run).
        validation: files and folders to validate on instead of holding out
            ``config.validation_fraction`` of ``files`` (e.g. a separately generated dataset).
        strategy: a ``tf.distribute`` strategy (default :func:`make_strategy`).
        progress: show a tqdm bar (default: when stderr is a terminal).
        stop_at_step: stop (after checkpointing) at this step as an interruption would, leaving
            the run resumable; the model file is not written then.
        log: a function taking one line of text for messages (default: print to stderr).

    Returns:
        A dict: ``history`` (per-step lists ``step``, ``loss``, ``supervised``, ``physics``,
        ``learning_rate`` of the steps run in this call), ``validation`` (one dict of
        metrics per validation), ``best`` (the selected metrics), ``final`` (the accuracy written
        into the metadata), ``step`` (the last step), ``replicas``, ``stopped_early``,
        ``model_path`` (None if not written), ``data`` (the data summary), ``metadata``.

    Raises:
        InputError: bad data (naming the file and variable) or settings that contradict the data.
        ValueError: bad settings; existing checkpoints without ``resume``.
    """
    import keras
    import tensorflow as tf
    from tqdm import tqdm

    from ..emulator import Emulator, ModelMetadata
    from ..models.unet import GlacierUNet

    say = log or (lambda line: print(line, file=sys.stderr))
    output = Path(output_path)
    if output.suffix != ".keras":
        raise ValueError(f"the model file name must end in .keras. Received: {str(output)!r}")
    ckpt_dir = output.with_suffix(".ckpt")
    log_path = output.with_suffix(".log.csv")

    # ---- data and the settings that depend on it
    explicit_physics = Physics.from_dict(config.physics) if config.physics else None
    data = load_data(files, physics=explicit_physics or DEFAULT_PHYSICS,
                     require_labels=config.mode != "physics")
    if explicit_physics is not None:
        check_physics(data, explicit_physics)
    physics = explicit_physics or data.physics or DEFAULT_PHYSICS
    initial = _initial_model(config)
    arch = _architecture(config, data, initial, physics)
    out_channels = int(arch.get("out_channels", 2))
    in_channels = int(arch.get("in_channels", 4))
    vertical = _resolve_vertical(config, data, out_channels)
    loss_config = LossConfig.from_dict(config.loss)
    if validation:
        train_data = data
        val_data = load_data(validation, physics=explicit_physics or DEFAULT_PHYSICS,
                             require_labels=config.mode != "physics")
        # physics-informed training needs no labels, but labelled validation data measure the
        # error against the solver: then the validation keeps its own (richer) layout
        physics_with_labels = config.mode == "physics" and not data.layout.has_labels
        if val_data.layout != data.layout and not physics_with_labels:
            raise InputError(f"the validation data have {val_data.layout.labels} labels "
                             f"(levels={val_data.layout.levels}) but the training data have "
                             f"{data.layout.labels} (levels={data.layout.levels})")
    else:
        train_data, val_data = data.split(validation_fraction=config.validation_fraction,
                                          seed=config.seed)
    crop = resolve_crop(train_data, config.crop_size)
    wide_crop, wide_count = resolve_wide_crop(train_data, config.wide_crop_size, crop)
    if wide_crop is not None:
        say(f"one step in {config.wide_every}: {wide_crop[0]} x {wide_crop[1]} crops of the "
            f"{wide_count} training glaciers whose grid holds them")
    spacing_range = _spacing_range(config, train_data)
    if config.speed_scaling is not None and in_channels < 5:
        raise ValueError(f"speed_scaling needs the rate factor as a model input (in_channels >= 5); "
                         f"the model has in_channels={in_channels}")
    for note in data.notes:
        say(f"note: {note}")
    if data.skipped:
        say(f"note: skipped {len(data.skipped)} file(s) whose solve did not converge "
            f"(e.g. {data.skipped[0]})")
    if in_channels < 5 and data.rate_factor_varies():
        say("warning: the rate factor varies between samples but the model has no rate_factor "
            "input (model.in_channels < 5); it cannot tell them apart")

    strategy = strategy or make_strategy()
    replicas = int(strategy.num_replicas_in_sync)
    if config.batch_size % replicas:
        raise ValueError(f"batch_size {config.batch_size} is not divisible by the {replicas} "
                         "replicas; choose a multiple")
    chief = _is_chief(strategy)

    # ---- checkpoints: fresh or resumed
    digest = _config_digest(config, train_data.files + val_data.files)
    config_file = ckpt_dir / "config.json"
    existing = ckpt_dir.is_dir() and tf.train.latest_checkpoint(str(ckpt_dir)) is not None
    if existing and not resume:
        raise ValueError(f"{ckpt_dir}: checkpoints of an earlier run exist; pass resume=True "
                         "(--resume) to continue it, or delete the folder to start afresh")
    if existing and config_file.is_file():
        previous = json.loads(config_file.read_text())
        defaults = TrainConfig().to_dict()  # for settings newer than the run being resumed
        changed = sorted(k for k in digest if previous.get(k, defaults.get(k)) != digest.get(k))
        if changed:
            raise ValueError(f"{ckpt_dir}: cannot resume: {', '.join(changed)} differ(s) from the "
                             "run being resumed (see its config.json)")
    if chief:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        config_file.write_text(json.dumps(digest, indent=2) + "\n")
    if chief:
        save_dir = ckpt_dir
    else:  # every worker saves (collective ops), the others into a folder of their own
        resolver = strategy.cluster_resolver
        save_dir = ckpt_dir / "workers" / f"{resolver.task_type}-{resolver.task_id}"
        save_dir.mkdir(parents=True, exist_ok=True)

    keras.utils.set_random_seed(int(config.seed))
    schedule = make_schedule(config)
    with strategy.scope():
        model = GlacierUNet(**arch)
        if initial is not None:
            model(np.zeros((1, 16, 16, int(arch["in_channels"])), np.float32))
            model.set_weights(initial.get_weights())
            say(f"starting from the weights of {config.init_from}")
        elif config.output_init_scale != 1.0:
            head = model.get_layer("velocity_head")
            head.kernel.assign(head.kernel * config.output_init_scale)
        optimizer = keras.optimizers.Adam(learning_rate=schedule)
        optimizer.build(model.trainable_variables)
        step_var = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
        best_var = tf.Variable(np.inf, dtype=tf.float64, trainable=False, name="best_metric")
        best_step_var = tf.Variable(-1, dtype=tf.int64, trainable=False, name="best_step")
        bad_var = tf.Variable(0, dtype=tf.int64, trainable=False, name="bad_validations")
    checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer, step=step_var,
                                     best_metric=best_var, best_step=best_step_var,
                                     bad_validations=bad_var)
    manager = tf.train.CheckpointManager(checkpoint, str(save_dir), max_to_keep=config.keep_checkpoints)
    best_checkpoint = tf.train.Checkpoint(model=model)
    best_manager = tf.train.CheckpointManager(best_checkpoint, str(save_dir / "best"), max_to_keep=1)
    latest = tf.train.latest_checkpoint(str(ckpt_dir))
    if resume and latest:
        checkpoint.restore(latest).assert_existing_objects_matched()
        say(f"resumed from {latest} at step {int(step_var.numpy())}")
    elif resume:
        say(f"no checkpoint in {ckpt_dir}: starting afresh")
    start = int(step_var.numpy())

    # ---- the objective and the compiled step
    uniform = train_data.uniform_spacing
    energy = make_energy_fn(physics=physics, vertical=vertical, uniform_spacing=uniform,
                            jit_compile=config.jit_energy)
    objective = Objective(mode=config.mode, layout=data.layout, vertical=vertical,
                          physics=physics, config=loss_config, energy=energy)
    global_batch = int(config.batch_size)

    def step_fn(fields_, spacing):
        x = fields_[..., :in_channels]
        with tf.GradientTape() as tape:
            y = model(x, training=True)
            per_example, parts = objective(y, fields_, spacing)
            loss = tf.nn.compute_average_loss(per_example, global_batch_size=global_batch)
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        out = {"loss": loss}
        for key, value in parts.items():
            out[key] = tf.nn.compute_average_loss(value, global_batch_size=global_batch)
        return out

    @tf.function(autograph=False)
    def train_step(iterator):
        fields_, spacing = next(iterator)
        per_replica = strategy.run(step_fn, args=(fields_, spacing))
        step_var.assign_add(1)
        return {k: strategy.reduce(tf.distribute.ReduceOp.SUM, v, axis=None)
                for k, v in per_replica.items()}

    val_objective = objective
    if val_data.layout != data.layout:
        val_objective = Objective(mode=config.mode, layout=val_data.layout, vertical=vertical,
                                  physics=physics, config=loss_config, energy=energy)
    evaluator = make_evaluator(model, val_objective)
    monitor = config.monitor
    if monitor == "auto":
        monitor = "val_physics" if config.mode == "physics" or not val_data.layout.has_labels else "val_rel_l2"
    if monitor in ("val_rel_l2",) and not val_data.layout.has_labels:
        raise ValueError(f"monitor {monitor} needs labels")
    if monitor == "val_energy_gap" and not val_data.layout.has_levels:
        raise ValueError("monitor val_energy_gap needs 3-D labels")

    # ---- the loop
    history: Dict[str, list] = {k: [] for k in ("step", "loss", "supervised", "physics", "learning_rate")}
    validations: List[dict] = []
    csv_log = _CsvLog(log_path if chief else None, _read_log(log_path, start) if resume else [])
    end = int(config.steps) if stop_at_step is None else min(int(stop_at_step), int(config.steps))
    stopped_early = False
    t0 = time.perf_counter()
    elapsed0 = 0.0
    if resume:
        kept = _read_log(log_path, start)
        if kept and kept[-1].get("time_s"):
            elapsed0 = float(kept[-1]["time_s"])
    show = (sys.stderr.isatty() if progress is None else bool(progress)) and chief
    bar = tqdm(total=end, initial=start, desc=f"training ({config.mode})", unit="step", disable=not show)
    try:
        if start < end:
            dataset_fn = make_dataset_fn(
                train_data, global_batch_size=global_batch,
                stream=StreamConfig(crop=crop, mirror=config.mirror, rotate=config.rotate,
                                    seed=config.seed, speed_scaling=config.speed_scaling,
                                    sliding_exponent=physics.sliding_exponent,
                                    wide_crop=wide_crop, wide_every=config.wide_every),
                start_step=start, steps=end,
            )
            dist = strategy.distribute_datasets_from_function(dataset_fn)
            iterator = iter(dist)
        def validate_now(at_step: int) -> dict:
            """Evaluate, record, update the best weights and the early-stopping count."""
            metrics = {f"val_{k}": v for k, v in evaluate(
                model, val_data, objective=objective, batch_size=global_batch,
                evaluator=evaluator).items()}
            metrics["step"] = at_step
            validations.append(metrics)
            value = metrics.get(monitor)
            best = float(best_var.numpy())
            if (value is not None and math.isfinite(value)
                    and (not math.isfinite(best) or value < best - config.early_stopping_min_delta)):
                best_var.assign(value)
                best_step_var.assign(at_step)
                bad_var.assign(0)
                best_manager.save(checkpoint_number=at_step)
            else:
                bad_var.assign_add(1)
            return metrics

        step = start
        if start == 0 and val_data.samples and end > 0:
            csv_log.write({**validate_now(0), "learning_rate": float(schedule(0)), "time_s": 0.0})
        while step < end:
            lr = float(schedule(step))
            out = {k: float(v) for k, v in train_step(iterator).items()}
            step += 1
            if not math.isfinite(out["loss"]):
                raise TrainingDiverged(
                    f"the training loss became {out['loss']} at step {step}; lower the learning rate "
                    "or check the data")
            history["step"].append(step)
            history["learning_rate"].append(lr)
            for key in ("loss", "supervised", "physics"):
                history[key].append(out.get(key))
            row = {"step": step, "learning_rate": lr, **out,
                   "time_s": elapsed0 + time.perf_counter() - t0}
            validate = bool(val_data.samples) and (step % config.validate_every == 0 or step == end)
            if validate:
                row.update(validate_now(step))
                if (config.early_stopping_patience
                        and int(bad_var.numpy()) >= config.early_stopping_patience):
                    stopped_early = True
            if step % config.log_every == 0 or validate or step == end or stopped_early:
                csv_log.write(row)
            bar.update(1)
            bar.set_postfix(loss=f"{out['loss']:.4g}")
            if step % config.checkpoint_every == 0 or step == end or stopped_early:
                manager.save(checkpoint_number=step)
            if stopped_early:
                say(f"early stopping at step {step}: {monitor} did not improve for "
                    f"{config.early_stopping_patience} validations (best "
                    f"{float(best_var.numpy()):.4g} at step {int(best_step_var.numpy())})")
                break
    except KeyboardInterrupt:
        manager.save(checkpoint_number=int(step_var.numpy()))
        say(f"interrupted: checkpoint saved at step {int(step_var.numpy())}; continue with --resume")
        raise
    finally:
        bar.close()
        csv_log.close()

    final_step = int(step_var.numpy())
    result = {
        "history": history, "validation": validations, "step": final_step, "replicas": replicas,
        "stopped_early": stopped_early, "model_path": None, "data": data.describe(),
        "best": None, "final": None, "metadata": None,
    }
    if stop_at_step is not None and final_step < int(config.steps) and not stopped_early:
        return result

    # ---- select the best weights, measure, save
    selected_best = config.keep == "best" and bool(val_data.samples) and bool(best_manager.latest_checkpoint)
    if selected_best:
        best_checkpoint.restore(best_manager.latest_checkpoint).expect_partial()
    measured_on = val_data if val_data.samples else train_data
    final = evaluate(model, measured_on, objective=objective, batch_size=global_batch,
                     evaluator=evaluator)
    accuracy = {
        "dataset": "validation" if val_data.samples else "training (no validation split)",
        "samples": int(final.get("samples", 0)),
        "step": int(best_step_var.numpy()) if selected_best and best_step_var.numpy() >= 0 else final_step,
        "monitor": monitor,
    }
    for key, name in (("rel_l2", "relative_l2_ubar"), ("energy_gap", "energy_gap"),
                      ("physics", "normalised_energy"), ("loss", "loss")):
        if key in final:
            accuracy[name] = float(final[key])
    result["final"] = accuracy
    scored = [v for v in validations if v.get(monitor) is not None]
    result["best"] = min(scored, key=lambda v: v[monitor]) if scored else None
    if not chief:
        shutil.rmtree(save_dir, ignore_errors=True)
        return result
    spacings = train_data.spacings
    training_data = {
        "grid_spacings_seen": {"min": float(spacings.min()), "max": float(spacings.max()), "units": "m"},
        "mode": config.mode,
        "files": list(train_data.files),
        "validation_files": list(val_data.files),
        "count": len(train_data),
        "validation_count": len(val_data),
        "skipped_not_converged": list(data.skipped),
        "labels": data.layout.labels,
        "grid_shapes": data.describe()["grid_shapes"],
        "crop": list(crop),
        "wide_crop": None if wide_crop is None else list(wide_crop),
        "wide_every": None if wide_crop is None else config.wide_every,
        "wide_count": wide_count,
        "steps": final_step,
        "replicas": replicas,
        "config": config.to_dict(),
        "loss": loss_config.to_dict(),
    }
    if config.mode != "supervised" and out_channels == 2:
        training_data["vertical_shape_assumed"] = (
            "2-channel output expanded with the shallow-ice shape function "
            f"(basal_fraction={loss_config.basal_fraction}) for the energy")
    metadata = ModelMetadata.from_model(
        model, name=config.name or output.stem, physics=physics, vertical=vertical,
        grid_spacing_range=spacing_range, training_data=training_data, accuracy=accuracy,
        description=config.description or f"GlacierUNet trained ({config.mode}) by glacier-emulator train",
        version=config.version, default=bool(config.default),
    )
    Emulator(model, metadata).save(output)
    result["model_path"] = str(output)
    result["metadata"] = metadata.to_dict()
    return result
