"""GPU recipe: label thousands of synthetic glaciers with the batched JAX solver, then train
U-Nets on them, all in one run on one GPU (the device image has JAX, not TensorFlow).

Phases (each with a wall-clock budget, so that the run fits a lease):

1. **label**: draw synthetic glaciers (``glacier_emulator.learning.synthetic``, the seeds and
   configs below) and solve them in batches with :mod:`bp_jax` (the reference solver's energy,
   unknowns, two-level start and stopping rule, float64). A check batch re-solves glaciers of the
   CPU validation sets (seeds 2 and 6) whose reference-solver labels travel with the recipe
   (``--check-labels``) and reports the difference.
2. **train**: every model of ``--models`` is trained in the same compiled step on the same
   batches (full ``--grid`` x ``--grid`` glaciers, the 8 mirror/rotation images, the relative
   loss of the package on all levels), Adam with warm-up and cosine decay over the steps that
   fit the budget; validation (median relative L2 of ubar) on GPU-labelled glaciers of two
   further seeds every ``--validate-every`` steps; the best parameters are written to
   ``OUT/NAME.npz``. ``--extra-train`` / ``--extra-val`` add samples labelled on the CPU and
   packed by ``pack_samples.py`` (states of forward runs, which this job does not make), the
   latter reported apart (``extra_median``). ``--extra-train-geometries`` /
   ``--extra-val-geometries`` take such states unlabelled (``pack_samples.py --geometries``)
   and label them here, first, with the same batched solver (on a CPU the forward runs that
   make them cost seconds a glacier, their solves most of the time).

   **Wide glaciers** (the CPU recipe's ``wide_crop_size`` / ``wide_every``, which gained 5-21 %
   for version 2.2 of the shipped model: the network sees glaciers that span more cells whole):
   ``--train-wide-standard`` / ``--train-wide-default`` label glaciers of ``--wide-grid`` nodes
   (seeds 34 and 35, their own budget ``--label-wide-seconds``), ``--val-wide-standard`` /
   ``--val-wide-default`` validate on seeds 36 and 37 (reported apart as ``wide_median``), and
   packed files of that grid go to the wide pool. Every ``--wide-every``-th step (steps
   ``wide_every - 1``, ``2 wide_every - 1``, ... as ``StreamConfig.is_wide_step``) draws its batch
   from the wide pool.

Everything measured goes to ``OUT/report.json`` and the log to stdout. Exact command of the
shipped run: ``training/gpu/README.md``.
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))

import tfstub  # noqa: E402

tfstub.install()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

import bp_jax  # noqa: E402
import unet_jax  # noqa: E402
from glacier_emulator.constants import DEFAULT_PHYSICS, DEFAULT_VERTICAL  # noqa: E402
from glacier_emulator.learning.synthetic import SyntheticConfig, sample_geometry  # noqa: E402
from glacier_emulator.physics.sia import local_flow_constants  # noqa: E402

T0 = time.time()
# training/default_physics.yaml: glaciers as a run without slidingco/arrhenius fields sees them
DEFAULT_PHYSICS_SYNTHETIC = SyntheticConfig(uniform_sliding=0.0464, rate_factor_range=(78.0, 78.0),
                                            driving_stress_range=(0.04, 0.25))
CONFIGS = {"standard": SyntheticConfig(), "default_physics": DEFAULT_PHYSICS_SYNTHETIC}


def log(*args):
    print(f"[{time.time() - T0:7.1f} s]", *args, flush=True)


def inputs_of(geo, physics=DEFAULT_PHYSICS) -> np.ndarray:
    """The 6 model input channels of a geometry, as ``read_sample``/``prepare_inputs`` build them."""
    sx, sy = geo.slopes()
    shape = geo.shape
    sliding = physics.sliding_coefficient if geo.sliding_coefficient is None else geo.sliding_coefficient
    rate = physics.rate_factor if geo.rate_factor is None else geo.rate_factor
    return np.stack([geo.thickness, sx, sy, np.broadcast_to(sliding, shape),
                     np.broadcast_to(rate, shape), np.full(shape, geo.dx)], axis=-1).astype(np.float32)


def label(specs, *, batch: int, iterations, solvers: dict, deadline: float, what: str, grid: int = 64,
          geometry_of=None):
    """Solve the glaciers ``specs`` [(config name, seed, index)] of ``grid`` x ``grid`` nodes in
    batches until ``deadline``. ``geometry_of(spec)``: the glacier of a spec, for glaciers that
    are not the generator's (default: ``sample_geometry`` of the spec's config, seed and index).

    Returns ``(inputs (N, ny, nx, 6), targets (N, ny, nx, 2 Nz), kept specs, stats)``; glaciers
    whose solve did not converge are dropped and counted.
    """
    if geometry_of is None:
        def geometry_of(spec):
            c, s, i = spec
            return sample_geometry(i, seed=s, config=dataclasses.replace(CONFIGS[c], grid=grid))

    xs, ys, kept = [], [], []
    stats = {"solved": 0, "not_converged": 0, "batches": 0, "seconds": 0.0, "iterations": []}
    for start in range(0, len(specs), batch):
        if time.time() > deadline and stats["batches"] > 0:
            log(f"{what}: label budget spent after {stats['solved']} glaciers")
            break
        chunk = specs[start:start + batch]
        geos = [geometry_of(spec) for spec in chunk]
        real = len(geos)
        geos += [geos[-1]] * (batch - real)  # one compiled shape
        t = time.time()
        u, v, rep = bp_jax.solve_geometries(geos, DEFAULT_PHYSICS, DEFAULT_VERTICAL,
                                            iterations=iterations, solvers=solvers)
        dt = time.time() - t
        stats["batches"] += 1
        stats["seconds"] += dt
        for j in range(real):
            stats["solved"] += 1
            stats["iterations"].append(int(rep["iterations"][j]))
            if not rep["converged"][j]:
                stats["not_converged"] += 1
                continue
            xs.append(inputs_of(geos[j]))
            ys.append(np.concatenate([u[j], v[j]], axis=0).transpose(1, 2, 0).astype(np.float32))
            kept.append(chunk[j])
        log(f"{what}: batch of {real} in {dt:.1f} s (fine iterations max {int(rep['iterations'].max())}, "
            f"median {int(np.median(rep['iterations']))}; coarse max "
            f"{int(rep.get('coarse_iterations', np.zeros(1)).max())}); not converged so far "
            f"{stats['not_converged']}")
    its = stats.pop("iterations")
    stats["iterations_median"] = float(np.median(its)) if its else None
    stats["iterations_max"] = int(max(its)) if its else None
    return (np.stack(xs) if xs else None), (np.stack(ys) if ys else None), kept, stats


# --- augmentation: the 8 mirror/rotation images (glacier_emulator.learning.data.transform) ---
def dihedral(x, y, t: int, nz: int):
    """Image ``t`` (0-7) of inputs ``x`` (B, n, n, 6) and levels ``y`` (B, n, n, 2 Nz):
    ``t & 1`` mirror x, ``t & 2`` mirror y, ``t >> 2`` one 90-degree counter-clockwise turn."""
    sx_sign = np.ones(6, np.float32)
    sx_sign[1] = -1
    sy_sign = np.ones(6, np.float32)
    sy_sign[2] = -1
    u_sign = np.concatenate([-np.ones(nz), np.ones(nz)]).astype(np.float32)
    v_sign = np.concatenate([np.ones(nz), -np.ones(nz)]).astype(np.float32)
    if t & 1:
        x, y = x[:, :, ::-1] * sx_sign, y[:, :, ::-1] * u_sign
    if t & 2:
        x, y = x[:, ::-1] * sy_sign, y[:, ::-1] * v_sign
    if t >> 2:
        # A'[j, i] = A[n - 1 - i, j]; (a_x, a_y) -> (-a_y, a_x); dx and dy swap (equal here)
        x = jnp.swapaxes(x[:, ::-1], 1, 2)
        y = jnp.swapaxes(y[:, ::-1], 1, 2)
        x = jnp.stack([x[..., 0], -x[..., 2], x[..., 1], x[..., 3], x[..., 4], x[..., 5]], axis=-1)
        y = jnp.concatenate([-y[..., nz:], y[..., :nz]], axis=-1)
    return x, y


def speed_scale(x, y, mu, sliding_exponent: float):
    """The glaciers that flow ``mu`` (B,) times as fast (``learning.data.scale_speed``): rate
    factor x mu, sliding coefficient x mu^-m, velocity levels x mu."""
    mu = mu.reshape((-1, 1, 1, 1)).astype(x.dtype)
    factors = jnp.concatenate([jnp.ones_like(mu), jnp.ones_like(mu), jnp.ones_like(mu),
                               mu ** (-sliding_exponent), mu, jnp.ones_like(mu)], axis=-1)
    return x * factors, y * mu


def relative_loss(pred, target, thickness, floor: float = 1.0):
    """The package's ``"relative"`` supervised loss per glacier, on every level."""
    ice = (thickness > 0).astype(pred.dtype)[..., None]
    err = jnp.sum(jnp.square(pred - target) * ice, axis=(1, 2, 3))
    ref = jnp.sum(jnp.square(target) * ice, axis=(1, 2, 3))
    n_ice = jnp.sum(ice, axis=(1, 2, 3))
    return err / (ref + n_ice * pred.shape[-1] * floor**2)


