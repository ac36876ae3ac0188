#!/usr/bin/env python
"""Benchmark: the trained emulator against the converged reference solver, and against the machine.

Two parts, one run, one machine (the JSON and markdown record which, and when):

1. **Emulator vs solver** on held-out synthetic glaciers (``learning.synthetic``, a seed never used
   for training: default 3) at 128^2 and 512^2 nodes: the wall time of a converged solve from rest
   (the solver's defaults: tolerance 1e-9, multilevel start; its compiled energies warmed up by
   a two-iteration solve of another glacier of the same size, so compilation is not counted), the emulator's time
   (median of ``--repeats`` calls of ``Emulator.predict_geometry`` after a warm-up call), the
   speed-up, and the relative L2 error of (ubar, vbar) on ice nodes. Medians over the glaciers.
2. **Inference cost vs grid size** (128^2 to 1024^2) of the same model through its compiled forward
   pass, the floating-point operations of that pass (counted by TensorFlow's graph profiler on the
   frozen graph: 2 per multiply-add), the achieved rate, and next to it the machine's measured
   dense float32 throughput: a 2048 x 2048 matmul and a 3 x 3, 32 -> 32 channel convolution on a
   256^2 image (medians). The ratio says how close to the hardware limit the emulator runs.

    python scripts/bench_emulator.py [--model pretrained/NAME.keras] [--sizes 128 512]
        [--glaciers 3 1] [--inference-sizes 128 256 512 1024] [--repeats 5]

Writes scripts/results/emulator.json and emulator.md. Targets (reported, not asserted): speed-up
>= 1000 at relative L2 <= 0.03.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from glacier_emulator.provenance import describe_machine, load_average, machine_info

RESULTS = Path(__file__).resolve().parent / "results"


def versus_solver(emulator, size: int, count: int, seed: int, repeats: int, log) -> dict:
    from glacier_emulator.fields import relative_l2
    from glacier_emulator.learning.synthetic import SyntheticConfig, sample_geometry
    from glacier_emulator.numerics.solver import SolverConfig, solve

    physics, vertical = emulator.metadata.physics, emulator.metadata.vertical
    config = SyntheticConfig(grid=size)
    # warm-up: compile the solver's energy and the emulator at this size on another glacier
    warm = sample_geometry(10_000, seed=seed, config=config)
    solve(warm, physics=physics, vertical=vertical, config=SolverConfig(max_iterations=2))
    emulator.predict_geometry(warm)
    rows = []
    for index in range(count):
        geometry = sample_geometry(index, seed=seed, config=config)
        t0 = time.perf_counter()
        result = solve(geometry, physics=physics, vertical=vertical)
        solve_s = time.perf_counter() - t0
        emulator.predict_geometry(geometry)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            vel = emulator.predict_geometry(geometry)
            times.append(time.perf_counter() - t0)
        emu_s = statistics.median(times)
        ice = geometry.thickness > 0
        row = dict(index=index, kind=str(geometry.attrs.get("kind", "?")), dx=geometry.dx,
                   solver_s=solve_s, solver_iterations=result.iterations, solver_converged=result.converged,
                   emulator_s=emu_s, speedup=solve_s / emu_s, rel_l2_ubar=relative_l2(
                       np.stack([vel.ubar, vel.vbar]), np.stack([result.velocity.ubar, result.velocity.vbar]), ice),
                   max_speed=float(np.max(np.hypot(result.velocity.ubar, result.velocity.vbar))))
        log(f"  {size}^2 glacier {index} ({row['kind']}, dx {row['dx']:.0f} m): solver {solve_s:.1f} s "
            f"({result.iterations} its), emulator {emu_s * 1e3:.1f} ms, speed-up {row['speedup']:.0f}, "
            f"rel. L2 {row['rel_l2_ubar']:.4f}")
        rows.append(row)
    med = {k: float(np.median([r[k] for r in rows])) for k in ("solver_s", "emulator_s", "speedup", "rel_l2_ubar")}
    return dict(size=size, glaciers=rows, median=med)


def count_flops(model, size: int, channels: int) -> int:
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    fn = tf.function(lambda x: model(x, training=False))
    concrete = fn.get_concrete_function(tf.TensorSpec([1, size, size, channels], tf.float32))
    frozen = convert_variables_to_constants_v2(concrete)
    opts = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
    opts["output"] = "none"
    info = tf.compat.v1.profiler.profile(graph=frozen.graph, run_meta=tf.compat.v1.RunMetadata(), cmd="op",
                                         options=opts)
    return int(info.total_float_ops)


def hardware_throughput(repeats: int) -> dict:
    import tensorflow as tf

    def timed(fn, flops):
        fn().numpy()
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn().numpy()
            times.append(time.perf_counter() - t0)
        return flops / statistics.median(times) / 1e9

    n = 2048
    a = tf.random.normal([n, n])
    b = tf.random.normal([n, n])
    matmul = timed(lambda: tf.matmul(a, b), 2.0 * n**3)
    x = tf.random.normal([1, 256, 256, 32])
    k = tf.random.normal([3, 3, 32, 32])
    conv = timed(lambda: tf.nn.conv2d(x, k, 1, "SAME"), 2.0 * 256 * 256 * 9 * 32 * 32)
    return dict(matmul_2048_gflops=matmul, conv3x3_32ch_256_gflops=conv)


def inference_cost(emulator, sizes, repeats: int, log) -> list:
    import tensorflow as tf

    channels = emulator.model.in_channels
    rows = []
    for size in sizes:
        x_axis = np.arange(size) * 100.0
        bump = np.sin(np.pi * x_axis / x_axis[-1])
        thickness = np.clip(300.0 * bump[None, :] * bump[:, None], 0.0, None)
        surface = thickness + 1000.0 - 0.05 * x_axis[None, :]
        x = tf.constant(emulator.prepare_inputs(thickness=thickness, surface=surface, dx=100.0))
        emulator._forward(x).numpy()
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            emulator._forward(x).numpy()
            times.append(time.perf_counter() - t0)
        flops = count_flops(emulator.model, size, channels)
        t = statistics.median(times)
        rows.append(dict(size=size, median_s=t, min_s=min(times), ns_per_cell=1e9 * t / size**2,
                         gflop=flops / 1e9, gflops_per_s=flops / t / 1e9))
        log(f"  {size}^2: {t * 1e3:.1f} ms, {flops / 1e9:.2f} GFLOP, {flops / t / 1e9:.1f} GFLOP/s")
    return rows


def markdown(report: dict) -> str:
    m = report["machine"]
    hw = report["hardware"]
    lines = [
        "# Emulator against the converged solver, and against the hardware", "",
        f"Date: {report['date']}. Machine: {describe_machine(m)}. "
        f"TensorFlow {report['tensorflow']}, GPU: {report['gpus'] or 'none'}.", "",
        f"Model: `{report['model']}` ({report['parameters']} parameters). Command: `{report['command']}`.", "",
        "## 1. Emulator vs converged solve (held-out synthetic glaciers, seed "
        f"{report['seed']})", "",
        "| grid | glaciers | solver (s) | emulator (s) | speed-up | rel. L2 ubar |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for case in report["versus_solver"]:
        md = case["median"]
        lines.append(f"| {case['size']}^2 | {len(case['glaciers'])} | {md['solver_s']:.1f} | {md['emulator_s']:.3f} | "
                     f"{md['speedup']:.0f} | {md['rel_l2_ubar']:.4f} |")
    lines += ["", "Medians over the glaciers; the emulator's time is itself a median of "
              f"{report['repeats']} calls of `predict_geometry` (inputs, slopes, output objects included). "
              "Targets (not asserted): speed-up >= 1000 at rel. L2 <= 0.03.", "",
              "Per glacier:", "", "| grid | # | kind | dx (m) | max speed (m/yr) | solver (s) | its | emulator (s) | speed-up | rel. L2 |",
              "|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for case in report["versus_solver"]:
        for r in case["glaciers"]:
            lines.append(f"| {case['size']}^2 | {r['index']} | {r['kind']} | {r['dx']:.0f} | {r['max_speed']:.0f} | "
                         f"{r['solver_s']:.1f} | {r['solver_iterations']} | {r['emulator_s']:.4f} | "
                         f"{r['speedup']:.0f} | {r['rel_l2_ubar']:.4f} |")
    lines += ["", "## 2. Inference cost vs grid size, and the hardware limit", "",
              f"Measured dense float32 throughput of this machine: matmul 2048^2 **{hw['matmul_2048_gflops']:.1f} GFLOP/s**, "
              f"3x3 convolution 32->32 channels on 256^2 **{hw['conv3x3_32ch_256_gflops']:.1f} GFLOP/s** (medians).", "",
              "| grid | forward pass (s) | ns / cell | GFLOP | GFLOP/s | % of matmul | % of conv |",
              "|---:|---:|---:|---:|---:|---:|---:|"]
    for r in report["inference"]:
        lines.append(f"| {r['size']}^2 | {r['median_s']:.3f} | {r['ns_per_cell']:.0f} | {r['gflop']:.2f} | "
                     f"{r['gflops_per_s']:.1f} | {100 * r['gflops_per_s'] / hw['matmul_2048_gflops']:.0f} | "
                     f"{100 * r['gflops_per_s'] / hw['conv3x3_32ch_256_gflops']:.0f} |")
    lines += ["", "FLOPs counted by TensorFlow's profiler on the frozen forward graph (2 per multiply-add; "
              "convolutions dominate). The forward pass is the compiled model call on a prepared input "
              "(no XLA, Keras' default on CPU).", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", help="a .keras model (default: the shipped default model)")
    parser.add_argument("--sizes", nargs="+", type=int, default=[128, 512])
    parser.add_argument("--glaciers", nargs="+", type=int, default=[3, 1],
                        help="held-out glaciers per size (one number for all, or one per size)")
    parser.add_argument("--seed", type=int, default=3, help="synthetic seed (training used 20, validation 2, test 1)")
    parser.add_argument("--inference-sizes", nargs="*", type=int, default=[128, 256, 512, 1024])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--output", default=str(RESULTS))
    args = parser.parse_args(argv)

    import keras
    import tensorflow as tf

    from glacier_emulator.emulator import Emulator

    def log(line):
        print(line, flush=True)

    emulator = Emulator.load(args.model) if args.model else Emulator.pretrained()
    counts = args.glaciers if len(args.glaciers) == len(args.sizes) else [args.glaciers[0]] * len(args.sizes)
    report = dict(
        date=datetime.now(timezone.utc).isoformat(timespec="seconds"), machine=machine_info(),
        tensorflow=tf.__version__, keras=keras.__version__,
        gpus=[d.name for d in tf.config.list_physical_devices("GPU")],
        model=args.model or f"shipped default ({emulator.metadata.name})",
        parameters=int(emulator.model.count_params()), seed=args.seed, repeats=args.repeats,
        command="python scripts/bench_emulator.py " + " ".join(argv if argv is not None else sys.argv[1:]),
    )
    log("hardware throughput ...")
    report["hardware"] = hardware_throughput(args.repeats)
    log(f"  {report['hardware']}")
    log("inference cost ...")
    report["inference"] = inference_cost(emulator, args.inference_sizes, args.repeats, log)
    report["versus_solver"] = []
    for size, count in zip(args.sizes, counts):
        log(f"emulator vs solver at {size}^2 ({count} glaciers) ...")
        report["versus_solver"].append(versus_solver(emulator, size, count, args.seed, args.repeats, log))
    report["machine"]["load_average_end"] = load_average()
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    (out / "emulator.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "emulator.md").write_text(markdown(report))
    log(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
