#!/usr/bin/env python
"""Recipe step: a trained emulator with another symmetry averaging (``Emulator.with_symmetrise``).

    python training/set_symmetrise.py velocity3d-prior.keras velocity3d-prior.keras --symmetrise dihedral \
        --weights-dtype float16

Writes OUT.keras and OUT.json (OUT may be the input): the same weights, evaluated on all eight
rotations and mirrors of the grid (``dihedral``) or fewer images (``xy``, ``x``, ``none``), the
transformed predictions mapped back and averaged. Training uses ``x`` (two images, with random
mirrors and rotations of the crops); the shipped models predict with ``dihedral`` (measured in
training/runs/notes.md). The metadata records the change under ``training_data``.
``--weights-dtype float16`` stores the large kernels at half precision (half the file; the
predictions change by about 1e-4 of the speed), as the shipped models are. ``--name`` and
``--description`` ship the network under another name (``velocity3d-prior-large``, trained as
``velocity3d-prior``: training/README.md step 2m).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from glacier_emulator.constants import SYMMETRISE_MODES
from glacier_emulator.io.weights import WEIGHTS_DTYPES


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("source", help="a model, NAME.keras (with NAME.json)")
    parser.add_argument("output", help="the model to write, NAME.keras")
    parser.add_argument("--symmetrise", required=True, choices=SYMMETRISE_MODES)
    parser.add_argument("--version", help="the new version (default: the source's)")
    parser.add_argument("--weights-dtype", choices=WEIGHTS_DTYPES,
                        help="how the file stores the weights (default: as the source does); the "
                             "shipped models are float16, half the size (glacier_emulator.io.weights)")
    parser.add_argument("--name", help="the new model's name (default: the source's); a model shipped "
                                       "beside another of the same network under its own name")
    parser.add_argument("--description", help="the new description (default: the source's)")
    args = parser.parse_args(argv)

    import dataclasses

    from glacier_emulator.emulator import Emulator

    source = Emulator.load(args.source)
    out = source.with_symmetrise(args.symmetrise)
    training = dict(out.metadata.training_data)
    training["symmetrise"] = (f"trained with symmetrise={source.model.symmetrise!r}, predicts with "
                              f"{args.symmetrise!r} (training/set_symmetrise.py)")
    fields = dict(training_data=training)
    for key in ("version", "name", "description"):
        if getattr(args, key):
            fields[key] = getattr(args, key)
    out = Emulator(out.model, dataclasses.replace(out.metadata, **fields))
    out.save(Path(args.output), weights_dtype=args.weights_dtype)
    print(f"{args.output}: {out!r} symmetrise={args.symmetrise} "
          f"weights stored as {args.weights_dtype or out.metadata.weights_dtype}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
