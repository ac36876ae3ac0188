"""Training: data loading and augmentation, the objectives, the training loop in every mode,
resuming, data-parallel training on two replicas, errors for bad data, and the command.

The data are four tiny ice caps (16 x 16 nodes, 100 m, 4 levels) solved by the reference solver at
its default tolerance (1e-9: at 1e-6 the L-BFGS solver can stop early, up to 79 % away from the
solution on synthetic caps, which makes useless labels). Validation uses mirrored copies of two of
the training caps: with so few glaciers this measures fitting through the augmentation, not
generalisation, which is the job of the recipes in ``training/``.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf
import xarray as xr

from glacier_emulator.constants import DEFAULT_PHYSICS, VerticalDiscretisation
from glacier_emulator.fields import Geometry, InputError
from glacier_emulator.io.netcdf import write_velocity
from glacier_emulator.learning.data import (
    Layout,
    StreamConfig,
    element,
    load_data,
    make_dataset_fn,
    scale_speed,
    transform,
    wide_element,
    wide_pool,
)
from glacier_emulator.learning.losses import label_levels, make_energy_fn, shape_function
from glacier_emulator.learning.train import TrainConfig, prior_arguments, train
from glacier_emulator.numerics.grid import node_gradient
from glacier_emulator.numerics.solver import SolverConfig, solve

MODEL = dict(in_channels=6, out_channels=8, filters=8, depth=2, symmetrise="none",
             input_scale=[500.0, 0.1, 0.1, 1.0, 100.0, 100.0], velocity_scale="auto")


def tiny_config(**changes) -> TrainConfig:
    """A few-second training run of an 8-filter, depth-2 U-Net with a 3-D output."""
    values = dict(mode="supervised", steps=40, batch_size=4, learning_rate=3e-3,
                  schedule="constant", validate_every=20, checkpoint_every=1000, seed=0,
                  model=dict(MODEL))
    values.update(changes)
    return TrainConfig(**values)


def mirror_file(src, dst, axis: str):
    """Write the glacier of ``src`` mirrored in ``axis`` (the velocity component flips sign)."""
    ds = xr.open_dataset(src).load()
    coord = ds[axis].values
    out = ds.isel({axis: slice(None, None, -1)}).assign_coords({axis: coord})
    component = "u" if axis == "x" else "v"
    names = (f"{component}bar", f"{component}vel", f"{component}velsurf", f"{component}velbase")
    for name in names:
        if name in out:
            out[name] = -out[name]
    out.to_netcdf(dst)
    return dst


def ice_cap(index: int) -> Geometry:
    """A small, smooth, deterministic ice cap (16 x 16 nodes, 100 m): a Vialov dome of random
    size, elongation and position on a tilted, bumpy bed, with a smooth sliding field.

    Built here rather than drawn from :mod:`glacier_emulator.learning.synthetic` so that these
    tests do not move when the synthetic generator is retuned.
    """
    rng = np.random.default_rng([11, index])
    n, dx = 16, 100.0
    x = np.arange(n) * dx
    X, Y = np.meshgrid(x, x)
    cx, cy = rng.uniform(0.42, 0.58, size=2) * n * dx
    angle = rng.uniform(0, np.pi)
    stretch = rng.uniform(0.7, 1.0)
    xr_ = (X - cx) * np.cos(angle) + (Y - cy) * np.sin(angle)
    yr_ = (-(X - cx) * np.sin(angle) + (Y - cy) * np.cos(angle)) / stretch
    radius = rng.uniform(5.0, 6.5) * dx
    r = np.hypot(xr_, yr_) / radius
    thickness = rng.uniform(150.0, 250.0) * np.clip(1 - r ** (4 / 3), 0, None) ** (3 / 8)
    thickness[thickness < 1.0] = 0.0
    thickness[[0, -1], :] = 0.0
    thickness[:, [0, -1]] = 0.0
    tilt = rng.uniform(-0.05, 0.05, size=2)
    bed = (1500.0 + tilt[0] * X + tilt[1] * Y
           + 20.0 * np.sin(2 * np.pi * X / (n * dx) + rng.uniform(0, 6))
           * np.cos(2 * np.pi * Y / (n * dx) + rng.uniform(0, 6)))
    sliding = 10 ** (rng.uniform(-0.5, 0.3) + 0.2 * np.sin(2 * np.pi * (X + Y) / (n * dx)))
    return Geometry(thickness=thickness, bed=bed, dx=dx, sliding_coefficient=sliding,
                    rate_factor=float(rng.uniform(60.0, 100.0)))


def solved_file(geometry: Geometry, path, *, vertical=VerticalDiscretisation(levels=4)):
    """Solve ``geometry`` at the solver's default tolerance and write it as ``make-dataset``
    does (the velocity file plus the convergence and physics attributes)."""
    result = solve(geometry, vertical=vertical)
    write_velocity(result.velocity, geometry, path, attrs={
        "solver_converged": int(result.converged), "physics": repr(DEFAULT_PHYSICS.to_dict()),
        "vertical_levels": vertical.levels, "vertical_spacing": vertical.spacing,
    })
    assert result.converged
    return path


@pytest.fixture(scope="session")
def dataset(tmp_path_factory):
    """Four solved ice caps in ``train/`` and two mirrored copies in ``validation/``."""
    root = tmp_path_factory.mktemp("learning")
    (root / "train").mkdir()
    (root / "validation").mkdir()
    for i in range(4):
        solved_file(ice_cap(i), root / "train" / f"sample_{i:05d}.nc")
    mirror_file(root / "train" / "sample_00000.nc", root / "validation" / "mx_00000.nc", "x")
    mirror_file(root / "train" / "sample_00001.nc", root / "validation" / "my_00001.nc", "y")
    return root


# ----------------------------------------------------------------------------- data
def test_load_data_layout_and_skips(dataset, tmp_path):
    bad = tmp_path / "unconverged.nc"
    ds = xr.open_dataset(dataset / "train" / "sample_00002.nc").load()
    ds.attrs["solver_converged"] = 0
    ds.to_netcdf(bad)
    data = load_data([dataset / "train", bad])
    assert len(data) == 4 and data.skipped == (str(bad),)
    assert data.layout == Layout(labels="levels", levels=4)
    assert data.vertical.levels == 4 and data.vertical.spacing == pytest.approx(2.0)
    assert data.physics is not None and data.uniform_spacing == (100.0, 100.0)
    s = data.samples[0]
    assert s.fields.shape == (16, 16, 9 + 8) and s.fields.dtype == np.float32
    sx, sy = node_gradient(s.fields[..., 6], dx=100.0, dy=100.0)
    np.testing.assert_allclose(s.fields[..., 1], sx, rtol=1e-4, atol=1e-6)
    # the depth average of the levels is ubar
    w = data.vertical.depth_average_weights
    np.testing.assert_allclose(np.tensordot(s.fields[..., 9:13], w, axes=(-1, 0)), s.fields[..., 7],
                               rtol=1e-4, atol=1e-3)
    train_part, val_part = data.split(validation_fraction=0.25, seed=0)
    assert len(train_part) == 3 and len(val_part) == 1
    assert data.split(validation_fraction=0.25, seed=0)[1].files == val_part.files


def test_augmentation_preserves_the_energy(dataset):
    """Mirrors and rotations map the solution of a glacier to that of the transformed glacier:
    the discrete Blatter-Pattyn energy of the transformed label under the transformed geometry
    equals the original (and the transformed slope channels are the slope of the transformed
    surface)."""
    data = load_data([dataset / "train" / "sample_00000.nc"])
    s = data.samples[0]
    # a non-square crop shows that rows and columns are not mixed up, and unequal spacing that
    # a rotation swaps dx and dy
    fields = s.fields[1:15, :, :].copy()
    spacing0 = (100.0, 50.0)
    fields[..., 1], fields[..., 2] = node_gradient(fields[..., 6], dx=100.0, dy=50.0)
    energy = make_energy_fn(physics=data.physics, vertical=data.vertical, batch_shares_spacing=True)

    def e(f, spacing):
        f = tf.constant(f[None])
        u, v = label_levels(f, data.layout)
        return float(energy(u, v, f, tf.constant([spacing], tf.float32))[0])

    e0 = e(fields, spacing0)
    assert e0 < 0
    for flip_x in (False, True):
        for flip_y in (False, True):
            for turns in range(4):
                f, spacing = transform(fields, spacing0, layout=data.layout, flip_x=flip_x,
                                       flip_y=flip_y, rotations=turns)
                assert e(f, spacing) == pytest.approx(e0, rel=2e-6)
                sx, sy = node_gradient(f[..., 6], dx=spacing[0], dy=spacing[1])
                np.testing.assert_allclose(f[..., 1], sx, atol=1e-5)
                np.testing.assert_allclose(f[..., 2], sy, atol=1e-5)
                assert np.all(f[..., 5] == np.float32(spacing[0]))
    # the check has teeth: a rotation without turning the vectors changes the energy
    wrong = np.swapaxes(fields[::-1], 0, 1).copy()
    assert abs(e(wrong, spacing0[::-1]) / e0 - 1) > 0.1



def test_speed_scaling_is_a_symmetry_of_the_equations(dataset):
    """The glacier with rate factor mu A and sliding coefficient mu^-m c flows exactly mu times as
    fast: the solver says so, the discrete energy of the scaled label is mu times the original,
    and the stream's ``speed_scaling`` applies exactly that to the element it would have drawn."""
    mu, m = 2.5, DEFAULT_PHYSICS.sliding_exponent
    g = ice_cap(0)
    vertical = VerticalDiscretisation(levels=4)
    # a tight tolerance: at the default 1e-9 L-BFGS stops 2 % from the solution on this cap
    tight = SolverConfig(tolerance=1e-12, max_iterations=5000)
    a = solve(g, vertical=vertical, config=tight)
    b = solve(g.replace(rate_factor=mu * g.rate_factor,
                        sliding_coefficient=g.sliding_coefficient * mu ** -m),
              vertical=vertical, config=tight)
    assert a.converged and b.converged
    ice = g.thickness > 0
    for name in ("ubar", "vbar", "u_surface"):
        ua, ub = getattr(a.velocity, name)[ice], getattr(b.velocity, name)[ice]
        assert np.linalg.norm(ub - mu * ua) <= 1e-3 * np.linalg.norm(mu * ua), name
    # the same on the discrete energy, through the training data's channels
    data = load_data([dataset / "train" / "sample_00000.nc"])
    fields = data.samples[0].fields
    energy = make_energy_fn(physics=data.physics, vertical=data.vertical, batch_shares_spacing=True)

    def e(f):
        f = tf.constant(f[None])
        u, v = label_levels(f, data.layout)
        return float(energy(u, v, f, tf.constant([[100.0, 100.0]], tf.float32))[0])

    scaled = scale_speed(fields, mu, layout=data.layout, sliding_exponent=m)
    # (up to the regularisations of the strain rate and the basal speed, which do not scale)
    assert e(scaled) == pytest.approx(mu * e(fields), rel=1e-3)
    np.testing.assert_array_equal(scaled[..., [0, 1, 2, 5, 6]], fields[..., [0, 1, 2, 5, 6]])
    # teeth: scaling the velocity alone is not a solution of the same energy's scaling
    wrong = fields.copy()
    wrong[..., 7:] *= mu
    assert abs(e(wrong) / (mu * e(fields)) - 1) > 0.05
    # the stream: same crop and mirrors as without scaling, then one factor in the range
    data = load_data([dataset / "train"])
    plain = StreamConfig(crop=(12, 12), seed=5)
    for index in range(6):
        f0, _ = element(data, index, plain)
        f1, _ = element(data, index, StreamConfig(crop=(12, 12), seed=5, speed_scaling=(0.5, 2.0)))
        factor = f1[..., 4].mean() / f0[..., 4].mean()
        assert 0.5 <= factor <= 2.0
        np.testing.assert_allclose(f1, scale_speed(f0, factor, layout=data.layout,
                                                   sliding_exponent=m), rtol=1e-5)
    with pytest.raises(ValueError, match="speed_scaling"):
        TrainConfig(speed_scaling=[2.0, 1.0])


