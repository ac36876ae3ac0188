"""Compare a candidate emulator with a reference one, glacier by glacier: the checks of the
decision rules in training/runs/notes.md.

    python scripts/compare_models.py CANDIDATE.keras pretrained/velocity3d-prior.keras \\
        --set "states=data/evo18-train-default/sample_0009?_year*.nc data/evo18-train-std/sample_0009?_year*.nc" \\
        --set "validation=data/validation data/validation-default" \\
        --example --example-run 50 --json compare.json

For every set (a name and files, folders or glob patterns): the relative L2 error of ubar on the
ice nodes of each solver-labelled glacier against its label (``evaluate_model.evaluate``, the
card's measure), for both models; the median and 90th percentile of each, their ratios
(candidate / reference) and on how many glaciers the candidate is lower. ``--example`` adds the
static error along the solver-driven run of the bundled example glacier
(``scripts/results/forward_solver.nc``, written by ``bench_forward.py``): each stored state's
velocity predicted by both models against the solver's. ``--example-run YEARS`` runs that glacier
forward with each model (the configuration of ``glacier-emulator run``) and reports the thickness
RMS difference from the solver-driven run at its end. Both models predict with their own
symmetry averaging (the shipped ones: all eight images).
"""
from __future__ import annotations

import argparse
import glob
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SOLVER_RUN = ROOT / "scripts" / "results" / "forward_solver.nc"


def expand(patterns) -> list[Path]:
    """Files of the words of ``patterns``: NetCDF files, folders (their ``*.nc``) or glob patterns;
    sorted, each once."""
    files = []
    for word in patterns:
        matches = [Path(p) for p in sorted(glob.glob(word))] or [Path(word)]
        for path in matches:
            files.extend(sorted(path.glob("*.nc")) if path.is_dir() else [path])
    unique = list(dict.fromkeys(files))
    missing = [str(p) for p in unique if not p.exists()]
    if missing:
        raise SystemExit(f"compare_models: no such file: {missing[0]}")
    return unique


def paired(candidate_errors, reference_errors) -> dict:
    """The comparison of two models' per-glacier errors on the same glaciers."""
    c, r = np.asarray(candidate_errors, float), np.asarray(reference_errors, float)
    out = dict(n=int(c.size), candidate_median=float(np.median(c)), reference_median=float(np.median(r)),
               candidate_p90=float(np.percentile(c, 90)), reference_p90=float(np.percentile(r, 90)),
               better=int(np.sum(c < r)))
    out["median_ratio"] = out["candidate_median"] / out["reference_median"]
    out["p90_ratio"] = out["candidate_p90"] / out["reference_p90"]
    return out


def compare_set(candidate, reference, files) -> dict:
    """Both models on the same labelled files (those either leaves out are left out of both).
    Files are told apart by their paths: sets of several folders repeat names."""
    evaluate = _evaluate_model()["evaluate"]

    def errors(model):
        out = {}
        for path in files:
            rows = evaluate(model, [path], ubar_only=True, repeats=0)  # one untimed prediction
            if rows:
                out[str(path)] = rows[0]["rel_l2_ubar"]
        return out

    c, r = errors(candidate), errors(reference)
    kept = [str(f) for f in files if str(f) in c and str(f) in r]
    if not kept:
        raise SystemExit("compare_models: no converged file within both models' grid-spacing ranges")
    out = paired([c[f] for f in kept], [r[f] for f in kept])
    out.update(files=kept, candidate=[c[f] for f in kept], reference=[r[f] for f in kept])
    return out


def example_static(candidate, reference, solver_run=SOLVER_RUN) -> dict:
    """Each model's ubar error at every stored state of the solver-driven example run."""
    import xarray as xr

    from glacier_emulator.data import load_example_geometry
    from glacier_emulator.fields import relative_l2

    start = load_example_geometry()
    with xr.open_dataset(solver_run, decode_times=False) as ds:
        thk, ubar, vbar = ds["thk"].values, ds["ubar"].values, ds["vbar"].values
        years = [float(y) for y in ds["year"].values] if "year" in ds else list(range(len(thk)))
    errors = {"candidate": [], "reference": []}
    for k in range(len(thk)):
        geometry = start.with_thickness(thk[k])
        ice = geometry.thickness > 0
        label = np.stack([ubar[k][ice], vbar[k][ice]])
        for key, model in (("candidate", candidate), ("reference", reference)):
            v = model.predict_geometry(geometry)
            errors[key].append(relative_l2(np.stack([v.ubar[ice], v.vbar[ice]]), label))
    ratios = np.asarray(errors["candidate"]) / np.asarray(errors["reference"])
    return dict(years=years, **errors, mean_ratio=float(ratios.mean()), max_ratio=float(ratios.max()))


