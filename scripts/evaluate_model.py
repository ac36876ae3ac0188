"""Evaluate an emulator on held-out solver-labelled glaciers and write its model card.

For every test file (written by ``glacier-emulator make-dataset`` or ``solve``): the relative L2
error of the depth-averaged velocity (ubar, vbar) on ice nodes against the converged solver,
of the surface velocity (3-D models), and the energy gap (E_emulator - E_solver) / |E_solver| of
the Blatter-Pattyn energy (3-D models; the same energy code as the solver). Reported as median and
90th percentile, overall and per glacier kind, with the inference time (median of repeats).

    python scripts/evaluate_model.py pretrained/NAME.keras --test DIR [--skip N] [--card pretrained/NAME.md]

``--skip N`` leaves out the first N files (e.g. those used for validation during training).
The numbers are also written into the model's metadata JSON under ``accuracy`` (every glacier's
row included), from which ``--card-only`` writes the card again after its ``--notes`` changed.
``--compare-symmetrise x xy`` adds the error (on every held-out set) and cost of other symmetry
averagings of the same weights to the card. Every glacier's row also says where its error lies
(the ice margin, the domain edge, the interior:
:mod:`glacier_emulator.verification.error_location`), a table of the card; ``--location-only``
adds that alone to an evaluation stored before it existed.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from glacier_emulator.constants import SYMMETRISE_MODES, SYMMETRY_IMAGES
from glacier_emulator.io.weights import FLOAT16_MIN_SIZE
from glacier_emulator.provenance import describe_machine, load_average, machine_info

ROOT = Path(__file__).resolve().parents[1]


def evaluate(emulator, files, *, ubar_only=False, outside=None, repeats=3, warm_every_file=True):
    """One row per converged test file; ``ubar_only`` skips what does not depend on the emulator's
    symmetry averaging beyond ubar (the shallow-ice baseline, surface velocity, energy gap).
    Files whose grid spacing is outside the model's trained range (which the emulator refuses)
    are left out; their names are appended to the list ``outside`` when one is given. The
    inference time is the median of ``repeats`` calls after one warm-up call (which compiles);
    with ``warm_every_file=False`` the warm-up call is made only for the first file of each grid
    size (what compiles: the network's call and the refining solver's energy). ``repeats=0``
    measures no time: one prediction per file, no warm-up, ``inference_s`` None."""
    import tensorflow as tf
    import xarray as xr

    from glacier_emulator.fields import relative_l2
    from glacier_emulator.io import read_geometry
    from glacier_emulator.physics.energy import blatter_pattyn_energy
    from glacier_emulator.physics.sia import sia_velocity

    phys, vert = emulator.metadata.physics, emulator.metadata.vertical
    rows, warmed = [], set()
    for path in files:
        with xr.open_dataset(path) as ds:
            if int(ds.attrs.get("solver_converged", 1)) != 1:
                continue
            ubar, vbar = ds["ubar"].values, ds["vbar"].values
            levels = ("uvel" in ds) and ("vvel" in ds)
            uvel = ds["uvel"].values if levels else None
            vvel = ds["vvel"].values if levels else None
            kind = str(ds.attrs.get("kind", "unknown"))
        geometry = read_geometry(path)
        if not emulator.metadata.covers_spacing(geometry.dx):
            if outside is not None:
                outside.append(Path(path).name)
            continue
        if repeats and (warm_every_file or geometry.shape not in warmed):
            emulator.predict_geometry(geometry)  # warm-up for this grid size
            warmed.add(geometry.shape)
        times = []
        for _ in range(max(repeats, 1)):
            t0 = time.perf_counter()
            vel = emulator.predict_geometry(geometry)
            times.append(time.perf_counter() - t0)
        ice = geometry.thickness > 0
        ref = np.stack([ubar[ice], vbar[ice]])
        est = np.stack([vel.ubar[ice], vel.vbar[ice]])
        row = dict(file=Path(path).name, kind=kind, dx=geometry.dx, grid=list(geometry.shape),
                   rel_l2_ubar=relative_l2(est, ref),
                   max_speed=float(np.max(np.hypot(ubar, vbar))),
                   inference_s=statistics.median(times) if repeats else None)
        row.update(location_fields(vel, ubar, vbar, geometry.thickness))
        if ubar_only:
            rows.append(row)
            continue
        sia = sia_velocity(geometry, physics=phys)  # the cheap local baseline, same glacier
        row["rel_l2_ubar_sia"] = relative_l2(np.stack([sia.ubar[ice], sia.vbar[ice]]), ref)
        if levels and vel.u is not None and vel.u.shape == uvel.shape:
            rs = np.stack([uvel[-1][ice], vvel[-1][ice]])
            es = np.stack([vel.u[-1][ice], vel.v[-1][ice]])
            row["rel_l2_surface"] = relative_l2(es, rs)
            kw = dict(thickness=geometry.thickness, surface=geometry.surface, dx=geometry.dx,
                      dy=geometry.dy, sliding_coefficient=geometry.sliding_coefficient,
                      rate_factor=geometry.rate_factor, physics=phys, vertical=vert)
            mask = ice.astype(float)
            e_sol = float(blatter_pattyn_energy(tf.constant(uvel, tf.float64), tf.constant(vvel, tf.float64), **kw))
            e_emu = float(blatter_pattyn_energy(tf.constant(vel.u * mask, tf.float64),
                                                tf.constant(vel.v * mask, tf.float64), **kw))
            row["energy_gap"] = (e_emu - e_sol) / abs(e_sol)
        rows.append(row)
    return rows


def location_fields(vel, ubar, vbar, thickness):
    """Where the ubar error lies (``verification.error_location``): the error on the interior band
    and each band's share of the squared error and of the ice nodes, as fields of a row."""
    from glacier_emulator.verification.error_location import error_by_location

    loc = error_by_location(np.stack([vel.ubar, vel.vbar]), np.stack([ubar, vbar]), thickness)
    return dict(rel_l2_ubar_interior=loc["rel_l2_interior"], error_share=loc["error_share"],
                node_share=loc["node_share"])


