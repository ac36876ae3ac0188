#!/usr/bin/env python
"""Recipe step: declare the grid-spacing range a trained emulator is valid for.

    python training/set_spacing_range.py velocity3d-prior.keras velocity3d-prior.keras --range 50 200

Writes OUT.keras and OUT.json (OUT may be the input): the same network, with
``grid_spacing_range`` (the spacings ``Emulator`` accepts) set to the range the training glaciers
were drawn from. Models trained before ``grid_spacing_range`` became a training setting
(``TrainConfig.grid_spacing_range``) recorded the smallest and largest spacing of their training
glaciers instead (e.g. 50.29-199.72 m for glaciers drawn from 50-200 m), so they refused a grid
at exactly 200 m. The new range must contain the recorded one (a model's range is only widened
to the range its data were drawn from, never narrowed or moved); the spacings actually seen are
kept in the metadata under ``training_data["grid_spacings_seen"]``.
"""
from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("source", help="a model, NAME.keras (with NAME.json)")
    parser.add_argument("output", help="the model to write, NAME.keras")
    parser.add_argument("--range", nargs=2, type=float, required=True, metavar=("MIN", "MAX"),
                        help="grid spacings (m) the training glaciers were drawn from")
    parser.add_argument("--version", help="the new version (default: the source's)")
    args = parser.parse_args(argv)

    from glacier_emulator.emulator import Emulator

    source = Emulator.load(args.source)
    lo, hi = args.range
    old_lo, old_hi = source.metadata.grid_spacing_range
    if not 0 < lo <= hi:
        parser.error(f"--range must be MIN MAX with 0 < MIN <= MAX. Received: {lo} {hi}")
    if lo > old_lo or hi < old_hi:
        parser.error(f"--range {lo:g} {hi:g} m does not contain the range {old_lo:g}-{old_hi:g} m "
                     f"recorded in {args.source}: a range may only be widened")
    training = dict(source.metadata.training_data)
    training.setdefault("grid_spacings_seen", {"min": float(old_lo), "max": float(old_hi), "units": "m"})
    training["grid_spacing_range"] = (f"declared {lo:g}-{hi:g} m, the range the training glaciers "
                                      "were drawn from (training/set_spacing_range.py)")
    fields = dict(grid_spacing_range=(lo, hi), training_data=training)
    if args.version:
        fields["version"] = args.version
    out = Emulator(source.model, dataclasses.replace(source.metadata, **fields))
    out.save(Path(args.output))
    print(f"{args.output}: {out!r} grid spacing {lo:g}-{hi:g} m (trained on {old_lo:.4g}-{old_hi:.4g} m)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