def test_stream_is_a_function_of_seed_and_step(dataset):
    data = load_data([dataset / "train"])
    stream = StreamConfig(crop=(12, 12), seed=5)
    a, sa = element(data, 7, stream)
    b, sb = element(data, 7, stream)
    np.testing.assert_array_equal(a, b)
    assert a.shape == (12, 12, data.layout.channels)
    assert not np.array_equal(a, element(data, 8, stream)[0])
    full = make_dataset_fn(data, global_batch_size=2, stream=stream, steps=4)()
    late = make_dataset_fn(data, global_batch_size=2, stream=stream, start_step=3, steps=4)()
    np.testing.assert_array_equal(list(full)[3][0].numpy(), list(late)[0][0].numpy())


def _cut_file(src, dst, n: int):
    """Write the first ``n`` x ``n`` nodes of the glacier of ``src`` (a smaller labelled grid)."""
    xr.open_dataset(src).load().isel(x=slice(0, n), y=slice(0, n)).to_netcdf(dst)
    return dst


@pytest.fixture(scope="session")
def mixed_grids(dataset, tmp_path_factory):
    """The four 16 x 16 training ice caps and a 12 x 12 cut of one of them."""
    root = tmp_path_factory.mktemp("mixed")
    for f in sorted((dataset / "train").glob("*.nc")):
        (root / f.name).symlink_to(f)
    _cut_file(dataset / "train" / "sample_00002.nc", root / "small_00002.nc", 12)
    return root