def summarise(rows, key):
    values = [r[key] for r in rows if r.get(key) is not None]
    if not values:
        return None
    return dict(median=float(np.median(values)), p90=float(np.percentile(values, 90)), n=len(values))


def median_interval(values, level=0.9, resamples=10000, seed=0):
    """A bootstrap interval of the median (``level`` central; percentiles of resampled medians).

    With a few dozen test glaciers the median itself is uncertain by several thousandths: the card
    prints this interval beside it so that a difference from a target or another model can be read
    against it. Seeded: the same per-glacier errors always give the same interval.
    """
    values = np.asarray(values, float)
    if values.size < 2:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    medians = np.median(rng.choice(values, (resamples, values.size)), axis=1)
    tail = 50.0 * (1.0 - level)
    return tuple(float(v) for v in np.percentile(medians, [tail, 100.0 - tail]))


def recipe_file(name: str, *versions: str, configs: Path = ROOT / "training" / "configs") -> str:
    """The recipe of a model: the config in ``configs`` with its name and the first of
    ``versions`` that one has (a model has several stages, each a config of the same name; a
    candidate trained under another version, e.g. ``1.7.0-wide96``, and renamed on shipping is
    found by its shipped version), else ``NAME.yaml``; repository-relative."""
    import yaml

    parsed = [(path, yaml.safe_load(path.read_text()) or {}) for path in sorted(configs.glob("*.yaml"))]
    for version in versions:
        for path, cfg in parsed:
            if cfg.get("name") == name and str(cfg.get("version")) == str(version):
                return f"training/configs/{path.name}"
    return f"training/configs/{name}.yaml"