def ubar_errors(pred, target, thickness, weights):
    """Relative L2 of (ubar, vbar) on ice per glacier (as scripts/evaluate_model.py)."""
    nz = weights.shape[0]
    w = jnp.asarray(weights, jnp.float32)

    def avg(a):
        return jnp.stack([a[..., :nz] @ w, a[..., nz:] @ w], axis=-1)

    p, t = avg(pred), avg(target)
    ice = (thickness > 0).astype(p.dtype)[..., None]
    num = jnp.sqrt(jnp.sum(jnp.square(p - t) * ice, axis=(1, 2, 3)))
    den = jnp.sqrt(jnp.sum(jnp.square(t) * ice, axis=(1, 2, 3)))
    return num / jnp.maximum(den, 1e-12)


def parse_models(text: str) -> dict:
    """``NAME:filters=16,init=1,lr=3e-4;NAME2:filters=24,lr=1e-3,prior=2`` -> model specs.

    ``prior=S`` (a model trained from scratch) adds the local shallow-ice prior with smoothing S
    cells (``GlacierUNet(prior=...)``, output in units of its scale); ``init=1`` models keep the
    architecture of the ``--init`` weights, prior included; ``init=FILE.npz`` those of another
    export (e.g. the shipped model widened by ``training/widen.py``, then exported).
    """
    models = {}
    for part in filter(None, text.split(";")):
        name, _, opts = part.partition(":")
        spec = dict(filters=16, init="", lr=1e-3, prior=-1.0)
        for kv in filter(None, opts.split(",")):
            k, _, v = kv.partition("=")
            if k == "init":
                spec[k] = "" if v in ("", "0") else v
            else:
                spec[k] = type(spec.get(k, 0.0))(float(v)) if k in spec else v
        models[name] = spec
    return models


