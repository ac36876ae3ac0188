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
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(f"{output}.tmp.npz")
    np.savez_compressed(tmp, x=x, y=y, files=np.array(json.dumps(list(data.files))),
                        zeta=np.asarray(data.vertical.zeta))
    tmp.replace(output)
    return dict(samples=len(data.samples), skipped=len(data.skipped), shape=tuple(x.shape),
                megabytes=Path(output).stat().st_size / 2**20)


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
    args = p.parse_args(argv)
    from glacier_emulator.fields import InputError

    try:
        facts = pack(args.paths, args.output, float16=args.float16)
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"wrote {args.output}: {facts['samples']} samples {facts['shape']}, "
          f"{facts['skipped']} not converged left out, {facts['megabytes']:.1f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
