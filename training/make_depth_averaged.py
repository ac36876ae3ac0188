#!/usr/bin/env python
"""Recipe step: the depth-averaged model of a 3-D emulator (``Emulator.depth_averaged``).

    python training/make_depth_averaged.py velocity3d-default.keras ubar-default.keras \\
        --name ubar-default --default

Writes OUT.keras and OUT.json: the same network with its output layer contracted by the
depth-average weights of the levels, so its (ubar, vbar) equal the 3-D model's depth average to
float32 round-off; it stores its weights as the source does (float16 for the shipped models:
the velocity head, which the contraction changes, stays float32). The metadata keeps the 3-D
model's training record and accuracy; the held-out evaluation (scripts/evaluate_model.py) is run
on the result as on any model.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("source", help="a 3-D (levels) model, NAME.keras")
    parser.add_argument("output", help="the depth-averaged model to write, NAME.keras")
    parser.add_argument("--name", help="its name (default: the output file's stem)")
    parser.add_argument("--description", help="its description")
    parser.add_argument("--version", help="its version (default: the source's)")
    parser.add_argument("--default", action="store_true", help="mark it the default model")
    args = parser.parse_args(argv)

    from glacier_emulator.emulator import Emulator

    source = Emulator.load(args.source)
    out = Path(args.output)
    fields = dict(default=bool(args.default))
    if args.description:
        fields["description"] = args.description
    if args.version:
        fields["version"] = args.version
    training = dict(source.metadata.training_data)
    training["derived_from"] = (f"{source.name} {source.metadata.version}: output layer contracted by "
                                "the depth-average weights (training/make_depth_averaged.py)")
    fields["training_data"] = training
    flat = source.depth_averaged(name=args.name or out.stem, **fields)
    flat.save(out)
    print(f"{out}: {flat!r}")
    print(json.dumps({"parameters": int(flat.model.count_params()),
                      "source_parameters": int(source.model.count_params())}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