def test_wide_steps_draw_larger_crops_of_the_glaciers_that_hold_them(mixed_grids):
    """Every ``wide_every``-th step's batch is of wide crops, taken only from the grids that
    hold them (a 16-node crop of the 12 x 12 grid would fail), deterministically by step."""
    data = load_data([mixed_grids])
    small = [i for i, s in enumerate(data.samples) if s.shape == (12, 12)]
    assert len(small) == 1 and len(data.samples) == 5
    assert wide_pool(data, (16, 16)) == tuple(i for i in range(5) if i not in small)
    stream = StreamConfig(crop=(8, 8), seed=3, wide_crop=(16, 16), wide_every=3)
    for index in range(40):  # two passes over the pool and more: never the small grid
        fields, spacing = wide_element(data, index, stream)
        assert fields.shape == (16, 16, data.layout.channels)
    np.testing.assert_array_equal(wide_element(data, 5, stream)[0], wide_element(data, 5, stream)[0])
    assert [stream.is_wide_step(s) for s in range(6)] == [False, False, True, False, False, True]
    full = [b[0].numpy() for b in make_dataset_fn(data, global_batch_size=2, stream=stream, steps=6)()]
    assert [b.shape[1:3] for b in full] == [(8, 8), (8, 8), (16, 16)] * 2
    # the ordinary steps are those of a stream without wide steps
    plain = [b[0].numpy() for b in make_dataset_fn(
        data, global_batch_size=2, stream=StreamConfig(crop=(8, 8), seed=3), steps=6)()]
    for step in (0, 1, 3, 4):
        np.testing.assert_array_equal(full[step], plain[step])
    # the wide batch of step 5 is wide elements 2 and 3; a resumed stream yields the same
    np.testing.assert_array_equal(full[5][1], wide_element(data, 3, stream)[0])
    late = [b[0].numpy() for b in make_dataset_fn(data, global_batch_size=2, stream=stream,
                                                  start_step=4, steps=6)()]
    np.testing.assert_array_equal(late[1], full[5])
    with pytest.raises(ValueError, match="wide_every"):
        make_dataset_fn(data, global_batch_size=2, stream=StreamConfig(crop=(8, 8), wide_crop=(16, 16),
                                                                       wide_every=1))