def _storage_note(md: dict, json_path: Path) -> str:
    """The card's sentence on the weights file: its size and storage dtype."""
    model_path = json_path.with_suffix(".keras")
    size = f"{model_path.stat().st_size / 1e6:.2f} MB" if model_path.is_file() else "size unknown"
    if md.get("weights_dtype", "float32") == "float16":
        return (f"Weights file: {size}, the kernels of {FLOAT16_MIN_SIZE} values or more stored as "
                "float16, the rest float32 (`glacier_emulator.io.weights`); the network computes in "
                "float32, and its predictions differ from those of the float32 weights by about "
                "1e-4 of the speed (`scripts/weights_precision.py`).")
    return f"Weights file: {size}, float32."


def _extent_note(md) -> str:
    """The card's sentence on the glacier's size in grid cells (see ``WIDE_ICE_CELLS``)."""
    from glacier_emulator.constants import EXAMPLE_EXTENT_ERRORS as example, WIDE_ICE_CELLS

    shapes = (md.get("training_data") or {}).get("grid_shapes")
    trained = f"Trained on {', '.join(shapes)} grids; the" if shapes else "The"
    errors = ", ".join(f"{err:.2f} at {dx:.0f} m" for dx, err in example.rel_l2_ubar)
    return (f"{trained} error grows with the extent of the ice in grid cells, not in metres "
            f"({example.model} on the bundled example glacier, 7 km of ice: {errors}; "
            "`scripts/results/extent.md`): ice wider than "
            f"{WIDE_ICE_CELLS} cells gets an `ExtentWarning`, and `coarsen=\"auto\"` "
            "(`--coarsen auto`) predicts it on a coarser grid (that glacier at 50 m: "
            f"{example.coarsen_auto_at_50m:.2f}). ")


