#!/usr/bin/env python
"""Inference cost of the U-Net emulator versus grid size: time, peak memory, cost per cell.

A *cost* benchmark: the model has the production architecture (``GlacierUNet`` defaults:
filters 32, depth 4, kernel 3, 2 convolutions per level, GELU, ``symmetrise="x"``) but random
weights, so the velocities are meaningless; the time and memory of a forward pass do not depend
on the weights.

Each (grid size, batch size) case runs in its own subprocess so that its peak memory can be read
from ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` (tracemalloc does not see TensorFlow's
allocations): the child builds the model, runs a small warm-up (its peak is the baseline), then
the measured case; the reported memory is the growth of the peak over the baseline. On a GPU the
device's peak from ``tf.config.experimental.get_memory_info`` is reported as well.

Timings are the median (and minimum) over ``--repeats`` forward passes after one warm-up pass of
the same size (which traces the graph), through the emulator's compiled forward function (no XLA:
convolutions are fastest without it on CPU), plus one end-to-end call of
``Emulator.velocity`` (input validation, slopes, conversion to ``Velocity`` objects).

Usage::

    python scripts/bench_inference.py                       # 128^2 .. 1024^2, batch 1 and 4
    python scripts/bench_inference.py --sizes 128 256 --batches 1 --repeats 3
    python scripts/bench_inference.py --max-cells 2e6     # skip 1024^2 x 4 on a small machine
    python scripts/bench_inference.py --symmetrise none x xy --sizes 256 --batches 1

Writes ``scripts/results/inference.json`` and ``scripts/results/inference.md`` (``--output``).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from glacier_emulator.constants import SYMMETRISE_MODES
from glacier_emulator.provenance import describe_machine, load_average, machine_info

RESULTS = Path(__file__).resolve().parent / "results"


def _rss_mib() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def child(args: argparse.Namespace) -> dict:
    """One case, in this process: build, warm up, time, measure memory."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import numpy as np
    import tensorflow as tf

    from glacier_emulator.emulator import Emulator, ModelMetadata
    from glacier_emulator.models import build_unet

    gpus = tf.config.list_physical_devices("GPU")
    model = build_unet(filters=args.filters, depth=args.depth, symmetrise=args.symmetrise)
    emulator = Emulator(
        model, ModelMetadata.from_model(model, name="benchmark-random-weights", grid_spacing_range=(1.0, 1e4))
    )
    n, batch = args.size, args.batch
    rng = np.random.default_rng(0)
    x_axis = np.arange(n) * 100.0
    thickness = np.clip(300.0 * np.sin(np.pi * x_axis / x_axis[-1])[None, :]
                        * np.sin(np.pi * x_axis / x_axis[-1])[:, None], 0.0, None)
    thickness = np.broadcast_to(thickness, (batch, n, n)) * (1.0 + 0.1 * rng.random((batch, 1, 1)))
    surface = thickness + 1000.0 - 0.05 * x_axis[None, None, :]
    x = emulator.prepare_inputs(thickness=thickness, surface=surface, dx=100.0)

    small = tf.constant(x[:1, :32, :32])
    emulator._forward(small).numpy()
    baseline = _rss_mib()
    full = tf.constant(x)
    if gpus:
        tf.config.experimental.reset_memory_stats("GPU:0")
    emulator._forward(full).numpy()  # warm-up at this size
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        emulator._forward(full).numpy()
        times.append(time.perf_counter() - start)
    start = time.perf_counter()
    emulator.velocity(thickness=thickness if batch > 1 else thickness[0],
                      surface=surface if batch > 1 else surface[0], dx=100.0, batch_size=batch)
    end_to_end = time.perf_counter() - start
    result = {
        "size": n,
        "batch": batch,
        "cells": batch * n * n,
        "symmetrise": args.symmetrise,
        "median_s": statistics.median(times),
        "min_s": min(times),
        "repeats": args.repeats,
        "end_to_end_s": end_to_end,
        "peak_rss_mib": _rss_mib(),
        "peak_rss_growth_mib": _rss_mib() - baseline,
        "parameters": int(model.count_params()),
    }
    result["ns_per_cell"] = 1e9 * result["median_s"] / result["cells"]
    if gpus:
        result["gpu_peak_mib"] = tf.config.experimental.get_memory_info("GPU:0")["peak"] / 2**20
    return result