def test_training_with_wide_steps(mixed_grids, dataset, tmp_path):
    config = tiny_config(steps=4, crop_size=8, wide_crop_size=16, wide_every=2, validate_every=4)
    result = train([mixed_grids], tmp_path / "w.keras", config, validation=[dataset / "validation"])
    assert np.isfinite(result["final"]["relative_l2_ubar"])
    meta = json.loads((tmp_path / "w.json").read_text())["training_data"]
    assert meta["crop"] == [8, 8] and meta["wide_crop"] == [16, 16]
    assert meta["wide_every"] == 2 and meta["wide_count"] == 4
    # stopped and resumed, the run takes the same steps (wide ones included)
    part = train([mixed_grids], tmp_path / "r.keras", config, validation=[dataset / "validation"],
                 stop_at_step=3)
    rest = train([mixed_grids], tmp_path / "r.keras", config, validation=[dataset / "validation"],
                 resume=True)
    np.testing.assert_allclose(part["history"]["loss"] + rest["history"]["loss"],
                               result["history"]["loss"], rtol=1e-4)
    with pytest.raises(InputError, match="wide crop 20 x 20"):
        train([mixed_grids], tmp_path / "x.keras", tiny_config(crop_size=8, wide_crop_size=20))
    with pytest.raises(ValueError, match="larger than the crop"):
        train([mixed_grids], tmp_path / "x.keras", tiny_config(crop_size=12, wide_crop_size=[16, 8]))
    with pytest.raises(ValueError, match="wide_every"):
        TrainConfig(wide_every=1)


def test_shape_function_has_unit_depth_average():
    vertical = VerticalDiscretisation(levels=6)
    f = shape_function(vertical, glen_exponent=3.0)
    assert float(np.dot(vertical.depth_average_weights, f)) == pytest.approx(1.0)
    assert f[0] == 0.0 and np.all(np.diff(f) > 0)


def test_energy_of_mixed_grid_spacings(dataset):
    """A batch of glaciers with different spacings: each example gets its own (dx, dy)."""
    data = load_data([dataset / "train" / "sample_00000.nc", dataset / "train" / "sample_00001.nc"])
    fields = tf.constant(np.stack([s.fields for s in data.samples]))
    u, v = label_levels(fields, data.layout)
    spacing = tf.constant([[100.0, 100.0], [150.0, 80.0]])
    kwargs = dict(physics=data.physics, vertical=data.vertical)
    mixed = make_energy_fn(**kwargs)(u, v, fields, spacing).numpy()
    mapped = tf.function(make_energy_fn(**kwargs), input_signature=[
        tf.TensorSpec((None, 4, 16, 16)), tf.TensorSpec((None, 4, 16, 16)),
        tf.TensorSpec((None, 16, 16, fields.shape[-1])), tf.TensorSpec((None, 2))])
    shared = make_energy_fn(batch_shares_spacing=True, **kwargs)
    for i in range(2):
        one = shared(u[i : i + 1], v[i : i + 1], fields[i : i + 1], spacing[i : i + 1]).numpy()[0]
        assert mixed[i] == pytest.approx(one, rel=1e-6)
    np.testing.assert_allclose(mapped(u, v, fields, spacing).numpy(), mixed, rtol=1e-6)


def test_relative_energy_weighting_divides_each_gradient_by_its_own_energy(dataset):
    """``energy_weighting: relative``: the same value as ``area`` (the per-area energy), the
    gradient of each glacier divided by |E| of that glacier, so that a glacier flowing 10x
    as fast as another (a far larger energy) no longer dominates the gradient."""
    from glacier_emulator.learning.losses import LossConfig, Objective

    data = load_data([dataset / "train" / "sample_00000.nc", dataset / "train" / "sample_00001.nc"])
    fields = tf.constant(np.stack([s.fields for s in data.samples]))
    spacing = tf.constant([[100.0, 100.0], [100.0, 100.0]])
    u, v = label_levels(fields, data.layout)
    y = tf.concat([tf.transpose(u, [0, 2, 3, 1]), tf.transpose(v, [0, 2, 3, 1])], -1)
    y = y * tf.constant([0.9, 9.0])[:, None, None, None]          # one slow, one fast glacier
    energy = make_energy_fn(physics=data.physics, vertical=data.vertical)
    terms, grads = {}, {}
    for weighting in ("area", "relative"):
        objective = Objective(mode="physics", layout=data.layout, vertical=data.vertical,
                              physics=data.physics, energy=energy,
                              config=LossConfig(energy_weighting=weighting))
        with tf.GradientTape() as tape:
            tape.watch(y)
            terms[weighting] = objective.physics_term(y, fields, spacing)
        grads[weighting] = tape.gradient(terms[weighting], y).numpy()
    np.testing.assert_allclose(terms["relative"].numpy(), terms["area"].numpy(), rtol=1e-6)
    ratio = 1 / np.abs(terms["area"].numpy())   # (ice area * energy_scale) / |E| per glacier
    assert ratio[1] < ratio[0] / 10              # the fast one's |E| is larger
    for i in range(2):
        np.testing.assert_allclose(grads["relative"][i], grads["area"][i] * ratio[i],
                                   rtol=1e-4, atol=1e-6 * np.abs(grads["relative"][i]).max())
    with pytest.raises(ValueError, match="energy_weighting"):
        LossConfig(energy_weighting="speed")