def _training_summary(md) -> str:
    td = dict(md.get("training_data") or {})
    cfg = dict(td.get("config") or {})
    source = td.get("derived_from")
    versions = (cfg.get("version", ""), md.get("version", ""))  # trained as, shipped as
    if source:
        recipe = (f"derived from {source}; recipe of the source: "
                  f"`{recipe_file(cfg.get('name', '?'), *versions)}`")
    else:
        # the config's name: a model shipped under another name (velocity3d-prior-large) keeps
        # the name it was trained under in its config
        recipe = f"recipe: `{recipe_file(cfg.get('name') or md['name'], *versions)}`"
    commands = "training/README.md"
    if td.get("recipe"):  # the GPU recipe (training/gpu/import_weights.py writes these facts)
        recipe = f"recipe: `{td['recipe']}`" + (f" from {td['init_from']}" if td.get("init_from") else "")
        commands = "training/README.md and training/gpu/README.md"
    parts = [f"{recipe} (commands in {commands})."]
    if td.get("recipe"):
        parts.append(f"{td.get('mode')} training on {td['count']} glaciers labelled on the GPU "
                     f"({td.get('validation_count')} validation glaciers), {td.get('steps')} steps of batch "
                     f"{td.get('batch_size')}; crops: {td.get('crop')}.")
    elif "count" in td:
        parts.append(f"{td.get('mode')} training on {td['count']} files ({td.get('labels')} labels), "
                     f"{td.get('validation_count', '?')} validation files, {td.get('steps')} steps of batch "
                     f"{cfg.get('batch_size')} on {cfg.get('crop_size')}-node crops"
                     + (f" (one batch in {td['wide_every']}: {td['wide_crop'][0]}-node crops of the "
                        f"{td.get('wide_count')} glaciers whose grid holds them)"
                        if td.get("wide_crop") else "")
                     + (f", starting from `{cfg['init_from']}`" if cfg.get("init_from") else "") + ".")
    return " ".join(parts)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model")
    parser.add_argument("--test", nargs="+", help="labelled NetCDF files or folders (required unless --card-only)")
    parser.add_argument("--skip", type=int, default=0, help="leave out the first N files")
    parser.add_argument("--card", help="write the model card (markdown) here")
    parser.add_argument("--extra-test", nargs="*", default=[], metavar="NAME=DIR",
                        help="further held-out sets, reported separately under their name")
    parser.add_argument("--notes", help="a markdown file appended to the card (recipe, targets, caveats)")
    parser.add_argument("--compare-symmetrise", nargs="*", default=[], metavar="MODE",
                        choices=SYMMETRISE_MODES,
                        help="also measure ubar error and inference time with these symmetry averagings")
    parser.add_argument("--refine", nargs="*", type=int, default=[], metavar="N",
                        help="also measure the prediction refined by N reference-solver iterations "
                        "(Emulator.with_refine; ubar, surface, energy gap, time) on every test set")
    parser.add_argument("--refine-only", action="store_true",
                        help="evaluate only the --refine rows and add them to the evaluation stored in "
                        "the model's JSON (then write --card from it)")
    parser.add_argument("--location-only", action="store_true",
                        help="evaluate only where the error lies (margin, domain edge, interior; the "
                        "network's prediction on every test set) and add it to the evaluation stored in "
                        "the model's JSON (then write --card from it)")
    parser.add_argument("--no-update", action="store_true", help="do not write the accuracy into the JSON")
    parser.add_argument("--card-only", action="store_true",
                        help="evaluate nothing: write --card from the evaluation stored in the model's JSON "
                        "(after editing the --notes)")
    args = parser.parse_args()
    json_path = Path(args.model).with_suffix(".json")
    if args.card_only:
        if not args.card:
            parser.error("--card-only needs --card")
        write_card(args, json_path, *stored_evaluation(json_path))
        return
    if not args.test:
        parser.error("--test is required (unless --card-only)")
    machine = machine_info()  # before the evaluation: its load is the start's

    files = []
    for item in args.test:
        p = Path(item)
        files.extend(sorted(p.glob("*.nc")) if p.is_dir() else [p])
    files = files[args.skip:]
    from glacier_emulator.emulator import Emulator

    emulator = Emulator.load(args.model)
    if args.refine_only:
        if not args.refine:
            parser.error("--refine-only needs --refine N")
        accuracy, rows, extra_rows = stored_evaluation(json_path)
        accuracy["refine"] = refine_rows(emulator, files, args)
        accuracy["refine_start"] = refine_start(emulator, args.refine)
        accuracy["refine_measured"] = dict(
            machine=dict(machine, load_average_end=load_average()),
            date=datetime.now(timezone.utc).isoformat(timespec="seconds"))
        print(json.dumps(accuracy["refine"], indent=2))
        if not args.no_update:
            store_evaluation(json_path, accuracy)
        if args.card:
            write_card(args, json_path, accuracy, rows, extra_rows)
        return
    if args.location_only:
        accuracy, rows, extra_rows = stored_evaluation(json_path)
        largest = add_locations(emulator, held_out_sets(files, args), rows, extra_rows)
        accuracy["location_measured"] = dict(
            machine=dict(machine, load_average_end=load_average()),
            date=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            largest_rel_l2_ubar_difference=largest)
        print(f"where the error lies: added to {len(rows)} + {sum(map(len, extra_rows.values()))} rows; "
              f"largest difference from the stored ubar errors {largest:.2e}")
        if not args.no_update:
            store_evaluation(json_path, accuracy)
        if args.card:
            write_card(args, json_path, accuracy, rows, extra_rows)
        return
    outside = []
    rows = evaluate(emulator, files, outside=outside)
    by_kind = defaultdict(list)
    for r in rows:
        by_kind[r["kind"]].append(r)
    accuracy = dict(
        symmetrise=emulator.model.symmetrise, test_files=len(rows), test_set=[str(t) for t in args.test], skipped_first=args.skip,
        outside_spacing_range=outside, rel_l2_ubar=summarise(rows, "rel_l2_ubar"), rel_l2_surface=summarise(rows, "rel_l2_surface"),
        energy_gap=summarise(rows, "energy_gap"), rel_l2_ubar_sia=summarise(rows, "rel_l2_ubar_sia"),
        per_kind={k: dict(rel_l2_ubar=summarise(v, "rel_l2_ubar"), rel_l2_surface=summarise(v, "rel_l2_surface"))
                  for k, v in sorted(by_kind.items())},
        inference_s_median=float(np.median([r["inference_s"] for r in rows])) if rows else None,
        per_file=[{k: v for k, v in r.items() if k != "inference_s"} for r in rows],
        extra={},
        machine=dict(machine, load_average_end=load_average()),
        date=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )
    sets = held_out_sets(files, args)
    extra_rows = {}
    for item in args.extra_test:
        name, _, folder = item.partition("=")
        outside = []
        extra_rows[name] = evaluate(emulator, sets[name], outside=outside)
        group = extra_rows[name]
        accuracy["extra"][name] = dict(
            test_set=folder, test_files=len(group), outside_spacing_range=outside,
            rel_l2_ubar=summarise(group, "rel_l2_ubar"),
            rel_l2_surface=summarise(group, "rel_l2_surface"), energy_gap=summarise(group, "energy_gap"),
            rel_l2_ubar_sia=summarise(group, "rel_l2_ubar_sia"),
            per_file=[{k: v for k, v in r.items() if k != "inference_s"} for r in group])
    modes = {emulator.model.symmetrise: (rows, extra_rows)}
    for mode in args.compare_symmetrise:
        if mode not in modes:
            other = emulator.with_symmetrise(mode)
            modes[mode] = (evaluate(other, files, ubar_only=True),
                           {name: evaluate(other, sets[name], ubar_only=True, outside=[], repeats=0)
                            for name in extra_rows})
    if len(modes) > 1:
        accuracy["symmetrise_modes"] = {
            mode: dict(rel_l2_ubar=summarise(group, "rel_l2_ubar"),
                       inference_s_median=float(np.median([r["inference_s"] for r in group])),
                       extra={name: dict(rel_l2_ubar=summarise(g, "rel_l2_ubar"))
                              for name, g in extra.items()})
            for mode, (group, extra) in modes.items()}
    if args.refine:
        accuracy["refine"] = refine_rows(emulator, files, args)
        accuracy["refine_start"] = refine_start(emulator, args.refine)
    print(json.dumps(accuracy, indent=2))
    if not args.no_update and json_path.is_file():
        store_evaluation(json_path, accuracy)
    if args.card:
        write_card(args, json_path, accuracy, rows, extra_rows)


