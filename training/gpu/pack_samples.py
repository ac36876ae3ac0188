"""Pack labelled NetCDF samples made on the CPU (e.g. states of forward runs) for the GPU job.

    python training/gpu/pack_samples.py data/evo18-train-default data/evo18-train-std \
        -o training/gpu/states.npz [--float16]

The GPU job (``train_gpu.py --extra-train / --extra-val``) labels the generator's glaciers
itself, but not the states of forward runs, which come from runs of a model
(``training/evolved_states.py``) and are the shipped model's weakest set. This script reads
the files as training does (``learning.data.load_data``: the model's six inputs and the 3-D
labels, the physics checked against the package's defaults) and writes ``x`` (N, ny, nx, 6),
``y`` (N, ny, nx, 2 Nz), ``files`` and ``zeta`` to one compressed ``.npz``, small enough to
travel with the working tree (64 MB in all): ``--float16`` halves it (relative rounding 5e-4,
about the solver's own label tolerance).

``--geometries`` packs glaciers **without labels** for the GPU job to solve (``train_gpu.py
--extra-train-geometries / --extra-val-geometries``): what the solver needs of each file
(``read_geometry``: thickness, bed, sliding coefficient and rate factor fields, grid spacing),
float32, with each file's glacier ``kind``. On a CPU the forward runs that make such states
(``training/evolved_states.py --no-labels``) cost seconds a glacier where solving them costs
minutes; the GPU job's batched solver labels hundreds in a batch.

    python training/evolved_states.py --no-labels data/geo -o data/states-geo --years 25 60
    python training/gpu/pack_samples.py --geometries data/states-geo -o training/gpu/states-geo.npz
"""
import argparse
import json
import sys
from pathlib import Path

import numpy as np


def pack(paths, output, *, float16: bool = False) -> dict:
    """Write the packed samples of ``paths`` (files and folders) to ``output``; returns facts."""
    from glacier_emulator.constants import DEFAULT_PHYSICS, DEFAULT_VERTICAL
    from glacier_emulator.fields import InputError
    from glacier_emulator.learning.data import INPUT_FIELDS, LEVELS_START, check_physics, load_data

    data = load_data(paths, require_labels=True, labels="levels")
    if not data.layout.has_levels:
        raise InputError(f"{data.samples[0].path}: the GPU job trains on 3-D labels ('uvel', "
                         "'vvel'); some of these files have only ubar/vbar")
    if not np.allclose(data.vertical.zeta, DEFAULT_VERTICAL.zeta, atol=1e-6):
        raise InputError(f"{data.samples[0].path}: labels on levels zeta = "
                         f"{np.round(data.vertical.zeta, 4).tolist()}, not the package's "
                         f"{np.round(DEFAULT_VERTICAL.zeta, 4).tolist()} that the GPU job uses")
    check_physics(data, DEFAULT_PHYSICS)
    shapes = {s.shape for s in data.samples}
    if len(shapes) != 1:
        raise InputError(f"samples of different grids {sorted(shapes)}: pack each grid size "
                         "on its own (the GPU job stacks them)")
    dtype = np.float16 if float16 else np.float32
    x = np.stack([s.fields[..., :len(INPUT_FIELDS)] for s in data.samples]).astype(dtype)
    y = np.stack([s.fields[..., LEVELS_START:] for s in data.samples]).astype(dtype)
    save_npz(output, x=x, y=y, files=np.array(json.dumps(list(data.files))),
             zeta=np.asarray(data.vertical.zeta))
    return dict(samples=len(data.samples), skipped=len(data.skipped), shape=tuple(x.shape),
                megabytes=Path(output).stat().st_size / 2**20)


def save_npz(output, **arrays) -> None:
    """``np.savez_compressed`` to a temporary file, then renamed: never a partial ``output``."""
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(f"{output}.tmp.npz")
    np.savez_compressed(tmp, **arrays)
    tmp.replace(output)


