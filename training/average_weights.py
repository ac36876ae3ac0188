#!/usr/bin/env python
"""Recipe step: the element-wise mean of the weights of emulators of one architecture.

    python training/average_weights.py a.keras b.keras -o mean.keras --version 1.7.0

Writes OUT.keras and OUT.json: the first model's network and metadata with every weight replaced
by the (optionally weighted) mean over the models ("weight averaging"; meaningful for models
fine-tuned from one another, which lie in one basin of the loss). The models must have the same
architecture, inputs, outputs, levels and physics; the metadata records the sources and weights.
The held-out evaluation (scripts/evaluate_model.py) is run on the result as on any model.
"""
from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("sources", nargs="+", help="models, NAME.keras (with NAME.json)")
    parser.add_argument("-o", "--output", required=True, help="the model to write, NAME.keras")
    parser.add_argument("--weights", nargs="+", type=float,
                        help="one non-negative weight per model (default: equal)")
    parser.add_argument("--version", help="the new version (default: the first model's)")
    args = parser.parse_args(argv)
    if len(args.sources) < 2:
        parser.error("give at least two models")
    weights = args.weights or [1.0] * len(args.sources)
    if len(weights) != len(args.sources) or min(weights) < 0 or sum(weights) <= 0:
        parser.error(f"--weights needs {len(args.sources)} non-negative values, not all zero")
    weights = [w / sum(weights) for w in weights]

    from glacier_emulator.emulator import Emulator

    models = [Emulator.load(s) for s in args.sources]
    first = models[0]
    fields = ("inputs", "outputs", "vertical", "physics", "architecture")
    for source, other in zip(args.sources[1:], models[1:]):
        differ = [f for f in fields if getattr(other.metadata, f) != getattr(first.metadata, f)]
        shapes = [w.shape for w in other.model.get_weights()] == [w.shape for w in first.model.get_weights()]
        if differ or not shapes:
            parser.error(f"{source} differs from {args.sources[0]} in "
                         f"{', '.join(differ) or 'the shapes of its weights'}: cannot average")
    mean = [sum(w * m.model.get_weights()[i] for w, m in zip(weights, models))
            for i in range(len(first.model.get_weights()))]
    first.model.set_weights(mean)
    lo = min(m.metadata.grid_spacing_range[0] for m in models)
    hi = max(m.metadata.grid_spacing_range[1] for m in models)
    training = dict(first.metadata.training_data)
    training["weight_average"] = {
        "sources": [f"{m.name} {m.metadata.version} ({Path(s).name})" for s, m in zip(args.sources, models)],
        "weights": weights,
        "tool": "training/average_weights.py",
        "source_training_data": [dict(m.metadata.training_data) for m in models[1:]],
    }
    changes = dict(training_data=training, grid_spacing_range=(lo, hi))
    if args.version:
        changes["version"] = args.version
    out = Emulator(first.model, dataclasses.replace(first.metadata, **changes))
    out.save(Path(args.output))
    print(f"{args.output}: {out!r} mean of {len(models)} models, weights {weights}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
