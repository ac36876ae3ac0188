#!/usr/bin/env python
"""Write the reference outputs that tests/test_pretrained.py compares every shipped model with.

Run after (and only after) a model in ``pretrained/`` is added or retrained:

    python scripts/update_pretrained_references.py

It writes ``tests/data/pretrained/reference_input.nc`` (a small held-out synthetic glacier, seed 4,
45 x 45 nodes at 100 m: an odd size on purpose; written once, kept if present) and, for every shipped model,
``tests/data/pretrained/NAME.npz`` with its ubar, vbar (and u, v on the levels for 3-D models) on
that glacier.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "tests" / "data" / "pretrained"


def main() -> int:
    from glacier_emulator.emulator import Emulator, list_pretrained
    from glacier_emulator.io import read_geometry, write_geometry
    from glacier_emulator.learning.synthetic import SyntheticConfig, sample_geometry

    OUT.mkdir(parents=True, exist_ok=True)
    source = OUT / "reference_input.nc"
    if not source.is_file():
        write_geometry(sample_geometry(0, seed=4, config=SyntheticConfig(grid=45, dx=100.0)), source)
    geometry = read_geometry(source)
    for info in list_pretrained():
        emulator = Emulator.load(info["path"])
        v = emulator.predict_geometry(geometry)
        arrays = dict(ubar=v.ubar, vbar=v.vbar)
        if v.u is not None:
            arrays.update(u=v.u, v=v.v)
        np.savez_compressed(OUT / f"{emulator.name}.npz", **arrays)
        print(f"{OUT / emulator.name}.npz: max speed {np.max(np.hypot(v.ubar, v.vbar)):.1f} m/yr")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