@pytest.mark.parametrize("mode", ["supervised", "hybrid"])
def test_an_example_without_ice_adds_nothing_to_the_loss(dataset, mode):
    """A training crop can miss a small glacier altogether (a retreated state of a forward run):
    such an example has loss 0 and gradient 0, and the other examples' loss is unchanged (it
    was 0/0 = NaN in the relative supervised loss, and stopped a training run)."""
    from glacier_emulator.learning.losses import LossConfig, Objective

    data = load_data([dataset / "train" / "sample_00000.nc"])
    fields = np.stack([data.samples[0].fields] * 2)
    fields[1, ..., 0] = 0.0                                       # the second one: no ice
    fields = tf.constant(fields)
    spacing = tf.constant([[100.0, 100.0], [100.0, 100.0]])
    u, v = label_levels(fields, data.layout)
    y = tf.concat([tf.transpose(u, [0, 2, 3, 1]), tf.transpose(v, [0, 2, 3, 1])], -1) * 1.1
    objective = Objective(mode=mode, layout=data.layout, vertical=data.vertical,
                          physics=data.physics, config=LossConfig(),
                          energy=make_energy_fn(physics=data.physics, vertical=data.vertical))
    with tf.GradientTape() as tape:
        tape.watch(y)
        loss, parts = objective(y, fields, spacing)
        total = tf.reduce_sum(loss)
    grad = tape.gradient(total, y).numpy()
    assert np.isfinite(loss.numpy()).all() and np.isfinite(grad).all()
    assert parts["supervised"].numpy()[1] == 0.0 and np.all(grad[1] == 0.0)
    # (1.1 - 1)^2, less the floor's small share
    assert parts["supervised"].numpy()[0] == pytest.approx(0.01, rel=1e-3)
    single, _ = objective(y[:1], fields[:1], spacing[:1])
    assert loss.numpy()[0] == pytest.approx(single.numpy()[0], rel=1e-6)


# ------------------------------------------------------------------------- training
def _val(result, key):
    values = [v[key] for v in result["validation"]]
    return values[0], values[-1], min(values)


def test_supervised_validation_error_falls(dataset, tmp_path):
    """40 steps: the relative L2 error of ubar on the (mirrored) validation glaciers falls from
    1.0 to 0.54 (measured); the bound is 0.75 of the start."""
    out = tmp_path / "sup.keras"
    result = train([dataset / "train"], out, tiny_config(), validation=[dataset / "validation"])
    first, last, best = _val(result, "val_rel_l2")
    assert result["validation"][0]["step"] == 0 and result["step"] == 40
    assert best < 0.75 * first and last < first
    losses = result["history"]["loss"]
    assert np.mean(losses[-10:]) < 0.8 * np.mean(losses[:5])
    # the model file, its metadata and the log
    from glacier_emulator.emulator import Emulator

    emulator = Emulator.load(out)
    meta = emulator.metadata
    assert meta.outputs == "levels" and meta.vertical.levels == 4
    assert meta.training_data["mode"] == "supervised" and meta.training_data["count"] == 4
    assert len(meta.training_data["validation_files"]) == 2
    assert meta.accuracy["dataset"] == "validation"
    assert meta.accuracy["relative_l2_ubar"] == pytest.approx(best, rel=1e-5)
    assert meta.grid_spacing_range == (100.0, 100.0)
    header = (tmp_path / "sup.log.csv").read_text().splitlines()[0].split(",")
    assert header[:3] == ["step", "loss", "supervised"] and "val_rel_l2" in header
    assert (tmp_path / "sup.ckpt" / "checkpoint").is_file()


def test_hybrid_validation_error_falls(dataset, tmp_path):
    """Supervised + 0.1 x the normalised energy: the validation error falls (1.0 -> 0.48
    measured; bound 0.75 of the start) and so does the energy (0.22 -> -1.6)."""
    config = tiny_config(mode="hybrid", loss={"physics_weight": 0.1})
    result = train([dataset / "train"], tmp_path / "hyb.keras", config,
                   validation=[dataset / "validation"])
    first, _, best = _val(result, "val_rel_l2")
    assert best < 0.75 * first
    e_first, e_last, _ = _val(result, "val_physics")
    assert e_last < e_first
    assert result["history"]["physics"][-1] is not None


def test_prior_model_trains_with_the_constants_of_the_training_physics(dataset, tmp_path):
    """``model.prior: true``: the local shallow-ice prior takes rho g, n, m and A from the
    training physics (recorded in the data), is stored in the model file, and the validation
    error falls as for the plain network."""
    model = dict(MODEL, velocity_scale=1.0, prior=True)
    out = tmp_path / "prior.keras"
    result = train([dataset / "train"], out, tiny_config(model=model),
                   validation=[dataset / "validation"])
    first, _, best = _val(result, "val_rel_l2")
    assert best < 0.75 * first
    from glacier_emulator.emulator import Emulator

    prior = Emulator.load(out).model.get_config()["prior"]
    assert prior["rho_g"] == pytest.approx(DEFAULT_PHYSICS.rho_g)
    assert prior["glen_exponent"] == DEFAULT_PHYSICS.glen_exponent
    assert prior["sliding_exponent"] == pytest.approx(DEFAULT_PHYSICS.sliding_exponent)
    assert prior["rate_factor"] == DEFAULT_PHYSICS.rate_factor
    assert prior_arguments({"smoothing": 3.0, "rate_factor": 50.0}, DEFAULT_PHYSICS)["rate_factor"] == 50.0
    assert prior_arguments(False, DEFAULT_PHYSICS) is None