def stored_evaluation(json_path):
    """The held-out evaluation stored in a model's JSON: (accuracy, its rows, the rows of each
    extra set), what :func:`write_card` takes."""
    accuracy = json.loads(json_path.read_text())["accuracy"]["held_out"]
    return accuracy, accuracy["per_file"], {k: v["per_file"] for k, v in accuracy["extra"].items()}


def store_evaluation(json_path, accuracy):
    """Write ``accuracy`` into the model's JSON as its held-out evaluation."""
    meta = json.loads(json_path.read_text())
    meta["accuracy"] = dict(meta.get("accuracy") or {}, held_out=accuracy)
    json_path.write_text(json.dumps(meta, indent=2) + "\n")


def held_out_sets(files, args):
    """``{"test": files, name: files of each --extra-test set}``."""
    sets = {"test": files}
    sets.update({item.partition("=")[0]: sorted(Path(item.partition("=")[2]).glob("*.nc"))
                 for item in args.extra_test})
    return sets


def refine_start(emulator, iterations) -> str:
    """What each N of ``--refine`` started from (``Emulator.refine_start_description``), e.g.
    ``"N = 10 from the levels of velocity3d-prior 1.8.0, N = 30 from the shallow-ice profile"``."""
    return ", ".join(f"N = {n} from the {emulator.with_refine(n).refine_start_description()}"
                     for n in iterations)


