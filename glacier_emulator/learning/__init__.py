"""Learning the emulator: synthetic data, the training data pipeline, objectives and training.

* :mod:`.synthetic` / :mod:`.dataset` -- random glaciers labelled by the reference solver;
* :mod:`.data` -- NetCDF samples into arrays and a deterministic, resumable ``tf.data`` stream
  with crops, mirrors and rotations;
* :mod:`.losses` -- supervised error, the Blatter-Pattyn energy of the prediction, metrics;
* :mod:`.train` -- :class:`TrainConfig` and :func:`train` (custom loop, ``tf.distribute``,
  checkpoints, CSV log, early stopping, model file with metadata).

The names below are imported lazily (the training modules import TensorFlow). The training
function is ``glacier_emulator.learning.train.train`` (``learning.train`` is its module).
"""
from __future__ import annotations

import importlib

__all__ = ["TrainConfig", "load_data", "TrainingData", "LossConfig", "evaluate"]

_LAZY = {
    "TrainConfig": ".train",
    "evaluate": ".train",
    "load_data": ".data",
    "TrainingData": ".data",
    "LossConfig": ".losses",
}


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
