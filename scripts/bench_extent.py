#!/usr/bin/env python
"""Benchmark: the emulator's error against the glacier's extent in grid cells.

The bundled example glacier (year 0: 7 km of ice on a 10 km valley) at several grid spacings
(subsampled from 100 m for coarser ones, bilinearly interpolated for finer ones): the same
glacier spanning fewer or more cells. At each spacing a converged reference solve (the solver's
defaults) against the emulator: relative L2 error of (ubar, vbar) on ice, and the ratio of the
emulator's summed speed to the solver's (all ice, and ice thicker than 100 m), and the error of
the coarse-grid path (``Emulator.predict_geometry(coarsen="auto")``, and ``coarsen=2``).
Spacings outside the model's grid-spacing range are skipped with a note.

    python scripts/bench_extent.py [--model NAME|FILE.keras] [--spacings 200 100 50] [--output DIR]

Writes DIR/extent.json and extent.md (default scripts/results/). The solve at 50 m (200 x 200
nodes) takes about 3-4 minutes on a 2-core CPU.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from glacier_emulator.provenance import describe_machine, load_average, machine_info

RESULTS = Path(__file__).resolve().parent / "results"


def example_at(spacing: float):
    """The example glacier's year-0 geometry on a grid of ``spacing`` m (from its 100 m grid)."""
    from glacier_emulator.data import example_geometry
    from glacier_emulator.fields import Geometry

    base = example_geometry()
    step = spacing / base.dx
    if abs(step - round(step)) < 1e-9 and round(step) >= 1:
        k = int(round(step))
        return Geometry(thickness=base.thickness[::k, ::k], bed=base.bed[::k, ::k], dx=spacing)
    ny, nx = base.thickness.shape
    yf = np.arange(0.0, (ny - 1) * base.dx + 1e-6, spacing) / base.dx
    xf = np.arange(0.0, (nx - 1) * base.dx + 1e-6, spacing) / base.dx

    def resample(field):
        y0 = np.clip(np.floor(yf).astype(int), 0, ny - 2)
        x0 = np.clip(np.floor(xf).astype(int), 0, nx - 2)
        wy, wx = (yf - y0)[:, None], (xf - x0)[None, :]
        f = field
        return ((1 - wy) * (1 - wx) * f[np.ix_(y0, x0)] + (1 - wy) * wx * f[np.ix_(y0, x0 + 1)]
                + wy * (1 - wx) * f[np.ix_(y0 + 1, x0)] + wy * wx * f[np.ix_(y0 + 1, x0 + 1)])

    return Geometry(thickness=np.clip(resample(base.thickness), 0.0, None), bed=resample(base.bed), dx=spacing)


def markdown(report: dict) -> str:
    """The report as a markdown table (missing entries: -)."""

    def err(r, key):
        return f"{r[key]:.3f}" if key in r else "-"

    lines = ["# Emulator error against the glacier's extent in grid cells", "",
             f"Date: {report['date']}. Machine: {describe_machine(report['machine'])}. Model: "
             f"`{report['model']}`. Command: `{report['command']}`.", "",
             "The bundled example glacier (year 0) at several grid spacings, each against a converged "
             "reference solve.", "",
             "| dx (m) | grid | ice extent (cells) | rel. L2 ubar | speed ratio (all ice / H > 100 m) "
             "| ExtentWarning | coarsen auto: factor, rel. L2 | halved: rel. L2 | solve (s) |",
             "|---:|---|---:|---:|---|---|---|---:|---:|"]
    for r in report["rows"]:
        if "rel_l2_ubar" not in r:
            lines.append(f"| {r['dx']:g} | {r['grid'][0]} x {r['grid'][1]} | {r['ice_extent_cells']} | - | "
                         f"{r['note']} | | | | |")
            continue
        lines.append(f"| {r['dx']:g} | {r['grid'][0]} x {r['grid'][1]} | {r['ice_extent_cells']} | "
                     f"{r['rel_l2_ubar']:.3f} | {r['speed_ratio']:.3f} / {r['speed_ratio_thick']:.3f} | "
                     f"{'yes' if r['extent_warning'] else 'no'} | "
                     f"{r.get('coarsen_auto', '-')}, {err(r, 'rel_l2_ubar_coarsen_auto')} | "
                     f"{err(r, 'rel_l2_ubar_coarsen_halved')} | {r['solver_s']:.0f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", help="a shipped name or a .keras file (default: the default model)")
    parser.add_argument("--spacings", nargs="+", type=float, default=[200.0, 100.0, 50.0])
    parser.add_argument("--output", default=str(RESULTS))
    args = parser.parse_args(argv)

    import warnings

    from glacier_emulator.cli.predict import resolve_model
    from glacier_emulator.emulator import Emulator, ExtentWarning, ice_extent_cells
    from glacier_emulator.fields import relative_l2
    from glacier_emulator.numerics.solver import solve

    emulator = resolve_model(args.model) if args.model else Emulator.pretrained()
    report = dict(date=datetime.now(timezone.utc).isoformat(timespec="seconds"), machine=machine_info(),
                  model=f"{emulator.name} {emulator.metadata.version}",
                  command="python scripts/bench_extent.py " + " ".join(sys.argv[1:] if argv is None else argv),
                  rows=[])
    for spacing in args.spacings:
        geometry = example_at(spacing)
        extent = ice_extent_cells(geometry.thickness)
        row = dict(dx=spacing, grid=list(geometry.thickness.shape), ice_extent_cells=extent)
        if not emulator.metadata.covers_spacing(spacing):
            row["note"] = "outside the model's grid spacing range: skipped"
            report["rows"].append(row)
            continue
        t = time.perf_counter()
        result = solve(geometry)
        row["solver_s"] = time.perf_counter() - t
        row["solver_converged"] = bool(result.converged)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ExtentWarning)
            v = emulator.predict_geometry(geometry)
        row["extent_warning"] = any(issubclass(w.category, ExtentWarning) for w in caught)
        ice = geometry.thickness > 0
        ref = np.stack([result.velocity.ubar[ice], result.velocity.vbar[ice]])
        emu = np.stack([v.ubar[ice], v.vbar[ice]])
        speed_ref, speed_emu = np.hypot(*ref), np.hypot(*emu)
        thick = geometry.thickness[ice] > 100
        row.update(rel_l2_ubar=float(relative_l2(emu, ref)),
                   speed_ratio=float(speed_emu.sum() / speed_ref.sum()),
                   speed_ratio_thick=float(speed_emu[thick].sum() / speed_ref[thick].sum()))
        # the coarse-grid path: coarsen="auto", and one halving for comparison
        for key, mode in (("auto", "auto"), ("halved", 2)):
            levels = emulator.coarsening_levels(geometry, mode)
            if not emulator.metadata.covers_spacing(spacing * 2 ** levels):
                continue
            w = emulator.predict_geometry(geometry, coarsen=mode)
            row[f"coarsen_{key}"] = 2 ** levels
            row[f"rel_l2_ubar_coarsen_{key}"] = float(relative_l2(np.stack([w.ubar[ice], w.vbar[ice]]), ref))
        print(json.dumps(row), flush=True)
        report["rows"].append(row)
    report["machine"]["load_average_end"] = load_average()
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    (out / "extent.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "extent.md").write_text(markdown(report))
    print(f"wrote {out / 'extent.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