def refine_rows(emulator, files, args):
    """``--refine``: each N on the test set and every ``--extra-test`` set."""
    sets = held_out_sets(files, args)
    out = {}
    for iterations in args.refine:
        refined = emulator.with_refine(iterations)
        out[str(iterations)] = {name: _refine_summary(evaluate(refined, group, repeats=1, warm_every_file=False))
                                for name, group in sets.items()}
    return out


LOCATION_KEYS = ("rel_l2_ubar_interior", "error_share", "node_share")


def add_locations(emulator, sets, rows, extra_rows):
    """``--location-only``: where the error lies (:func:`location_fields`), added to the stored
    rows of every test set in place. Returns the largest difference between a file's ubar error
    now and as stored (the same weights and files give 0 to round-off)."""
    largest = 0.0
    for name, files in sets.items():
        fresh = {r["file"]: r for r in evaluate(emulator, files, ubar_only=True, repeats=1, warm_every_file=False)}
        for r in rows if name == "test" else extra_rows[name]:
            if r["file"] not in fresh:
                raise SystemExit(f"{r['file']} of the stored evaluation ({name}) is not among the test files given")
            new = fresh[r["file"]]
            largest = max(largest, abs(new["rel_l2_ubar"] - r["rel_l2_ubar"]))
            r.update({k: new[k] for k in LOCATION_KEYS})
    return largest


def _location_lines(accuracy, rows, extra_rows):
    """The card's table of where the error lies, if measured."""
    if not rows or "error_share" not in rows[0]:
        return []
    from glacier_emulator.verification.error_location import BANDS

    measured = accuracy.get("location_measured")
    lines = ["Where the ubar error lies (`glacier_emulator.verification.error_location`): ice nodes "
             "within 3 nodes of the domain edge (`edge`), other ice within 2 nodes of an ice-free node "
             "(`margin`), the rest (`interior`); each band's share of the squared error and of the ice "
             "nodes, medians over the glaciers"
             + (f" (measured {measured['date']} on {describe_machine(measured['machine'])}; the ubar "
                f"errors recomputed then are within {measured['largest_rel_l2_ubar_difference']:.1g} of the "
                "stored ones above)" if measured else "")
             + ". A band whose share of the error exceeds its share of the nodes is where the network is "
             "worse than on average.", "",
             "| glaciers | n | rel. L2 ubar median | interior only | error share margin / edge / interior | "
             "node share margin / edge / interior |",
             "|---|---|---|---|---|---|"]
    for name, group in [("all", rows)] + list(extra_rows.items()):
        a, b = summarise(group, "rel_l2_ubar"), summarise(group, "rel_l2_ubar_interior")

        def shares(key):
            return " / ".join(f"{np.median([r[key][band] for r in group if r[key][band] is not None]):.2f}"
                              for band in BANDS)

        interior = f"{b['median']:.3f}" if b else "-"
        lines.append(f"| {name} | {len(group)} | {a['median']:.3f} | {interior} | "
                     f"{shares('error_share')} | {shares('node_share')} |")
    return lines + [""]


def _refine_summary(group):
    return dict(test_files=len(group), rel_l2_ubar=summarise(group, "rel_l2_ubar"),
                rel_l2_surface=summarise(group, "rel_l2_surface"),
                energy_gap=summarise(group, "energy_gap"),
                inference_s_median=float(np.median([r["inference_s"] for r in group])) if group else None,
                per_file=[dict(file=r["file"], rel_l2_ubar=r["rel_l2_ubar"]) for r in group])


def _start_words(accuracy) -> str:
    """How the refinements of the card's table started (``refine_start``, recorded since the
    twenty-third session; before it, a 3-D model from its levels and a 2-channel one from the
    shallow-ice profile of its prediction)."""
    if accuracy.get("refine_start"):
        return accuracy["refine_start"]
    return ("a 2-channel model from the shallow-ice vertical profile of its prediction, a 3-D "
            "one from its levels")