def pack_geometries(paths, output) -> dict:
    """Write the geometries of the NetCDF files ``paths`` (files and folders; labels, if any, are
    not read) to ``output`` for the GPU job to label; returns facts. One grid, square cells."""
    import xarray as xr

    from glacier_emulator.constants import DEFAULT_PHYSICS
    from glacier_emulator.fields import InputError
    from glacier_emulator.io import read_geometry
    from glacier_emulator.learning.data import expand_paths

    files = expand_paths(paths)  # refuses a missing path and a folder without .nc files
    fields = {k: [] for k in ("thickness", "bed", "sliding", "rate")}
    dx, kinds, shape = [], [], None
    for path in files:
        g = read_geometry(path)
        if g.dx != g.dy:
            raise InputError(f"{path}: cells of {g.dx:g} x {g.dy:g} m; the GPU job's solver takes square cells")
        shape = shape or g.shape
        if g.shape != shape:
            raise InputError(f"{path}: a {g.shape[0]} x {g.shape[1]} grid after {shape[0]} x {shape[1]} "
                             "ones: pack each grid size on its own (the GPU job solves a batch on one grid)")
        sliding = DEFAULT_PHYSICS.sliding_coefficient if g.sliding_coefficient is None else g.sliding_coefficient
        rate = DEFAULT_PHYSICS.rate_factor if g.rate_factor is None else g.rate_factor
        for name, value in (("thickness", g.thickness), ("bed", g.bed), ("sliding", sliding), ("rate", rate)):
            fields[name].append(np.broadcast_to(np.asarray(value, np.float64), g.shape))
        dx.append(g.dx)
        with xr.open_dataset(path) as ds:
            kinds.append(str(ds.attrs.get("kind", "")))
    save_npz(output, **{k: np.stack(v).astype(np.float32) for k, v in fields.items()},
             dx=np.asarray(dx, np.float64), kinds=np.array(json.dumps(kinds)),
             files=np.array(json.dumps([str(f) for f in files])))
    return dict(samples=len(files), skipped=0, shape=(len(files),) + shape,
                megabytes=Path(output).stat().st_size / 2**20)


def load_geometries(path) -> tuple:
    """``(geometries, files)`` of a file written by :func:`pack_geometries`: one
    :class:`~glacier_emulator.fields.Geometry` per glacier (its ``kind`` in ``attrs``)."""
    from glacier_emulator.fields import Geometry

    with np.load(path) as data:
        if "bed" not in data:
            raise SystemExit(f"{path}: not a file of pack_samples.py --geometries (no 'bed')")
        arrays = {k: data[k].astype(np.float64) for k in ("thickness", "bed", "sliding", "rate")}
        dx, kinds, files = data["dx"], json.loads(str(data["kinds"])), json.loads(str(data["files"]))
    geometries = [Geometry(thickness=arrays["thickness"][i], bed=arrays["bed"][i], dx=float(dx[i]),
                           sliding_coefficient=arrays["sliding"][i], rate_factor=arrays["rate"][i],
                           attrs={"kind": kinds[i]})
                  for i in range(len(files))]
    return geometries, files


def load_packed(path) -> tuple:
    """``(x, y, files)`` of a packed file, float32."""
    with np.load(path) as data:
        return (data["x"].astype(np.float32), data["y"].astype(np.float32),
                json.loads(str(data["files"])))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("paths", nargs="+", help="labelled NetCDF files or folders of them")
    p.add_argument("-o", "--output", required=True, help="the .npz to write")
    p.add_argument("--float16", action="store_true", help="store half precision (half the size)")
    p.add_argument("--geometries", action="store_true",
                   help="pack the glaciers' geometries (no labels needed) for the GPU job to solve")
    args = p.parse_args(argv)
    if args.geometries and args.float16:
        p.error("--geometries packs float32 (half precision would round bed elevations to metres)")
    from glacier_emulator.fields import InputError

    try:
        if args.geometries:
            facts = pack_geometries(args.paths, args.output)
        else:
            facts = pack(args.paths, args.output, float16=args.float16)
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"wrote {args.output}: {facts['samples']} samples {facts['shape']}, "
          f"{facts['skipped']} not converged left out, {facts['megabytes']:.1f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
