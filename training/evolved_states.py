"""Labelled glaciers from forward runs: the states a time-stepping run produces, solved.

The synthetic generator draws glaciers whose shapes come from plastic profiles with an ice-free
rim; a forward run reshapes them under its mass balance (thinning tongues, ice built up on
high ground above the ELA, up to the domain edge). This script runs each geometry of a folder
(``glacier-emulator make-dataset --no-labels`` output, or any files with thk and topg) forward
with an emulator under an ELA mass balance and solves the states at the given years with the
reference solver, one labelled sample each (the format of ``make-dataset``; sliding and rate
factor fields of the input are kept). The ELA of each glacier is a percentile of its initial
ice-surface elevation, drawn from ``--ela-percentiles`` with a generator seeded by
``(seed, sample index)``: deterministic and resumable (finished files are skipped).

    python training/evolved_states.py data/evolved-geometries -o data/evolved --years 20 40

The files are a held-out set for the model cards (``evaluate_model.py --extra-test``) or
training data of the states emulators meet in forward runs. Physics: the package defaults
(with the input's sliding and rate factor fields).

``--no-labels`` writes the states' geometries without solving them (the same files, attributes
and names, as ``make-dataset --no-labels`` writes the generator's): the forward runs cost a few
seconds a glacier, the solves most of the time on a CPU; the GPU job labels such states itself
(``training/gpu/pack_samples.py --geometries``, then ``train_gpu.py --extra-train-geometries``).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np


def ela_for(geometry, index: int, seed: int, percentiles) -> float:
    """The glacier's ELA (m): a percentile of its ice-surface elevation drawn for (seed, index)."""
    rng = np.random.default_rng([int(seed), int(index)])
    surface = geometry.surface[geometry.thickness > 0]
    return float(np.percentile(surface, rng.choice(list(percentiles))))


def evolve_and_label(path, out, *, index, years, seed, percentiles, emulator, labels=True):
    """Run the geometry in ``path`` forward with ``emulator`` (None: the shallow-ice model); label
    the states at ``years`` (``labels=False``: write their geometries unsolved); returns the
    number of files written."""
    import dataclasses

    from glacier_emulator.dynamics import Stepper, make_provider
    from glacier_emulator.dynamics.smb import ELASMB
    from glacier_emulator.io import read_geometry, write_geometry
    from glacier_emulator.learning.dataset import label_geometry
    import xarray as xr

    targets = [Path(out) / f"sample_{index:05d}_year{int(y):03d}.nc" for y in years]
    if all(t.exists() for t in targets):
        return 0
    geometry = read_geometry(path)
    with xr.open_dataset(path) as ds:  # the generator's glacier type (read_geometry keeps the grid only)
        kind = str(ds.attrs.get("kind", ""))
    ela = ela_for(geometry, index, seed, percentiles)
    smb = ELASMB.constant(ela=ela, gradabl=0.009, gradacc=0.005, accmax=2.0)  # the example run's gradients
    provider = make_provider("sia" if emulator is None else "emulator", emulator=emulator)
    stepper = Stepper(geometry, provider, smb)
    written = 0
    for year, target in zip(years, targets):
        stepper.run_until(float(year))
        if target.exists():
            continue
        attrs = {"sample_index": index, "seed": seed, "kind": kind,
                 "source": Path(path).name, "ela_m": ela, "years_evolved": float(year),
                 "driven_by": "sia" if emulator is None else f"{emulator.name} {emulator.metadata.version}"}
        if labels:
            label_geometry(stepper.geometry, target, attrs=attrs)
        else:
            state = stepper.geometry
            write_geometry(dataclasses.replace(state, attrs={**state.attrs, **attrs}), target)
        written += 1
    return written


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("geometries", help="folder of geometry NetCDF files (sorted; index = position)")
    p.add_argument("-o", "--output", required=True)
    p.add_argument("--years", nargs="+", type=float, default=[20.0, 40.0])
    p.add_argument("--ela-percentiles", nargs="+", type=float, default=[40.0, 60.0, 75.0])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--start", type=int, default=0, help="first file index")
    p.add_argument("--samples", type=int, default=None, help="number of files (default: all)")
    p.add_argument("--no-labels", action="store_true",
                   help="write the states' geometries without solving them (for the GPU job to label)")
    p.add_argument("--model", default="velocity3d-prior",
                   help="emulator driving the runs: a shipped name or a .keras file; 'sia' for the shallow-ice model")
    args = p.parse_args(argv)
    from glacier_emulator.cli.predict import resolve_model
    from glacier_emulator.fields import InputError

    files = sorted(Path(args.geometries).glob("*.nc"))
    stop = len(files) if args.samples is None else args.start + args.samples
    if not files[args.start:stop]:
        print(f"{args.geometries}: no NetCDF files in the requested range", file=sys.stderr)
        return 1
    if sorted(args.years) != list(args.years) or args.years[0] <= 0:
        print(f"--years must be increasing and positive; got {args.years}", file=sys.stderr)
        return 1
    Path(args.output).mkdir(parents=True, exist_ok=True)
    written = 0
    try:
        emulator = None if args.model == "sia" else resolve_model(args.model)
        for index in range(args.start, min(stop, len(files))):
            written += evolve_and_label(files[index], args.output, index=index, years=args.years,
                                        seed=args.seed, percentiles=args.ela_percentiles, emulator=emulator,
                                        labels=not args.no_labels)
            print(f"{files[index].name}: done", file=sys.stderr, flush=True)
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"{args.output}: {written} written", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