def test_physics_energy_falls(dataset, tmp_path):
    """No labels used: the normalised energy of the validation glaciers falls from 0.14 to -1.63
    in 40 steps (measured; bound: a fall of 0.5, below zero); the relative error falls with it
    (1.0 -> 0.57)."""
    model = dict(MODEL, velocity_scale=100.0)
    result = train([dataset / "train"], tmp_path / "phys.keras",
                   tiny_config(mode="physics", model=model), validation=[dataset / "validation"])
    first, last, _ = _val(result, "val_physics")
    assert last < first - 0.5 and last < 0
    assert _val(result, "val_rel_l2")[1] < _val(result, "val_rel_l2")[0]


def test_physics_on_geometry_only_files_validates_against_labels(dataset, tmp_path):
    """Physics-informed training needs geometries only; labelled validation files still measure
    the error against the solver (the recipe of the shipped physics-trained model)."""
    from glacier_emulator.io import read_geometry, write_geometry

    geometries = tmp_path / "geometries"
    geometries.mkdir()
    for path in sorted((dataset / "train").glob("*.nc")):
        write_geometry(read_geometry(path), geometries / path.name)
    config = tiny_config(mode="physics", steps=20, validate_every=10, monitor="val_rel_l2",
                         vertical=dict(levels=4, spacing=2.0), model=dict(MODEL, velocity_scale=100.0))
    result = train([geometries], tmp_path / "geo.keras", config, validation=[dataset / "validation"])
    first, last, _ = _val(result, "val_rel_l2")
    assert np.isfinite(last) and last < first
    assert (tmp_path / "geo.json").is_file()


def test_physics_on_one_glacier_approaches_the_solver(dataset, tmp_path):
    """Physics-only training on one geometry converges to the reference solver's solution.

    300 steps of Adam (lr 1e-2 after 50 warm-up steps) on the energy alone, 3-D output on the
    solver's 4 levels. Measured relative L2 error of ubar against the solver: 0.019 here (energy
    gap 0.5 %); 0.013 to 0.087 over three of the caps and two seeds with the default input
    scaling (energy gaps 0.7-4.7 %). The bounds are 0.2 and 10 %.
    """
    config = tiny_config(mode="physics", steps=300, batch_size=1, learning_rate=1e-2,
                         warmup_steps=50, validation_fraction=0.0, mirror=False, rotate=False,
                         model=dict(MODEL, velocity_scale=100.0))
    result = train([dataset / "train" / "sample_00000.nc"], tmp_path / "one.keras", config)
    final = result["final"]
    assert final["dataset"].startswith("training")
    assert final["relative_l2_ubar"] < 0.2
    assert -0.01 < final["energy_gap"] < 0.1


def test_resume_continues_the_loss_curve(dataset, tmp_path):
    """12 steps in one go, and 6 steps + resume to 12, give the same losses (1e-4)."""
    config = tiny_config(steps=12, validate_every=6, checkpoint_every=3, schedule="cosine",
                         warmup_steps=3)
    whole = train([dataset / "train"], tmp_path / "a.keras", config,
                  validation=[dataset / "validation"])
    part = train([dataset / "train"], tmp_path / "b.keras", config,
                 validation=[dataset / "validation"], stop_at_step=6)
    assert part["step"] == 6 and part["model_path"] is None
    with pytest.raises(ValueError, match="resume"):
        train([dataset / "train"], tmp_path / "b.keras", config, validation=[dataset / "validation"])
    rest = train([dataset / "train"], tmp_path / "b.keras", config,
                 validation=[dataset / "validation"], resume=True)
    assert rest["history"]["step"] == list(range(7, 13))
    np.testing.assert_allclose(part["history"]["loss"] + rest["history"]["loss"],
                               whole["history"]["loss"], rtol=1e-4)
    np.testing.assert_allclose(rest["history"]["learning_rate"],
                               whole["history"]["learning_rate"][6:], rtol=1e-6)
    rows = (tmp_path / "b.log.csv").read_text().splitlines()
    assert [int(r.split(",")[0]) for r in rows[1:]] == list(range(13))


TWO_REPLICAS = """
import json, sys
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from glacier_emulator.learning.train import TrainConfig, train, make_strategy
config = TrainConfig(**json.loads(sys.argv[2]))
results = {}
for name, strategy in (("two", make_strategy()), ("one", tf.distribute.MirroredStrategy(["/cpu:0"]))):
    r = train([sys.argv[1]], sys.argv[3] + f"/{name}.keras", config, strategy=strategy)
    results[name] = {"replicas": r["replicas"], "step": r["step"], "loss": r["history"]["loss"],
                     "model": r["model_path"]}
print("RESULT " + json.dumps(results))
"""


