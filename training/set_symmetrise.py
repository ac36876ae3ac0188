#!/usr/bin/env python
"""Recipe step: a trained emulator with another symmetry averaging (``Emulator.with_symmetrise``).

    python training/set_symmetrise.py velocity3d-prior.keras velocity3d-prior.keras --symmetrise dihedral

Writes OUT.keras and OUT.json (OUT may be the input): the same weights, evaluated on all eight
rotations and mirrors of the grid (``dihedral``) or fewer images (``xy``, ``x``, ``none``), the
transformed predictions mapped back and averaged. Training uses ``x`` (two images, with random
mirrors and rotations of the crops); the shipped models predict with ``dihedral`` (measured in
training/runs/notes.md). The metadata records the change under ``training_data``.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from glacier_emulator.constants import SYMMETRISE_MODES


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("source", help="a model, NAME.keras (with NAME.json)")
    parser.add_argument("output", help="the model to write, NAME.keras")
    parser.add_argument("--symmetrise", required=True, choices=SYMMETRISE_MODES)
    parser.add_argument("--version", help="the new version (default: the source's)")
    args = parser.parse_args(argv)

    import dataclasses

    from glacier_emulator.emulator import Emulator

    source = Emulator.load(args.source)
    out = source.with_symmetrise(args.symmetrise)
    training = dict(out.metadata.training_data)
    training["symmetrise"] = (f"trained with symmetrise={source.model.symmetrise!r}, predicts with "
                              f"{args.symmetrise!r} (training/set_symmetrise.py)")
    fields = dict(training_data=training)
    if args.version:
        fields["version"] = args.version
    out = Emulator(out.model, dataclasses.replace(out.metadata, **fields))
    out.save(Path(args.output))
    print(f"{args.output}: {out!r} symmetrise={args.symmetrise}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