def pool_grid(pools: dict, path, grid) -> tuple:
    """``grid`` if the job has a pool for it; otherwise the job stops, naming the file."""
    grid = tuple(int(n) for n in grid)
    if grid not in pools:
        raise SystemExit(f"{path}: samples of {grid[0]} x {grid[1]} nodes; the job's grids are "
                         + ", ".join(f"{g[0]} x {g[1]}" for g in pools) + " (--grid, --wide-grid)")
    return grid


def append_to_pool(pools: dict, grid, x, y) -> None:
    """Append samples ``x``, ``y`` to the pool of ``grid`` (an empty pool takes them as they are)."""
    old_x, old_y = pools[grid]
    pools[grid] = (x, y) if old_x is None else (np.concatenate([old_x, x]), np.concatenate([old_y, y]))


def add_packed(pools: dict, paths, nz: int) -> dict:
    """Append the samples of the packed files ``paths`` (pack_samples.py) to the pool of their
    grid: ``pools`` maps ``(ny, nx)`` to ``(x, y)`` (``None, None`` for a pool still empty) and is
    updated; returns what was added. A grid that is not one of the pools' stops the job."""
    from pack_samples import load_packed

    files, per_grid = [], {}
    for path in paths:
        px, py, names = load_packed(path)
        grid = pool_grid(pools, path, px.shape[1:3])
        if px.shape[-1] != 6 or py.shape[-1] != 2 * nz:
            raise SystemExit(f"{path}: {px.shape[-1]} input and {py.shape[-1]} label channels, the "
                             f"job's 6 and {2 * nz}")
        append_to_pool(pools, grid, px, py)
        files += names
        per_grid[f"{grid[0]}x{grid[1]}"] = per_grid.get(f"{grid[0]}x{grid[1]}", 0) + len(names)
    return {"samples": len(files), "per_grid": per_grid, "packed": list(paths)}


def add_as_extra(val_pools: dict, val_kinds: dict, add) -> dict:
    """``add(val_pools)`` appends validation samples (:func:`add_packed`,
    :func:`add_packed_geometries`); what it appended gets kind 2 ("extra", reported apart as
    ``extra_median``) in ``val_kinds``. Returns what ``add`` returns."""
    before = {g: 0 if v[0] is None else v[0].shape[0] for g, v in val_pools.items()}
    facts = add(val_pools)
    for g, (x_, _) in val_pools.items():
        if x_ is not None:
            val_kinds[g] = np.concatenate([val_kinds[g], np.full(x_.shape[0] - before[g], 2)])
    return facts