def test_a_run_from_before_a_setting_existed_resumes_with_its_default(dataset, tmp_path):
    config = tiny_config(steps=4, validate_every=2, checkpoint_every=2)
    train([dataset / "train"], tmp_path / "o.keras", config, stop_at_step=2)
    stored = tmp_path / "o.ckpt" / "config.json"
    old = json.loads(stored.read_text())
    for key in ("wide_crop_size", "wide_every"):
        del old[key]
    stored.write_text(json.dumps(old))
    assert train([dataset / "train"], tmp_path / "o.keras", config, resume=True)["step"] == 4
    old["crop_size"] = 8  # a setting that did change still stops it
    stored.write_text(json.dumps(old))
    with pytest.raises(ValueError, match="cannot resume: crop_size"):
        train([dataset / "train"], tmp_path / "o.keras", tiny_config(steps=6), resume=True)


def test_mirrored_strategy_on_two_cpu_devices(dataset, tmp_path):
    """A run on two logical CPU devices: two replicas, the right step count, finite losses, and
    the same loss curve as one replica (the loss is averaged over the global batch)."""
    config = dict(steps=6, batch_size=4, learning_rate=3e-3, validation_fraction=0.0,
                  checkpoint_every=3, model=MODEL)
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", TF_CPP_MIN_LOG_LEVEL="3")
    env.pop("TF_CONFIG", None)
    done = subprocess.run(
        [sys.executable, "-c", TWO_REPLICAS, str(dataset / "train"), json.dumps(config), str(tmp_path)],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    line = [x for x in done.stdout.splitlines() if x.startswith("RESULT ")][-1]
    results = json.loads(line[len("RESULT "):])
    two, one = results["two"], results["one"]
    assert two["replicas"] == 2 and one["replicas"] == 1
    assert two["step"] == 6 and len(two["loss"]) == 6 and np.all(np.isfinite(two["loss"]))
    assert os.path.isfile(two["model"])
    np.testing.assert_allclose(two["loss"], one["loss"], rtol=1e-4)


def test_init_from_continues_from_the_given_weights(dataset, tmp_path):
    """Fine-tuning: a run started from a trained model validates, at its step 0, exactly as that
    model did at its end (same architecture and weights), and an architecture conflict or a
    missing file is refused."""
    first = tmp_path / "first.keras"
    r1 = train([dataset / "train"], first, tiny_config(), validation=[dataset / "validation"])
    config = tiny_config(steps=10, init_from=str(first), model={})
    r2 = train([dataset / "train"], tmp_path / "tuned.keras", config,
               validation=[dataset / "validation"])
    assert r2["validation"][0]["step"] == 0
    assert r2["validation"][0]["val_rel_l2"] == pytest.approx(
        r1["validation"][-1]["val_rel_l2"], rel=1e-5)
    assert r2["validation"][0]["val_rel_l2"] < 0.9  # not a fresh network (1.0)
    with pytest.raises(InputError, match="model.filters"):
        train([dataset / "train"], tmp_path / "bad.keras",
              tiny_config(steps=2, init_from=str(first), model={"filters": 999}),
              validation=[dataset / "validation"])
    with pytest.raises(InputError, match="init_from: .*missing.keras"):
        train([dataset / "train"], tmp_path / "bad2.keras",
              tiny_config(steps=2, init_from=str(tmp_path / "missing.keras")),
              validation=[dataset / "validation"])


def test_early_stopping_keeps_the_best_weights(dataset, tmp_path):
    config = tiny_config(steps=40, validate_every=2, learning_rate=1e-9,
                         early_stopping_patience=2, early_stopping_min_delta=1e-3)
    result = train([dataset / "train"], tmp_path / "es.keras", config,
                   validation=[dataset / "validation"])
    assert result["stopped_early"] and result["step"] == 4
    assert [v["step"] for v in result["validation"]] == [0, 2, 4]
    assert result["final"]["step"] == 0
    assert result["final"]["relative_l2_ubar"] == pytest.approx(
        result["validation"][0]["val_rel_l2"], rel=1e-6)


def test_keep_final_saves_the_last_steps_weights(dataset, tmp_path):
    """``keep: final``: the model file gets the weights of the last step even when an earlier
    validation scored best (here the first: the learning rate is too small to change the
    score), and its accuracy is measured on them; ``keep: best`` picks the first."""
    runs = {}
    for keep in ("best", "final"):
        config = tiny_config(steps=6, validate_every=2, learning_rate=1e-9, keep=keep)
        runs[keep] = train([dataset / "train"], tmp_path / f"{keep}.keras", config,
                           validation=[dataset / "validation"])
    assert runs["best"]["final"]["step"] == 0 and runs["final"]["final"]["step"] == 6
    assert json.loads((tmp_path / "final.json").read_text())["accuracy"]["step"] == 6
    with pytest.raises(ValueError, match="keep"):
        TrainConfig(keep="last")


def test_grid_spacing_range_is_declared_in_the_config_and_checked_against_the_data(dataset, tmp_path):
    """``grid_spacing_range`` goes into the metadata (the glaciers, all at 100 m, were "drawn"
    from 50-200 m) with the spacings seen; a range that leaves out a training glacier is refused
    before training, naming the file; without it the range is that of the data."""
    config = tiny_config(steps=2, validate_every=2, grid_spacing_range=[50, 200])
    train([dataset / "train"], tmp_path / "declared.keras", config, validation=[dataset / "validation"])
    meta = json.loads((tmp_path / "declared.json").read_text())
    assert meta["grid_spacing"] == {"min": 50.0, "max": 200.0, "units": "m"}
    assert meta["training_data"]["grid_spacings_seen"] == {"min": 100.0, "max": 100.0, "units": "m"}
    with pytest.raises(InputError, match=r"sample_\d+\.nc: grid spacing 100 x 100 m is outside"):
        train([dataset / "train"], tmp_path / "narrow.keras", tiny_config(grid_spacing_range=[120, 200]),
              validation=[dataset / "validation"])
    assert not (tmp_path / "narrow.keras").exists()
    for bad in ([200, 50], [0, 100], [50], "50-200"):
        with pytest.raises(ValueError, match="grid_spacing_range"):
            TrainConfig(grid_spacing_range=bad)


# ------------------------------------------------------------------------- errors
def _broken_copy(src, dst, *, drop=None, nan=None):
    ds = xr.open_dataset(src).load()
    if drop:
        ds = ds.drop_vars(drop)
    if nan:
        values = ds[nan].values.copy()
        values[..., 3, 4] = np.nan
        ds[nan] = (ds[nan].dims, values, ds[nan].attrs)
    ds.to_netcdf(dst)
    return dst


@pytest.mark.parametrize("drop, nan, variable", [
    (["thk", "usurf"], None, "thickness"),
    (None, "thk", "thk"),
    (None, "ubar", "ubar"),
    (None, "uvel", "uvel"),
    (["vbar"], None, "vbar"),
])
def test_bad_data_names_the_file_and_variable(dataset, tmp_path, drop, nan, variable):
    bad = _broken_copy(dataset / "train" / "sample_00001.nc", tmp_path / "broken.nc", drop=drop, nan=nan)
    with pytest.raises(InputError) as info:
        load_data([dataset / "train" / "sample_00000.nc", bad], require_labels=True)
    message = str(info.value)
    assert "broken.nc" in message and variable in message


def test_supervised_training_needs_labels(dataset, tmp_path):
    geometry_only = _broken_copy(dataset / "train" / "sample_00001.nc", tmp_path / "geom.nc",
                                 drop=["ubar", "vbar", "uvel", "vvel"])
    with pytest.raises(InputError, match="geom.nc.*no velocity labels"):
        train([geometry_only], tmp_path / "m.keras", tiny_config(steps=1))
    data = load_data([geometry_only])  # fine for physics training
    assert data.layout.labels == "none" and data.samples[0].fields.shape[-1] == 7
    result = train([geometry_only], tmp_path / "p.keras",
                   tiny_config(mode="physics", steps=2, batch_size=1, validation_fraction=0.0,
                               model=dict(MODEL, velocity_scale=100.0)))
    assert result["final"]["normalised_energy"] < 1e3 and "relative_l2_ubar" not in result["final"]


def test_settings_errors(dataset, tmp_path):
    with pytest.raises(ValueError, match="unknown training setting"):
        TrainConfig.from_dict({"stepz": 3})
    with pytest.raises(ValueError, match="mode"):
        TrainConfig(mode="magic")
    with pytest.raises(InputError, match="crop size"):
        train([dataset / "train"], tmp_path / "m.keras", tiny_config(crop_size=32))
    with pytest.raises(InputError, match="out_channels"):
        train([dataset / "train"], tmp_path / "m.keras",
              tiny_config(model=dict(MODEL, out_channels=10)))
    with pytest.raises(ValueError, match="in_channels >= 5"):
        train([dataset / "train"], tmp_path / "m.keras",
              tiny_config(speed_scaling=[0.5, 2.0],
                          model=dict(MODEL, in_channels=4, input_scale=[500.0, 0.1, 0.1, 1.0])))


def rescaled_file(src, dst, factor: float):
    """The glacier of ``src`` on a grid ``factor`` times coarser (labels kept: fine for inputs)."""
    ds = xr.open_dataset(src).load()
    ds = ds.assign_coords(x=ds["x"].values * factor, y=ds["y"].values * factor)
    ds.to_netcdf(dst)
    return dst


def test_command_line(dataset, tmp_path, capsys):
    """Hybrid training from the command line on grids of two spacings (100 and 150 m)."""
    from glacier_emulator.cli import main

    config = tmp_path / "train.yaml"
    config.write_text(textwrap.dedent(f"""\
        mode: physics
        steps: 50
        batch_size: 2
        crop_size: 12
        validate_every: 2
        model: {json.dumps(dict(MODEL, velocity_scale=100.0))}
        """))
    out = tmp_path / "cli.keras"
    coarse = rescaled_file(dataset / "train" / "sample_00002.nc", tmp_path / "coarse.nc", 1.5)
    code = main(["train", str(dataset / "train"), str(coarse), "-o", str(out), "--config",
                 str(config), "--steps", "3", "--mode", "hybrid", "--validation",
                 str(dataset / "validation"), str(coarse)])
    assert code == 0, capsys.readouterr().err
    assert out.is_file() and out.with_suffix(".json").is_file()
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["training_data"]["mode"] == "hybrid" and meta["training_data"]["steps"] == 3
    assert meta["training_data"]["crop"] == [12, 12] and meta["training_data"]["count"] == 5
    assert meta["grid_spacing"]["min"] == 100.0 and meta["grid_spacing"]["max"] == 150.0
    assert np.isfinite(meta["accuracy"]["relative_l2_ubar"])
    code = main(["train", str(tmp_path / "missing"), "-o", str(tmp_path / "x.keras")])
    err = capsys.readouterr().err
    assert code == 2 and "missing" in err and "Traceback" not in err