def _refine_lines(accuracy):
    """The card's table of the refined predictions (``--refine``), if measured."""
    refine = accuracy.get("refine")
    if not refine:
        return []
    lines = ["Refined by the reference solver (`predict_geometry(..., refine=N)`, `--refine N` of "
             "`predict` and `run`: the network's prediction, then at most N L-BFGS iterations of the "
             "Blatter-Pattyn solver, started as `Emulator.refine_initial` does: " + _start_words(accuracy)
             + "). Time: one call, after a "
             "warm-up call on the first glacier of each grid size (which compiles)"
             + (f"; measured {accuracy['refine_measured']['date']} on "
                f"{describe_machine(accuracy['refine_measured']['machine'])}"
                if "refine_measured" in accuracy else "") + ".", "",
             "| refine N | glaciers | n | rel. L2 ubar median | p90 | surface median | energy gap median | time (ms) |",
             "|---|---|---|---|---|---|---|---|"]

    def fmt(s, k, digits=3):
        return f"{s[k]:.{digits}f}" if s else "-"

    for iterations, sets in refine.items():
        for name, r in sets.items():
            name = "all" if name == "test" else name  # the --test set, "all" in the table above
            lines.append(f"| {iterations} | {name} | {r['test_files']} | {fmt(r['rel_l2_ubar'], 'median')} | "
                         f"{fmt(r['rel_l2_ubar'], 'p90')} | {fmt(r['rel_l2_surface'], 'median')} | "
                         f"{fmt(r['energy_gap'], 'median', 4)} | "
                         + (f"{r['inference_s_median'] * 1000:.0f} |" if r["inference_s_median"] is not None else "- |"))
    return lines + [""]