def markdown(report: dict) -> str:
    m = report["machine"]
    lines = [
        "# Emulator inference cost",
        "",
        f"Date: {report['date']}. Machine: {describe_machine(m)}; "
        f"TensorFlow {report['tensorflow']}, Keras {report['keras']}, GPU: {report['gpus'] or 'none'}.",
        "",
        f"Model: GlacierUNet filters={report['model']['filters']}, depth={report['model']['depth']} "
        f"({report['cases'][0]['parameters'] if report['cases'] else '?'} parameters), "
        "**random weights (cost benchmark only)**. Median of "
        f"{report['repeats']} forward passes after a warm-up; memory = growth of the process's peak "
        "RSS over a 32x32 warm-up.",
        "",
        "| grid | batch | symmetrise | median (s) | min (s) | end-to-end (s) | ns / cell | peak RSS growth (MiB) |",
        "|---:|---:|:---:|---:|---:|---:|---:|---:|",
    ]
    for c in report["cases"]:
        if "error" in c:
            lines.append(f"| {c['size']}^2 | {c['batch']} | {c['symmetrise']} | {c['error']} | | | | |")
            continue
        lines.append(
            f"| {c['size']}^2 | {c['batch']} | {c['symmetrise']} | {c['median_s']:.3f} | {c['min_s']:.3f} | "
            f"{c['end_to_end_s']:.3f} | {c['ns_per_cell']:.0f} | {c['peak_rss_growth_mib']:.0f} |"
        )
    lines += ["", "Linear scaling shows as a constant ns / cell across grid sizes; on a shared machine "
              "(load above the CPU count) the timings are noisy.", ""]
    return "\n".join(lines)


def parent(args: argparse.Namespace) -> dict:
    import keras
    import tensorflow as tf

    machine = machine_info()
    cases = []
    for symmetrise in args.symmetrise:
        for size in args.sizes:
            for batch in args.batches:
                if args.max_cells and batch * size * size > args.max_cells:
                    print(f"grid {size}^2, batch {batch}: skipped (over --max-cells {args.max_cells:g})")
                    cases.append({"size": size, "batch": batch, "symmetrise": symmetrise,
                                  "error": f"skipped: more than --max-cells {args.max_cells:g} cells"})
                    continue
                cmd = [sys.executable, __file__, "--child", "--size", str(size), "--batch", str(batch),
                       "--repeats", str(args.repeats), "--filters", str(args.filters),
                       "--depth", str(args.depth), "--symmetrise", symmetrise]
                print(f"grid {size}^2, batch {batch}, symmetrise={symmetrise} ...", end=" ", flush=True)
                done = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
                if done.returncode != 0:
                    tail = (done.stderr.strip().splitlines() or ["?"])[-1]
                    print(f"failed: {tail}")
                    cases.append({"size": size, "batch": batch, "symmetrise": symmetrise, "error": tail})
                    continue
                case = json.loads(done.stdout.strip().splitlines()[-1])
                print(f"{case['median_s']:.3f} s, {case['ns_per_cell']:.0f} ns/cell, "
                      f"+{case['peak_rss_growth_mib']:.0f} MiB")
                cases.append(case)
    return {
        "description": "Inference cost of the GlacierUNet emulator with random weights (cost only).",
        "date": datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat(),
        "machine": dict(machine, load_average_end=load_average()),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "gpus": [d.name for d in tf.config.list_physical_devices("GPU")],
        "model": {"filters": args.filters, "depth": args.depth},
        "repeats": args.repeats,
        "cases": cases,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 256, 512, 1024])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--symmetrise", nargs="+", default=["x"], choices=SYMMETRISE_MODES)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--filters", type=int, default=32)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--max-cells", type=float, default=None,
                        help="skip cases with more than this many cells (batch x ny x nx)")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per case")
    parser.add_argument("--output", type=Path, default=RESULTS, help="folder for inference.json/.md")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        args.symmetrise = args.symmetrise[0]
        print(json.dumps(child(args)))
        return 0
    report = parent(args)
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "inference.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.output / "inference.md").write_text(markdown(report))
    print(f"wrote {args.output / 'inference.json'} and {args.output / 'inference.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
