"""How a ``.keras`` model file stores its weights: float32 (Keras' own) or float16 (half the size).

A ``.keras`` file is a zip archive holding ``config.json``, ``metadata.json`` and
``model.weights.h5`` (one HDF5 dataset per variable). :func:`store_weights` rewrites that HDF5
file with every float32 array of at least ``min_size`` values stored as float16 -- the 3 x 3
convolution kernels, which are nearly all of a U-Net's weights -- and the small ones (biases, the
first convolution, the 1 x 1 velocity head) kept as float32. Keras reads such a file with
``load_model`` as it is: each variable keeps its float32 dtype and takes the stored value
(float16 -> float32 is exact), so nothing in the loading path changes and a float16 file saved
again loses nothing more.

What it costs: each stored kernel value is rounded to 11 significant bits (a relative change of at
most 2^-11 ~ 4.9e-4); the predictions of the shipped models change by about 1e-4 of the speed
(measured in training/runs/notes.md, twenty-seventh session), far below their error against the
solver. Training keeps float32; only the shipped files are made float16 (training/README.md step 3).
"""
from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path
from typing import Union

import numpy as np

WEIGHTS_DTYPES = ("float32", "float16")
"""The storage dtypes a model file may have (:attr:`ModelMetadata.weights_dtype`)."""

FLOAT16_MIN_SIZE = 4096
"""Arrays with fewer values than this stay float32 under float16 storage: biases, the first
convolution and the velocity head (whose depth-averaged contraction must match the 3-D model's to
float32 round-off, :meth:`~glacier_emulator.emulator.Emulator.levels_source`) cost nothing to keep."""

_WEIGHTS_ENTRY = "model.weights.h5"


def _rewrite_h5(data: bytes, dtype: str, min_size: int) -> bytes:
    import h5py

    source, out = io.BytesIO(data), io.BytesIO()
    with h5py.File(source, "r") as fin, h5py.File(out, "w") as fout:
        for key, value in fin.attrs.items():
            fout.attrs[key] = value

        def copy(name, obj):
            if isinstance(obj, h5py.Group):
                group = fout.require_group(name)
                for key, value in obj.attrs.items():
                    group.attrs[key] = value
                return
            array = obj[()]
            if isinstance(array, np.ndarray) and array.dtype in (np.float32, np.float16):
                big = array.size >= min_size
                array = array.astype(np.float16 if (dtype == "float16" and big) else np.float32)
            dataset = fout.create_dataset(name, data=array)
            for key, value in obj.attrs.items():
                dataset.attrs[key] = value

        fin.visititems(copy)
    return out.getvalue()


def store_weights(path: Union[str, os.PathLike], dtype: str = "float16",
                  min_size: int = FLOAT16_MIN_SIZE) -> Path:
    """Rewrite the ``.keras`` file ``path`` in place with its weights stored as ``dtype``.

    ``"float16"``: float arrays of at least ``min_size`` values as float16, the rest float32;
    ``"float32"``: every float array as float32 (undoes the size saving, not the rounding). The
    new file is written next to the old one and renamed over it, so an interruption leaves the old
    file whole.

    Raises:
        ValueError: ``dtype`` is not one of :data:`WEIGHTS_DTYPES`, or the file is not a ``.keras``
            archive with ``model.weights.h5``.
    """
    if dtype not in WEIGHTS_DTYPES:
        raise ValueError(f"`dtype` must be one of {WEIGHTS_DTYPES}. Received: dtype={dtype!r}")
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as archive:
            entries = [(info, archive.read(info.filename)) for info in archive.infolist()]
    except zipfile.BadZipFile as exc:
        raise ValueError(f"{path}: not a .keras archive ({exc})") from exc
    if _WEIGHTS_ENTRY not in [info.filename for info, _ in entries]:
        raise ValueError(f"{path}: a .keras archive without {_WEIGHTS_ENTRY}")
    partial = path.with_name(f".{path.name}.partial")
    try:
        with zipfile.ZipFile(partial, "w") as archive:
            for info, data in entries:
                if info.filename == _WEIGHTS_ENTRY:
                    data = _rewrite_h5(data, dtype, min_size)
                archive.writestr(info, data)
        os.replace(partial, path)
    finally:
        if partial.exists():
            partial.unlink()
    return path


def stored_dtypes(path: Union[str, os.PathLike]) -> dict:
    """``{dtype name: number of values}`` of the float arrays stored in the ``.keras`` file."""
    import h5py

    counts: dict = {}
    with zipfile.ZipFile(path) as archive:
        data = archive.read(_WEIGHTS_ENTRY)
    with h5py.File(io.BytesIO(data), "r") as weights:
        def count(_, obj):
            if isinstance(obj, h5py.Dataset) and obj.dtype.kind == "f":
                counts[str(obj.dtype)] = counts.get(str(obj.dtype), 0) + int(obj.size)
        weights.visititems(count)
    return counts