def add_packed_geometries(pools: dict, paths, solve, what: str) -> dict:
    """Label the glaciers of the files ``paths`` (``pack_samples.py --geometries``: states of
    forward runs made on the CPU without labels) with ``solve(specs, grid, deadline, what,
    geometry_of)`` (:func:`label` with the job's batches), all of them, and append those whose
    solve converged to the pool of their grid; returns what was added (the same keys as
    :func:`add_packed`, with the labelling's counts and seconds)."""
    from pack_samples import load_geometries

    facts = {"samples": 0, "not_converged": 0, "seconds": 0.0, "batches": 0, "per_grid": {},
             "kinds": {}, "packed": list(paths)}
    for number, path in enumerate(paths):
        geometries, _ = load_geometries(path)
        if not geometries:
            continue
        grid = pool_grid(pools, path, geometries[0].shape)
        specs = [("packed", number, i) for i in range(len(geometries))]
        x, y, kept, stats = solve(specs, grid[0], float("inf"), f"{what} {os.path.basename(str(path))}",
                                  lambda spec: geometries[spec[2]])
        for key in ("not_converged", "seconds", "batches"):
            facts[key] += stats[key]
        if x is None:
            continue
        append_to_pool(pools, grid, x, y)
        facts["samples"] += len(kept)
        name = f"{grid[0]}x{grid[1]}"
        facts["per_grid"][name] = facts["per_grid"].get(name, 0) + len(kept)
        for spec in kept:
            kind = geometries[spec[2]].attrs.get("kind") or "unknown"
            facts["kinds"][kind] = facts["kinds"].get(kind, 0) + 1
    return facts


def start_models(models: dict, init: str, seed: int, nz: int) -> tuple:
    """``(configs, params)`` of the models of :func:`parse_models` at the start of training.

    A model with ``init`` starts from that export's weights and architecture (``"1"``: the
    ``init`` file of the job); the others from random weights with ``filters`` and, with
    ``prior``, the local shallow-ice prior, on the architecture of ``init`` where that file
    exists (else the shipped models' defaults).
    """
    base, starts = None, {}
    if os.path.exists(init):
        base = unet_jax.load_params(init)[1]
    for name, spec in models.items():
        source = init if spec["init"] == "1" else spec["init"]
        if source and source not in starts:
            if not os.path.exists(source):
                raise SystemExit(f"{name}: no init weights {source}")
            starts[source] = unet_jax.load_params(source)
        spec["init"] = source
    if base is None:
        base = dict(in_channels=6, out_channels=2 * nz, depth=4, kernel_size=3, activation="gelu",
                    blocks_per_level=2, symmetrise="x", input_scale=[300.0, 0.2, 0.2, 0.1, 100.0, 100.0],
                    input_offset=[0.0] * 6, velocity_scale=50.0, padding_mode="symmetric")
    configs, params = {}, {}
    key = jax.random.PRNGKey(seed)
    for name, spec in models.items():
        if spec["init"]:
            start_params, start_config = starts[spec["init"]]
            if int(spec["filters"]) != int(start_config["filters"]):
                raise SystemExit(f"{name}: {spec['init']} has {start_config['filters']} filters")
            configs[name], params[name] = dict(start_config), start_params
            continue
        cfg = dict(base, filters=int(spec["filters"]))
        if spec["prior"] >= 0:
            cfg.update(velocity_scale=1.0, prior=dict(
                local_flow_constants(DEFAULT_PHYSICS), smoothing=float(spec["prior"])))
        configs[name] = cfg
        key, sub = jax.random.split(key)
        params[name] = unet_jax.init_params(cfg, sub)
    return configs, params


def is_wide_step(step: int, wide_every: int) -> bool:
    """Whether training step ``step`` (from 0) draws its batch from the wide pool: steps
    ``wide_every - 1``, ``2 wide_every - 1``, ... (``learning.data.StreamConfig.is_wide_step``)."""
    return (int(step) + 1) % int(wide_every) == 0