def example_run(emulator, years: float, solver_run=SOLVER_RUN) -> dict:
    """The example glacier run ``years`` by ``emulator`` (``glacier-emulator run``'s configuration);
    its thickness RMS difference from the solver-driven run at the same time."""
    import xarray as xr

    from glacier_emulator.constants import Physics
    from glacier_emulator.data import example_config, load_example_geometry
    from glacier_emulator.dynamics.providers import make_provider
    from glacier_emulator.dynamics.stepper import Stepper

    config = example_config()
    provider = make_provider("emulator", Physics(), emulator=emulator)
    stepper = Stepper.from_config(load_example_geometry(), provider, config)
    end = config.start_time + years
    stepper.run_until(end)
    h = stepper.geometry.thickness
    with xr.open_dataset(solver_run, decode_times=False) as ds:
        k = int(np.argmin(np.abs(np.asarray(ds["year"].values, float) - end)))
        reference_year, h_ref = float(ds["year"].values[k]), ds["thk"].values[k]
    if abs(reference_year - end) > 1e-6:
        raise SystemExit(f"compare_models: the solver-driven run has no state at year {end:g}")
    return dict(year=end, thickness_rms_diff_m=float(np.sqrt(np.mean((h - h_ref) ** 2))),
                volume_km3=stepper.volume / 1e9)


def _evaluate_model():
    import runpy

    return runpy.run_path(str(ROOT / "scripts" / "evaluate_model.py"))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("candidate", help="NAME.keras (with NAME.json) or a shipped model's name")
    parser.add_argument("reference", help="NAME.keras or a shipped model's name")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=FILES",
                        help="a named set of labelled files, folders or glob patterns (space-separated); repeatable")
    parser.add_argument("--example", action="store_true",
                        help="the static error along the example's solver-driven run")
    parser.add_argument("--example-run", type=float, metavar="YEARS",
                        help="run the example glacier YEARS with each model; thickness RMS from the solver-driven run")
    parser.add_argument("--solver-run", default=str(SOLVER_RUN), help="the solver-driven example run (default: %(default)s)")
    parser.add_argument("--json", help="write every number (and every glacier's errors) here")
    args = parser.parse_args(argv)

    from glacier_emulator.emulator import Emulator

    def load(name):
        return Emulator.load(name) if name.endswith(".keras") else Emulator.pretrained(name)

    candidate, reference = load(args.candidate), load(args.reference)
    report = dict(candidate=args.candidate, reference=args.reference,
                  symmetrise=[candidate.model.symmetrise, reference.model.symmetrise], sets={})
    print(f"candidate {args.candidate} ({candidate.model.symmetrise}) against reference "
          f"{args.reference} ({reference.model.symmetrise}); relative L2 error of ubar, median / p90")
    for spec in args.set:
        name, sep, patterns = spec.partition("=")
        if not sep or not patterns.split():
            parser.error(f"--set wants NAME=FILES, got {spec!r}")
        r = compare_set(candidate, reference, expand(patterns.split()))
        report["sets"][name] = r
        print(f"{name} ({r['n']}): candidate {r['candidate_median']:.4f} / {r['candidate_p90']:.4f}, "
              f"reference {r['reference_median']:.4f} / {r['reference_p90']:.4f}; ratio "
              f"{r['median_ratio']:.3f} / {r['p90_ratio']:.3f}; candidate lower on {r['better']} of {r['n']}",
              flush=True)
    if args.example:
        r = example_static(candidate, reference, args.solver_run)
        report["example_static"] = r
        print("example, static error at years " + " ".join(f"{y:g}" for y in r["years"]) + ": candidate "
              + " ".join(f"{e:.3f}" for e in r["candidate"]) + ", reference "
              + " ".join(f"{e:.3f}" for e in r["reference"])
              + f"; ratio mean {r['mean_ratio']:.3f}, largest {r['max_ratio']:.3f}", flush=True)
    if args.example_run:
        report["example_run"] = {}
        for key, model in (("candidate", candidate), ("reference", reference)):
            r = example_run(model, args.example_run, args.solver_run)
            report["example_run"][key] = r
            print(f"example run, {key}: thickness RMS difference from the solver-driven run at year "
                  f"{r['year']:g}: {r['thickness_rms_diff_m']:.2f} m (volume {r['volume_km3']:.3f} km3)",
                  flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