def _kind_lines(rows, extra_rows):
    """The card's table of ubar's error per glacier type on every held-out set (the table above
    splits only the first set by type); none without further sets."""
    sets = [("all", rows)] + list(extra_rows.items())
    kinds = sorted({r["kind"] for _, group in sets for r in group})
    if not extra_rows or not kinds:
        return []
    lines = ["", "Per glacier type on every held-out set: rel. L2 ubar median / p90 (number of glaciers).",
             "", "| glaciers | " + " | ".join(kinds) + " |", "|---|" + "---|" * len(kinds)]
    for name, group in sets:
        cells = []
        for kind in kinds:
            s = summarise([r for r in group if r["kind"] == kind], "rel_l2_ubar")
            cells.append(f"{s['median']:.3f} / {s['p90']:.3f} ({s['n']})" if s else "-")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def write_card(args, json_path, accuracy, rows, extra_rows):
    """The model card: the metadata, the held-out tables, then the --notes file."""
    by_kind = defaultdict(list)
    for r in rows:
        by_kind[r["kind"]].append(r)
    md = json.loads(json_path.read_text())
    lines = [f"# Model card: {md['name']}", "", md.get("description") or "", "",
             "## Inputs and outputs", "",
             "| input | units | scale |", "|---|---|---|"]
    for inp in md["inputs"]:
        lines.append(f"| {inp['name']} | {inp.get('units', '')} | {inp.get('scale', '')} |")
    out = md["outputs"]
    grid = md.get("grid_spacing", {})
    seen = (md.get("training_data") or {}).get("grid_spacings_seen")
    lines += ["", f"Outputs: {out.get('kind')} ({len(out.get('names', []))} channels), "
              f"{out.get('units')}; levels: {md.get('vertical')}.", "",
              f"Valid grid spacing (others are refused): {grid.get('min'):g}-{grid.get('max'):g} m"
              + (f" (the training glaciers': {seen['min']:.1f}-{seen['max']:.1f} m). " if seen else ". ")
              + _extent_note(md) +
              "Inputs outside these plausibility ranges are refused on every call: "
              + ", ".join(f"{k} {v['min']:g} to {v['max']:g} {v.get('units', '')}".rstrip()
                          for k, v in (md.get("input_ranges") or {}).items())
              + ".", "",
              f"Physics (the package defaults unless stated): {md.get('physics')}.", "",
              _storage_note(md, json_path), "",
              "## Training", "", _training_summary(md), "",
              "## Held-out accuracy (against the converged reference solver)", "",
              f"{len(rows)} glaciers never used for training or model selection "
              f"({', '.join(accuracy['test_set'])}, first {accuracy['skipped_first']} files left out); "
              f"measured {accuracy['date']} "
              f"on {describe_machine(accuracy['machine'])}.", "",
              "| glaciers | n | rel. L2 ubar median | (90 % interval) | p90 | rel. L2 surface median | p90 | "
              "shallow-ice ubar median |",
              "|---|---|---|---|---|---|---|---|"]

    def fmt(s, k):
        return f"{s[k]:.3f}" if s else "-"

    def left_out(acc):
        n = len(acc.get("outside_spacing_range") or [])
        return f"; {n} outside the grid-spacing range left out" if n else ""

    for name, group in [("all" + left_out(accuracy).replace(";", ","), rows)] + sorted(by_kind.items()) + [
            (f"{k} ({accuracy['extra'][k]['test_set']}{left_out(accuracy['extra'][k])})", v)
            for k, v in extra_rows.items()]:
        a, b = summarise(group, "rel_l2_ubar"), summarise(group, "rel_l2_surface")
        c = summarise(group, "rel_l2_ubar_sia")
        low, high = median_interval([r["rel_l2_ubar"] for r in group])
        interval = f"{low:.3f}-{high:.3f}" if np.isfinite(low) else "-"
        lines.append(f"| {name} | {len(group)} | {fmt(a, 'median')} | {interval} | {fmt(a, 'p90')} | "
                     f"{fmt(b, 'median')} | {fmt(b, 'p90')} | {fmt(c, 'median')} |")
    lines += ["", "Interval: 90 % bootstrap interval of the median (10000 resamplings of the glaciers): how "
              "far the median of another set of glaciers like these could fall. Last column: the "
              "shallow-ice approximation (`glacier_emulator.physics.sia`, local, with Weertman sliding) "
              "on the same glaciers, the cheap baseline an emulator has to beat."]
    lines += _kind_lines(rows, extra_rows)
    gap = accuracy["energy_gap"]
    lines += ["", f"Energy gap (E_emulator - E_solver)/|E_solver|: median {gap['median']:.4f}, "
              f"p90 {gap['p90']:.4f}." if gap else "",
              f"Inference: median {accuracy['inference_s_median'] * 1000:.1f} ms per glacier "
              f"({rows[0]['grid'][0]}x{rows[0]['grid'][1]}, CPU), network averaged over the "
              f"`{accuracy['symmetrise']}` symmetries of the grid." if rows else "", ""]
    if "symmetrise_modes" in accuracy:
        modes = accuracy["symmetrise_modes"]
        # the extra sets every mode was measured on (evaluations stored before they were: none)
        names = [n for n in accuracy.get("extra", {}) if all(n in m.get("extra", {}) for m in modes.values())]
        lines += ["Accuracy and cost of the symmetry averaging (same weights, same held-out glaciers; "
                  "`Emulator.with_symmetrise`, `--symmetrise` of `predict` and `run`); rel. L2 of ubar, "
                  "median (p90) of each set:", "",
                  "| symmetrise | network evaluations | " + " | ".join(["all"] + names)
                  + " | inference (ms) |",
                  "|---|---|" + "---|" * (len(names) + 2)]
        for mode, m in modes.items():
            cells = [m["rel_l2_ubar"]] + [m["extra"][n]["rel_l2_ubar"] for n in names]
            lines.append(f"| {mode} | {SYMMETRY_IMAGES[mode]} | "
                         + " | ".join(f"{c['median']:.3f} ({c['p90']:.3f})" for c in cells)
                         + f" | {m['inference_s_median'] * 1000:.1f} |")
        lines.append("")
    lines += _location_lines(accuracy, rows, extra_rows)
    lines += _refine_lines(accuracy)
    if args.notes:
        lines += [Path(args.notes).read_text()]
    Path(args.card).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
