"""Label geometry files with a trained emulator's prediction instead of a solve (rehearsal data).

    python training/distill_labels.py MODEL SOURCE_DIR OUTPUT_DIR [--symmetrise dihedral]

MODEL is a shipped model's name or a ``.keras`` file. Every ``sample_*.nc`` geometry in
SOURCE_DIR (``make-dataset --no-labels`` writes them) gets the model's velocity, written in the
format of ``make-dataset``'s labelled samples (``uvel``/``vvel`` on the levels, depth-averaged,
surface and basal velocities) to OUTPUT_DIR under the same name, with the global attribute
``label_source`` saying which model made it. Existing outputs are skipped, so a run resumes.

What it is for: fine-tuning a model on new solver-labelled glaciers while the glaciers it was
trained on are no longer at hand. Their geometries come back exactly from ``make-dataset
--no-labels`` (a sample depends only on its seed and index), and the model's own prediction
stands in for the lost labels, so that training on the new glaciers does not pull the network
away from what it learnt on the old ones. These labels are the model's, not the physics': they
carry its errors, so a run on them is validated, and its output judged, on solver-labelled
glaciers only (``training/runs/notes.md`` records the one such run and its outcome).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="a shipped model's name or a .keras file")
    parser.add_argument("source", type=Path, help="folder of geometry files (sample_*.nc)")
    parser.add_argument("output", type=Path, help="folder to write the labelled files to")
    parser.add_argument("--symmetrise", default="dihedral",
                        help="grid symmetries to average the prediction over (default: dihedral)")
    args = parser.parse_args(argv)

    import xarray as xr
    from tqdm import tqdm

    from glacier_emulator.cli.predict import resolve_model
    from glacier_emulator.io.netcdf import read_geometry, write_velocity

    emulator = resolve_model(args.model, args.symmetrise)
    files = sorted(args.source.glob("sample_*.nc"))
    if not files:
        print(f"{args.source}: no sample_*.nc files", file=sys.stderr)
        return 1
    args.output.mkdir(parents=True, exist_ok=True)
    source = (f"prediction of {emulator.name} {emulator.metadata.version} "
              f"(symmetrise {args.symmetrise}), not a solve")
    written = 0
    for path in tqdm(files, desc="labelling", unit="glacier", disable=not sys.stderr.isatty()):
        out = args.output / path.name
        if out.exists():
            continue
        geometry = read_geometry(path)
        with xr.open_dataset(path) as ds:
            kind = ds.attrs.get("kind", "")
            index = int(ds.attrs.get("sample_index", path.stem.split("_")[-1]))
        velocity = emulator.predict_geometry(geometry)
        # write_velocity writes to a temporary file and renames it: no partial outputs
        write_velocity(velocity, geometry, out, attrs={
            "kind": kind, "sample_index": index, "label_source": source})
        written += 1
    print(f"{args.output}: {written} written, {len(files) - written} already there")
    return 0


if __name__ == "__main__":
    sys.exit(main())
