#!/usr/bin/env python
"""What storing a model's weights as float16 changes: its predictions against the float32 original's.

    python scripts/weights_precision.py velocity3d-prior-f32.keras pretrained/velocity3d-prior.keras \\
        --set default-physics=data/test-default --set evolved=data/evolved --set larger-96=data/test96

For every glacier of each set: the relative L2 difference of (ubar, vbar) on the ice nodes between
the two models (the second against the first), and each model's relative L2 error against the
solver's labels where the file has them. Prints the median and largest difference per set and
the medians of the errors; ``--json`` keeps every number. Both models predict with their own
symmetry averaging (give two files with the same one). The card's sentence on float16 storage
(``scripts/evaluate_model.py``) quotes what this measured (training/runs/notes.md, twenty-seventh
session).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare_models import expand  # noqa: E402  (the same file patterns as compare_models.py)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("reference", help="the float32 model, NAME.keras (with NAME.json)")
    parser.add_argument("stored", help="the same model stored otherwise (e.g. float16), NAME.keras")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=FILES", required=True,
                        help="a named set of files, folders or glob patterns (space-separated)")
    parser.add_argument("--json", help="write every number here")
    args = parser.parse_args(argv)

    import xarray as xr

    from glacier_emulator.emulator import Emulator
    from glacier_emulator.fields import relative_l2
    from glacier_emulator.io import read_geometry

    reference, stored = Emulator.load(args.reference), Emulator.load(args.stored)
    print(f"{args.stored} ({stored.metadata.weights_dtype}) against {args.reference} "
          f"({reference.metadata.weights_dtype}): relative L2 difference of ubar on ice nodes")
    report = {}
    for spec in args.set:
        name, _, patterns = spec.partition("=")
        rows = []
        for path in expand(patterns.split()):
            geometry = read_geometry(path)
            if not reference.metadata.covers_spacing(geometry.dx):
                continue
            ice = geometry.thickness > 0
            a, b = reference.predict_geometry(geometry), stored.predict_geometry(geometry)
            va, vb = np.stack([a.ubar[ice], a.vbar[ice]]), np.stack([b.ubar[ice], b.vbar[ice]])
            row = dict(file=str(path), difference=relative_l2(vb, va))
            with xr.open_dataset(path) as ds:
                if "ubar" in ds and int(ds.attrs.get("solver_converged", 1)) == 1:
                    truth = np.stack([ds["ubar"].values[ice], ds["vbar"].values[ice]])
                    row.update(error_reference=relative_l2(va, truth), error_stored=relative_l2(vb, truth))
            rows.append(row)
        if not rows:
            raise SystemExit(f"weights_precision: set {name!r} has no file within the spacing range")
        d = [r["difference"] for r in rows]
        summary = dict(n=len(rows), difference_median=float(np.median(d)), difference_max=float(np.max(d)))
        labelled = [r for r in rows if "error_stored" in r]
        if labelled:
            summary.update(error_reference_median=float(np.median([r["error_reference"] for r in labelled])),
                           error_stored_median=float(np.median([r["error_stored"] for r in labelled])))
        report[name] = dict(summary, per_file=rows)
        line = (f"{name} ({len(rows)}): difference median {summary['difference_median']:.1e}, "
                f"largest {summary['difference_max']:.1e}")
        if labelled:
            line += (f"; error against the solver, median {summary['error_reference_median']:.4f} "
                     f"(reference) / {summary['error_stored_median']:.4f} (stored)")
        print(line)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