def split_specs(n_standard: int, n_default: int, seeds: tuple) -> list:
    """Training specs: two standard glaciers to one default-physics glacier, interleaved so that
    any prefix of the list (the label budget decides how much is solved) has both kinds in
    proportion."""
    specs = []
    for i in range(max(n_standard, 2 * n_default)):
        if i < n_standard:
            specs.append(("standard", seeds[0], i))
        if i % 2 == 0 and i // 2 < n_default:
            specs.append(("default_physics", seeds[1], i // 2))
    return specs


def kind_codes(specs) -> np.ndarray:
    """Validation kinds of glaciers ``specs``: 0 standard, 1 default physics (2: packed)."""
    return np.array([0 if s[0] == "standard" else 1 for s in specs], int)


def count_kinds(specs) -> dict:
    """How many of the glaciers ``specs`` are of each config."""
    return {name: sum(s[0] == name for s in specs) for name in CONFIGS}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=os.environ.get("OUT", "gpu-run"))
    p.add_argument("--grid", type=int, default=64, help="nodes per side of the glaciers labelled")
    p.add_argument("--train-standard", type=int, default=3000, help="glaciers of seed 30 (standard config)")
    p.add_argument("--train-default", type=int, default=1500, help="glaciers of seed 31 (default physics)")
    p.add_argument("--val-standard", type=int, default=96, help="validation glaciers of seed 32")
    p.add_argument("--val-default", type=int, default=32, help="validation glaciers of seed 33")
    p.add_argument("--wide-grid", type=int, default=96, help="nodes per side of the wide glaciers")
    p.add_argument("--train-wide-standard", type=int, default=0,
                   help="wide glaciers of seed 34 (standard config)")
    p.add_argument("--train-wide-default", type=int, default=0,
                   help="wide glaciers of seed 35 (default physics)")
    p.add_argument("--val-wide-standard", type=int, default=0, help="wide validation glaciers of seed 36")
    p.add_argument("--val-wide-default", type=int, default=0, help="wide validation glaciers of seed 37")
    p.add_argument("--label-wide-seconds", type=float, default=0.0,
                   help="label budget of the wide training glaciers (after --label-seconds)")
    p.add_argument("--wide-every", type=int, default=4,
                   help="every WIDE_EVERY-th step trains on the wide pool, when it holds glaciers")
    p.add_argument("--wide-batch", type=int, default=0, help="batch of the wide steps (0: --train-batch)")
    p.add_argument("--wide-label-batch", type=int, default=0,
                   help="wide glaciers solved at once (0: --batch); a batch is padded to this size")
    p.add_argument("--check-labels", default=os.path.join(HERE, "check_labels.npz"),
                   help="reference-solver labels of seed-2/6 glaciers to compare with")
    p.add_argument("--batch", type=int, default=384, help="glaciers solved at once")
    p.add_argument("--iterations", default="2000,2500", help="L-BFGS limits, coarse and fine grid")
    p.add_argument("--label-seconds", type=float, default=200.0)
    p.add_argument("--train-seconds", type=float, default=250.0)
    p.add_argument("--train-steps", type=int, default=0,
                   help="train exactly this many steps, whatever the time (0: as many as fit --train-seconds)")
    p.add_argument("--models", default="a16:filters=16,init=1,lr=3e-4;b24:filters=24,lr=1e-3")
    p.add_argument("--init", default=os.path.join(HERE, "init.npz"),
                   help="weights (export_weights.py) that models with init=1 start from")
    p.add_argument("--train-batch", type=int, default=32)
    p.add_argument("--speed-scaling", default="",
                   help="LOW,HIGH: scale each training glacier's speed by a log-uniform factor in "
                        "this range (TrainConfig.speed_scaling; the shipped CPU recipe: 0.5,2)")
    p.add_argument("--extra-train", nargs="*", default=[],
                   help="packed CPU-labelled samples (pack_samples.py) added to the training "
                        "glaciers of their grid (--grid or --wide-grid)")
    p.add_argument("--extra-val", nargs="*", default=[],
                   help="packed samples added to the validation glaciers (reported apart as 'extra')")
    p.add_argument("--extra-train-geometries", nargs="*", default=[],
                   help="packed unlabelled glaciers (pack_samples.py --geometries, e.g. states of "
                        "forward runs), labelled here first and added to the training glaciers "
                        "of their grid (they spend --label-seconds before the generator's)")
    p.add_argument("--extra-val-geometries", nargs="*", default=[],
                   help="packed unlabelled glaciers labelled here and added to the validation "
                        "glaciers (reported apart as 'extra', as --extra-val)")
    p.add_argument("--validate-every", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.wide_every < 2:
        p.error(f"--wide-every must be >= 2: {args.wide_every}")
    if args.wide_grid == args.grid:
        p.error("--wide-grid must differ from --grid")
    os.makedirs(args.out, exist_ok=True)
    report = {"args": vars(args), "devices": [f"{d} ({d.device_kind})" for d in jax.devices()]}
    log("devices", report["devices"])
    nz = DEFAULT_VERTICAL.levels
    iterations = tuple(int(i) for i in args.iterations.split(","))
    solvers: dict = {}
    narrow, wide = (args.grid, args.grid), (args.wide_grid, args.wide_grid)

    def save_report():
        with open(os.path.join(args.out, "report.json"), "w") as fh:
            json.dump(report, fh, indent=1, default=float)

    def solve(specs, grid, deadline, what, geometry_of=None):
        batch = args.wide_label_batch or args.batch if grid == args.wide_grid else args.batch
        return label(specs, batch=batch, iterations=iterations, solvers=solvers,
                     deadline=deadline, what=what, grid=grid, geometry_of=geometry_of)

    # --- 1. labels ---
    if args.check_labels and os.path.exists(args.check_labels):
        ref = np.load(args.check_labels)
        check_specs = [tuple(s) for s in json.loads(str(ref["specs"]))]
        check_specs = [(c, int(s), int(i)) for c, s, i in check_specs]
        check_grid = int(ref["thickness"].shape[-1])
    else:
        ref, check_specs, check_grid = None, [], args.grid
    val_specs = ([("standard", 32, i) for i in range(args.val_standard)]
                 + [("default_physics", 33, i) for i in range(args.val_default)])
    if check_grid == args.grid:  # one call, one compiled shape
        xv, yv, kept, stats = solve(check_specs + val_specs, args.grid, float("inf"), "check+validation")
        xc, yc, kept_c = xv, yv, kept
    else:
        xc, yc, kept_c, _ = solve(check_specs, check_grid, float("inf"), "check")
        xv, yv, kept, stats = solve(val_specs, args.grid, float("inf"), "validation")
    report["label_check_and_validation"] = stats
    if ref is not None:
        errs = []
        for spec, x_, y_ in zip(kept_c, xc, yc):
            if spec in check_specs:
                j = check_specs.index(spec)
                r = ref["labels"][j]
                thick_ok = float(np.max(np.abs(x_[..., 0] - ref["thickness"][j])))
                errs.append(dict(spec=spec, rel_l2=float(np.linalg.norm(y_ - r) / np.linalg.norm(r)),
                                 thickness_max_diff_m=thick_ok))
        report["label_check"] = errs
        rels = [e["rel_l2"] for e in errs]
        log(f"label check against the reference solver ({len(rels)} glaciers): rel. L2 median "
            f"{np.median(rels):.2e}, max {np.max(rels):.2e}")
    in_val = np.array([s in val_specs for s in kept], bool)
    val_pools = {narrow: (xv[in_val], yv[in_val]) if in_val.any() else (None, None)}  # no check glaciers
    val_kinds = {narrow: kind_codes([s for s, f in zip(kept, in_val) if f])}
    wide_val_specs = ([("standard", 36, i) for i in range(args.val_wide_standard)]
                      + [("default_physics", 37, i) for i in range(args.val_wide_default)])
    val_pools[wide], val_kinds[wide] = (None, None), np.zeros(0, int)
    if wide_val_specs:
        xw, yw, kept_w, report["label_wide_validation"] = solve(wide_val_specs, args.wide_grid,
                                                                float("inf"), "wide validation")
        if xw is not None:
            val_pools[wide] = (xw, yw)
            val_kinds[wide] = kind_codes(kept_w)
    report["extra_val_geometries"] = add_as_extra(val_pools, val_kinds, lambda pools: add_packed_geometries(
        pools, args.extra_val_geometries, solve, "packed validation geometries"))
    save_report()
    train_pools = {narrow: (None, None), wide: (None, None)}  # batches draw from a pool at random
    report["extra_train_geometries"] = add_packed_geometries(train_pools, args.extra_train_geometries,
                                                             solve, "packed training geometries")
    save_report()
    xt, yt, kept_t, report["label_train"] = solve(
        split_specs(args.train_standard, args.train_default, (30, 31)), args.grid,
        T0 + args.label_seconds, "train")
    if xt is not None:
        append_to_pool(train_pools, narrow, xt, yt)
    report["train_glaciers"] = count_kinds(kept_t)
    wide_specs = split_specs(args.train_wide_standard, args.train_wide_default, (34, 35))
    if wide_specs:
        xw, yw, kept_w, report["label_train_wide"] = solve(
            wide_specs, args.wide_grid, time.time() + args.label_wide_seconds, "wide train")
        if xw is not None:
            append_to_pool(train_pools, wide, xw, yw)
        report["train_glaciers_wide"] = count_kinds(kept_w)
    report["extra_train"] = add_packed(train_pools, args.extra_train, nz)
    report["extra_val"] = add_as_extra(val_pools, val_kinds,
                                       lambda pools: add_packed(pools, args.extra_val, nz))
    if train_pools[narrow][0] is None:
        raise SystemExit(f"no training glaciers of {args.grid} x {args.grid} nodes: raise --label-seconds")
    if all(v[0] is None for v in val_pools.values()):
        raise SystemExit("no validation glaciers: --val-standard, --val-default, --val-wide-* or --extra-val")
    log("training glaciers", report["train_glaciers"], report.get("train_glaciers_wide", {}),
        "packed", report["extra_train"]["per_grid"], "labelled from packed geometries",
        report["extra_train_geometries"]["per_grid"], "; validation packed", report["extra_val"]["per_grid"],
        "labelled from packed geometries", report["extra_val_geometries"]["per_grid"])
    save_report()
    del solvers
    train(args, train_pools[narrow], train_pools[wide],
          [(val_pools[g][0], val_pools[g][1], val_kinds[g], g == wide) for g in (narrow, wide)
           if val_pools[g][0] is not None], report, save_report)


def train(args, narrow_pool, wide_pool, val_sets, report, save_report):
    """Phase 2: train every model of ``args.models`` on ``narrow_pool`` ``(x, y)`` and, every
    ``args.wide_every``-th step, on ``wide_pool`` (``(None, None)``: none); ``val_sets`` are
    ``(x, y, kinds, wide)`` (kinds 0 standard, 1 default physics, 2 packed). Writes the best
    parameters of each model to ``args.out`` and the history to ``report``."""
    nz = DEFAULT_VERTICAL.levels
    models = parse_models(args.models)
    configs, params = start_models(models, args.init, args.seed, nz)
    xt_d, yt_d = jnp.asarray(narrow_pool[0]), jnp.asarray(narrow_pool[1])
    has_wide = wide_pool[0] is not None and len(wide_pool[0]) > 0
    xw_d, yw_d = (jnp.asarray(wide_pool[0]), jnp.asarray(wide_pool[1])) if has_wide else (None, None)
    wide_batch = args.wide_batch or args.train_batch
    val_d = [(jnp.asarray(x), jnp.asarray(y)) for x, y, _, _ in val_sets]
    val_kind = np.concatenate([kinds for _, _, kinds, _ in val_sets])
    val_wide = np.concatenate([np.full(len(kinds), w) for _, _, kinds, w in val_sets])
    report["train_samples"] = {"narrow": int(xt_d.shape[0]), "wide": int(xw_d.shape[0]) if has_wide else 0}
    weights = np.asarray(DEFAULT_VERTICAL.depth_average_weights, np.float32)
    speed_range = tuple(float(v) for v in args.speed_scaling.split(",")) if args.speed_scaling else None
    if speed_range is not None and not (len(speed_range) == 2 and 0 < speed_range[0] <= speed_range[1]):
        raise SystemExit(f"--speed-scaling must be LOW,HIGH with 0 < LOW <= HIGH: {args.speed_scaling!r}")
    opt = {name: optax.inject_hyperparams(optax.adam)(learning_rate=0.0) for name in models}
    opt_state = {name: opt[name].init(params[name]) for name in models}

    def losses(all_params, x, y):
        return {name: jnp.mean(relative_loss(unet_jax.apply(all_params[name], configs[name], x), y, x[..., 0]))
                for name in models}

    @functools.partial(jax.jit, static_argnames=("batch",))
    def step(all_params, states, lrs, key, x_pool, y_pool, batch):
        # one compiled step per pool (its shape): the narrow and the wide glaciers
        k1, k2 = jax.random.split(key)  # as before speed scaling existed: same batches
        idx = jax.random.randint(k1, (batch,), 0, x_pool.shape[0])
        t = jax.random.randint(k2, (), 0, 8)
        x, y = x_pool[idx], y_pool[idx]
        x, y = jax.lax.switch(t, [lambda a, b, tt=tt: dihedral(a, b, tt, nz) for tt in range(8)], x, y)
        if speed_range is not None:
            log_mu = jax.random.uniform(jax.random.fold_in(key, 3), (batch,), minval=np.log(speed_range[0]),
                                        maxval=np.log(speed_range[1]))
            x, y = speed_scale(x, y, jnp.exp(log_mu), DEFAULT_PHYSICS.sliding_exponent)
        def total(ps):
            each = losses(ps, x, y)
            return sum(each.values()), each

        (_, each), grads = jax.value_and_grad(total, has_aux=True)(all_params)
        new_p, new_s = {}, {}
        for name in models:
            states[name].hyperparams["learning_rate"] = lrs[name]
            upd, new_s[name] = opt[name].update(grads[name], states[name], all_params[name])
            new_p[name] = optax.apply_updates(all_params[name], upd)
        return new_p, new_s, each

    @jax.jit
    def validate_one(all_params, xv_d, yv_d):
        out = {}
        for name in models:
            errs = []
            for s in range(0, xv_d.shape[0], 32):
                pred = unet_jax.apply(all_params[name], configs[name], xv_d[s:s + 32])
                errs.append(ubar_errors(pred, yv_d[s:s + 32], xv_d[s:s + 32, ..., 0], weights))
            out[name] = jnp.concatenate(errs)
        return out

    def validate(all_params):
        """Per model, the errors of every validation glacier, in the order of ``val_sets``."""
        parts = [validate_one(all_params, x, y) for x, y in val_d]
        return {name: np.concatenate([np.asarray(p[name]) for p in parts]) for name in models}

    def val_summary(errs):
        errs = np.asarray(errs)

        def stat(sel, q):
            return float(np.percentile(errs[sel], q)) if np.any(sel) else float("nan")

        narrow_sel = ~val_wide
        return {"standard_median": stat(narrow_sel & (val_kind == 0), 50),
                "standard_p90": stat(narrow_sel & (val_kind == 0), 90),
                "default_median": stat(narrow_sel & (val_kind == 1), 50),
                "extra_median": stat(narrow_sel & (val_kind == 2), 50),
                "wide_median": stat(val_wide, 50),
                "all_median": stat(val_kind >= 0, 50)}

    def schedule(name, k, total):
        peak = float(models[name]["lr"])
        warm = 200
        if k < warm:
            return peak * (k + 1) / warm
        frac = min(1.0, (k - warm) / max(1, total - warm))
        return peak * (0.02 + 0.98 * 0.5 * (1 + np.cos(np.pi * frac)))

    def validate_and_keep(all_params, k):
        """Validate every model; write the parameters of those that improved."""
        v = validate(all_params)
        for name in models:
            s = val_summary(v[name])
            history[name].append((k, s))
            if s["all_median"] < best[name][0]:
                best[name] = (s["all_median"], k)
                unet_jax.save_params(os.path.join(args.out, f"{name}.npz"), all_params[name], configs[name])

    v0 = validate(params)
    history = {name: [] for name in models}
    best = {}
    for name in models:
        s = val_summary(v0[name])
        history[name].append((0, s))
        best[name] = (s["all_median"], 0)
        log(f"{name}: step 0 validation {s}")
        unet_jax.save_params(os.path.join(args.out, f"{name}.npz"), params[name], configs[name])
    report["history"] = history
    # time a few steps to fit the schedule into the budget
    fixed = args.train_steps
    train_deadline = float("inf") if fixed else time.time() + args.train_seconds
    key = jax.random.PRNGKey(args.seed + 1)
    k = 0
    total = fixed or None
    t_start = t_begin = time.time()
    train_losses = {name: [] for name in models}
    wide_losses = {name: [] for name in models}
    wide_steps = 0
    while time.time() < train_deadline:
        if total is None and k == 50:
            jax.block_until_ready(params)
            t_start = time.time()
        if total is None and k == 150:
            jax.block_until_ready(params)
            per_step = (time.time() - t_start) / 100
            remaining = train_deadline - time.time()
            total = int(k + remaining / per_step * 0.9)  # 10 % for the validations
            report["seconds_per_step"] = per_step
            log(f"{per_step * 1e3:.1f} ms per step: schedule over {total} steps")
        if total is not None and k >= total:
            break
        lrs = {name: jnp.asarray(schedule(name, k, total or 20000), jnp.float32) for name in models}
        key, sub = jax.random.split(key)
        if has_wide and is_wide_step(k, args.wide_every):
            params, opt_state, wide_loss = step(params, opt_state, lrs, sub, xw_d, yw_d, batch=wide_batch)
            wide_steps += 1
        else:
            params, opt_state, loss = step(params, opt_state, lrs, sub, xt_d, yt_d, batch=args.train_batch)
        k += 1
        if k % 100 == 0:  # the last narrow (and wide) step's losses
            for name in models:
                train_losses[name].append((k, float(loss[name])))
                if wide_steps:
                    wide_losses[name].append((k, float(wide_loss[name])))
        if k % args.validate_every == 0:
            validate_and_keep(params, k)
            log(f"step {k}: " + " ".join(
                f"{n}: loss {float(loss[n]):.4f} val {history[n][-1][1]['standard_median']:.4f}/"
                f"{history[n][-1][1]['default_median']:.4f}/{history[n][-1][1]['wide_median']:.4f}"
                for n in models))
            save_report()
    if k % args.validate_every:
        validate_and_keep(params, k)
    report["steps"] = k
    report["wide_steps"] = wide_steps
    report["train_wall_seconds"] = time.time() - t_begin
    report["best"] = {n: {"val_all_median": b[0], "step": b[1]} for n, b in best.items()}
    report["train_loss"] = train_losses
    report["train_loss_wide"] = wide_losses
    log("done:", report["best"], f"({wide_steps} of {k} steps wide)")
    save_report()


if __name__ == "__main__":
    main()
