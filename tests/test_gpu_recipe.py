"""The GPU recipe (training/gpu/) computes what the package computes.

The shipped model's last stage was trained on a GPU machine that has JAX and no TensorFlow, on
glaciers labelled there by a JAX port of the Blatter-Pattyn energy and of the reference solver.
These tests hold the port to the package: the same energy, the same solution, the same network
forward pass, the same augmentation.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

jax = pytest.importorskip("jax")
GPU_DIR = Path(__file__).resolve().parents[1] / "training" / "gpu"
sys.path.insert(0, str(GPU_DIR))

import bp_jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import unet_jax  # noqa: E402

from glacier_emulator.constants import DEFAULT_PHYSICS, DEFAULT_VERTICAL  # noqa: E402
from glacier_emulator.fields import relative_l2  # noqa: E402
from glacier_emulator.learning.synthetic import SyntheticConfig, sample_geometry  # noqa: E402

SMALL = SyntheticConfig(grid=24)


@pytest.fixture(scope="module")
def glaciers():
    return [sample_geometry(i, seed=7, config=SMALL) for i in range(2)]


def test_energy_matches_tensorflow(glaciers):
    """Same energy as physics.energy.blatter_pattyn_energy for arbitrary velocities (float64)."""
    from glacier_emulator.physics.energy import blatter_pattyn_energy

    k = bp_jax.Constants.from_package(DEFAULT_PHYSICS, DEFAULT_VERTICAL)
    arrays = bp_jax.glacier_arrays(glaciers, DEFAULT_PHYSICS, DEFAULT_VERTICAL)
    rng = np.random.default_rng(0)
    for i, geo in enumerate(glaciers):
        shape = (DEFAULT_VERTICAL.levels,) + geo.shape
        u = 50 * rng.standard_normal(shape) * (geo.thickness > 0)
        v = 50 * rng.standard_normal(shape) * (geo.thickness > 0)
        ref = float(blatter_pattyn_energy(
            u, v, thickness=geo.thickness, surface=geo.surface, dx=geo.dx, dy=geo.dy,
            sliding_coefficient=geo.sliding_coefficient,
            rate_factor=np.broadcast_to(geo.rate_factor, geo.shape)))
        g = {n: jnp.asarray(a[i]) for n, a in arrays.items()}
        got = float(bp_jax.energy(jnp.asarray(u), jnp.asarray(v), g, k))
        assert got == pytest.approx(ref, rel=1e-10)


def test_batched_solver_matches_reference_solver(glaciers):
    """The vmapped L-BFGS reaches the reference solver's solution (both to ftol 1e-9)."""
    from glacier_emulator.numerics.solver import solve

    u, v, report = bp_jax.solve_geometries(glaciers, DEFAULT_PHYSICS, DEFAULT_VERTICAL,
                                           iterations=(0, 3000))
    assert report["converged"].all()
    for i, geo in enumerate(glaciers):
        ref = solve(geo).velocity
        err = relative_l2(np.stack([u[i], v[i]]), np.stack([ref.u, ref.v]))
        assert err < 5e-3, f"glacier {i}: {err:.2e}"
        # and it is not the trivial answer
        assert np.abs(ref.u).max() > 1.0


def test_preconditioned_lbfgs_matches_reference_solver(glaciers):
    """The preconditioner of the fine level (``probes``, as ``SolverConfig.diagonal_probes``):
    from a guess 30 % off, the vmapped L-BFGS reaches the reference solver's solution; the
    Hessian diagonal it estimates is exact on a separable quadratic."""
    from glacier_emulator.numerics.solver import solve

    k = bp_jax.Constants.from_package(DEFAULT_PHYSICS, DEFAULT_VERTICAL)
    g = jax.tree_util.tree_map(jnp.asarray, bp_jax.glacier_arrays(glaciers, DEFAULT_PHYSICS, DEFAULT_VERTICAL))
    refs = [solve(geo).velocity for geo in glaciers]
    u0 = jnp.asarray(np.stack([0.7 * r.u for r in refs]))
    v0 = jnp.asarray(np.stack([1.3 * r.v for r in refs]))
    x0 = jax.vmap(lambda u, v, gg: bp_jax.to_unknowns(u, v, gg, k))(u0, v0, g)
    x, _, _, _, conv = bp_jax.batch_solver(k, iterations=3000, probes=2)(x0, g)
    assert np.asarray(conv).all()
    u, v = jax.vmap(lambda x_, g_: bp_jax.to_levels(x_, g_, k))(x, g)
    for i, ref in enumerate(refs):
        err = relative_l2(np.stack([np.asarray(u[i]), np.asarray(v[i])]), np.stack([ref.u, ref.v]))
        assert err < 5e-3, f"glacier {i}: {err:.2e}"

    a = jnp.asarray(10.0 ** np.random.default_rng(0).uniform(-2, 2, size=(2, 3, 5, 6)))
    free = np.ones((3, 5, 6))
    free[:, 0, 0] = 0.0
    d = bp_jax.hessian_diagonal(lambda z, _: (0.5 * jnp.sum(a * z * z), a * z), jnp.ones(a.shape),
                                {"free": jnp.asarray(free)}, probes=1, smooth=1)
    on = np.broadcast_to(free, a.shape) > 0
    np.testing.assert_allclose(np.asarray(d)[on], np.asarray(a)[on], rtol=1e-10)
    assert np.all(np.asarray(d)[~on] == 0)


PRIOR = dict(smoothing=1.5, rho_g=910 * 9.81e-6, glen_exponent=3.0, sliding_exponent=1 / 3,
             rate_factor=78.0)


def ramp_inputs():
    """Model inputs (1, 13, 18, 6) of a glacier thickening from 0 to 200 m along x (odd grid)."""
    x = np.zeros((1, 13, 18, 6), "float32")
    x[..., 0] = np.linspace(0, 200, 18)
    x[..., 1], x[..., 3], x[..., 4], x[..., 5] = 0.05, 0.05, 78.0, 100.0
    return x


@pytest.mark.parametrize("prior", [None, PRIOR], ids=["plain", "prior"])
def test_unet_forward_matches_keras(prior):
    """unet_jax.apply with a GlacierUNet's weights gives the Keras output (odd grid: padding),
    also with the local shallow-ice prior; init_params makes kernels of the Keras shapes."""
    from glacier_emulator.models import GlacierUNet

    model = GlacierUNet(in_channels=6, out_channels=8, filters=4, depth=2, symmetrise="x",
                        velocity_scale=30.0, prior=prior)
    rng = np.random.default_rng(1)
    for layer in model.layers:  # non-zero biases too
        if layer.get_weights():
            layer.set_weights([0.3 * rng.standard_normal(w.shape).astype("float32") for w in layer.get_weights()])
    params = {layer.name: {"kernel": jnp.asarray(layer.get_weights()[0]), "bias": jnp.asarray(layer.get_weights()[1])}
              for layer in model.layers if layer.get_weights()}
    assert sorted(params) == sorted(unet_jax.layer_names(model.constructor_arguments()))
    fresh = unet_jax.init_params(model.constructor_arguments(), jax.random.PRNGKey(0))
    assert {k: v["kernel"].shape for k, v in fresh.items()} == {k: v["kernel"].shape for k, v in params.items()}
    x = np.zeros((2, 21, 27, 6), "float32")
    x[..., 0] = np.clip(300 * rng.random((2, 21, 27)) - 50, 0, None)
    x[..., 1:3] = 0.1 * rng.standard_normal((2, 21, 27, 2))
    x[..., 3], x[..., 4], x[..., 5] = 0.05, 78.0, 100.0
    ref = model(x).numpy()
    got = np.asarray(unet_jax.apply(params, model.constructor_arguments(), jnp.asarray(x)))
    assert np.abs(ref).max() > 1.0
    np.testing.assert_allclose(got, ref, atol=1e-4 * np.abs(ref).max())
    assert np.all(got[x[..., 0] == 0] == 0)


def test_export_of_a_dihedral_model_trains_with_the_x_mirror(tmp_path):
    """The shipped models predict with symmetrise='dihedral', which the JAX port does not
    evaluate: export_weights writes their weights with 'x' (the training mode), and the JAX
    forward pass of the export equals the Keras model with 'x'."""
    import export_weights

    from glacier_emulator.emulator import Emulator, ModelMetadata
    from glacier_emulator.models import GlacierUNet

    model = GlacierUNet(in_channels=6, out_channels=4, filters=4, depth=2, symmetrise="dihedral",
                        velocity_scale=1.0, prior=PRIOR)
    Emulator(model, ModelMetadata.from_model(model, name="d")).save(tmp_path / "d.keras")
    export_weights.main([str(tmp_path / "d.keras"), str(tmp_path / "d.npz")])
    params, config = unet_jax.load_params(tmp_path / "d.npz")
    assert config["symmetrise"] == "x"
    x = ramp_inputs()
    ref = model.with_symmetrise("x")(x).numpy()
    got = np.asarray(unet_jax.apply(params, config, jnp.asarray(x)))
    np.testing.assert_allclose(got, ref, atol=1e-4 * np.abs(ref).max())


def test_float16_export_is_the_rounded_network(tmp_path):
    """--float16 stores the kernels of 4096 values or more in half precision (the shipped models'
    storage), the rest as they are; loaded back as float32 they are the rounded kernels, the file
    is smaller and the network's output moves by about the rounding only."""
    import export_weights

    from glacier_emulator.emulator import Emulator, ModelMetadata
    from glacier_emulator.models import GlacierUNet

    model = GlacierUNet(in_channels=6, out_channels=4, filters=24, depth=2, symmetrise="x",
                        velocity_scale=1.0, prior=PRIOR)
    Emulator(model, ModelMetadata.from_model(model, name="h")).save(tmp_path / "h.keras")
    export_weights.main([str(tmp_path / "h.keras"), str(tmp_path / "full.npz")])
    export_weights.main([str(tmp_path / "h.keras"), str(tmp_path / "half.npz"), "--float16"])
    assert (tmp_path / "half.npz").stat().st_size < 0.6 * (tmp_path / "full.npz").stat().st_size
    with np.load(tmp_path / "half.npz") as raw:
        kinds = {k: (raw[k].dtype, raw[k].size) for k in raw.files if not k.startswith("__")}
    assert all((d == np.float16) == (k.endswith("kernel") and n >= 4096) for k, (d, n) in kinds.items())
    assert any(d == np.float16 for d, _ in kinds.values()) and any(d == np.float32 for d, _ in kinds.values())
    full, config = unet_jax.load_params(tmp_path / "full.npz")
    half, config_half = unet_jax.load_params(tmp_path / "half.npz")
    assert config_half == config
    for name in full:
        assert half[name]["kernel"].dtype == jnp.float32
        np.testing.assert_allclose(half[name]["kernel"], full[name]["kernel"], rtol=1e-3, atol=1e-7)
    x = ramp_inputs()
    ref = np.asarray(unet_jax.apply(full, config, jnp.asarray(x)))
    got = np.asarray(unet_jax.apply(half, config, jnp.asarray(x)))
    assert 0 < np.abs(got - ref).max() < 1e-2 * np.abs(ref).max()


def test_params_round_trip_in_parts(tmp_path):
    config = dict(in_channels=6, out_channels=4, depth=2, filters=4, kernel_size=3,
                  blocks_per_level=2)
    params = unet_jax.init_params(config, jax.random.PRNGKey(0))
    paths = unet_jax.save_params(tmp_path / "p.npz", params, config, max_bytes=4000)
    assert len(paths) > 1
    back, cfg = unet_jax.load_params(tmp_path / "p.npz")
    assert cfg == config
    for name in params:
        for kind in ("kernel", "bias"):
            np.testing.assert_array_equal(np.asarray(back[name][kind]), np.asarray(params[name][kind]))


@pytest.mark.parametrize("t", range(8))
def test_augmentation_matches_package_transform(t):
    """train_gpu.dihedral is learning.data.transform (mirrors, then a quarter turn)."""
    import train_gpu

    from glacier_emulator.learning.data import Layout, transform

    nz = 3
    rng = np.random.default_rng(t)
    n = 6
    x = rng.standard_normal((1, n, n, 6)).astype("float32")
    x[..., 5] = 100.0
    y = rng.standard_normal((1, n, n, 2 * nz)).astype("float32")
    layout = Layout(labels="levels", levels=nz)
    # the package layout: 6 inputs, surface, ubar, vbar, then the levels
    fields = np.concatenate([x[0], np.zeros((n, n, 3), "float32"), y[0]], axis=-1)
    ref, _ = transform(fields, (100.0, 100.0), layout=layout, flip_x=bool(t & 1),
                       flip_y=bool(t & 2), rotations=t >> 2)
    gx, gy = train_gpu.dihedral(jnp.asarray(x), jnp.asarray(y), t, nz)
    np.testing.assert_allclose(np.asarray(gx)[0], ref[..., :6], atol=1e-6)
    np.testing.assert_allclose(np.asarray(gy)[0], ref[..., 9:], atol=1e-6)


def test_speed_scaling_matches_package():
    """train_gpu.speed_scale is learning.data.scale_speed, glacier by glacier."""
    import train_gpu

    from glacier_emulator.learning.data import Layout, scale_speed

    nz, n = 3, 5
    rng = np.random.default_rng(0)
    x = rng.uniform(0.1, 2.0, (2, n, n, 6)).astype("float32")
    y = rng.standard_normal((2, n, n, 2 * nz)).astype("float32")
    mu = np.array([0.5, 1.7], "float32")
    m = DEFAULT_PHYSICS.sliding_exponent
    gx, gy = train_gpu.speed_scale(jnp.asarray(x), jnp.asarray(y), jnp.asarray(mu), m)
    layout = Layout(labels="levels", levels=nz)
    for b in range(2):
        fields = np.concatenate([x[b], np.zeros((n, n, 3), "float32"), y[b]], axis=-1)
        ref = scale_speed(fields, float(mu[b]), layout=layout, sliding_exponent=m)
        np.testing.assert_allclose(np.asarray(gx)[b], ref[..., :6], rtol=1e-6)
        np.testing.assert_allclose(np.asarray(gy)[b], ref[..., 9:], rtol=1e-6)


def test_a_model_starts_from_a_widened_export(tmp_path):
    """``--models "p:filters=4,init=1;w:filters=6,init=W.npz;s:filters=4,prior=2"``: the first model starts
    from the job's --init export, the second from another export (here the first widened by
    training/widen.py, so the same function with more filters), the third from random weights
    with the prior on --init's architecture; a filter count that differs from its export's stops
    the job."""
    import runpy

    import export_weights
    import train_gpu

    from glacier_emulator.emulator import Emulator, ModelMetadata
    from glacier_emulator.models import GlacierUNet

    model = GlacierUNet(in_channels=6, out_channels=4, filters=4, depth=2, symmetrise="x",
                        velocity_scale=1.0, prior=PRIOR)
    Emulator(model, ModelMetadata.from_model(model, name="n")).save(tmp_path / "n.keras")
    widen = runpy.run_path(str(GPU_DIR.parent / "widen.py"))["main"]
    widen([str(tmp_path / "n.keras"), str(tmp_path / "w.keras"), "--filters", "6"])
    export_weights.main([str(tmp_path / "n.keras"), str(tmp_path / "n.npz")])
    export_weights.main([str(tmp_path / "w.keras"), str(tmp_path / "w.npz")])

    models = train_gpu.parse_models(f"p:filters=4,init=1;w:filters=6,init={tmp_path / 'w.npz'},lr=1e-4;"
                                    "s:filters=4,prior=2")
    assert models["w"]["lr"] == 1e-4 and models["s"]["init"] == ""
    configs, params = train_gpu.start_models(models, str(tmp_path / "n.npz"), seed=0, nz=2)
    assert (configs["p"]["filters"], configs["w"]["filters"], configs["s"]["filters"]) == (4, 6, 4)
    assert configs["s"]["prior"]["smoothing"] == 2.0 and configs["s"]["depth"] == 2

    x = ramp_inputs()
    ref = model(x).numpy()
    for name in ("p", "w"):
        got = np.asarray(unet_jax.apply(params[name], configs[name], jnp.asarray(x)))
        np.testing.assert_allclose(got, ref, atol=1e-4 * np.abs(ref).max())
    fresh = np.asarray(unet_jax.apply(params["s"], configs["s"], jnp.asarray(x)))
    assert np.abs(fresh - ref).max() > 1e-3 * np.abs(ref).max()

    with pytest.raises(SystemExit, match="has 6 filters"):
        train_gpu.start_models(train_gpu.parse_models(f"x:filters=8,init={tmp_path / 'w.npz'}"),
                               str(tmp_path / "n.npz"), seed=0, nz=2)
    with pytest.raises(SystemExit, match="no init weights"):
        train_gpu.start_models(train_gpu.parse_models("x:init=/nonexistent.npz"),
                               str(tmp_path / "n.npz"), seed=0, nz=2)


def test_packed_samples_are_what_training_reads(glaciers, tmp_path):
    """pack_samples.py writes the six inputs and the 3-D labels of CPU-labelled files as
    the GPU job builds its own (train_gpu.inputs_of) and as the files hold them: here two
    glaciers solved by the reference solver (``label_geometry``, what ``evolved_states.py``
    writes for each state); --float16 is within its rounding; train_gpu.add_packed appends them
    to the pool of their grid and refuses a grid the job has no pool for; files of two grid
    sizes are refused without writing."""
    import pack_samples
    import train_gpu
    import xarray as xr

    from glacier_emulator.learning.dataset import label_geometry
    from glacier_emulator.numerics.solver import SolverConfig

    folder = tmp_path / "states"
    folder.mkdir()
    loose = SolverConfig(tolerance=1e-6)  # the labels' accuracy is not the point
    for i, g in enumerate(glaciers):
        assert label_geometry(g, folder / f"sample_{i:05d}.nc", solver_config=loose)
    assert pack_samples.main([str(folder), "-o", str(tmp_path / "p.npz")]) == 0
    assert pack_samples.main([str(folder), "-o", str(tmp_path / "h.npz"), "--float16"]) == 0
    x, y, files = pack_samples.load_packed(tmp_path / "p.npz")
    assert x.shape == (2, 24, 24, 6) and y.shape == (2, 24, 24, 2 * DEFAULT_VERTICAL.levels)
    assert [Path(f).name for f in files] == ["sample_00000.nc", "sample_00001.nc"]
    for i, g in enumerate(glaciers):
        np.testing.assert_allclose(x[i], train_gpu.inputs_of(g), rtol=1e-6, atol=1e-6)
        with xr.open_dataset(folder / f"sample_{i:05d}.nc") as ds:
            ref = np.concatenate([ds["uvel"].values, ds["vvel"].values]).transpose(1, 2, 0)
        np.testing.assert_allclose(y[i], ref, rtol=1e-6)
        assert np.abs(y[i]).max() > 1.0
    xh, yh, _ = pack_samples.load_packed(tmp_path / "h.npz")
    np.testing.assert_allclose(yh, y, rtol=1e-3, atol=1e-3)
    assert (tmp_path / "h.npz").stat().st_size < (tmp_path / "p.npz").stat().st_size

    nz = DEFAULT_VERTICAL.levels
    pools = {(16, 16): (None, None), (24, 24): (x[:1], y[:1])}
    facts = train_gpu.add_packed(pools, [str(tmp_path / "p.npz")], nz)
    assert pools[(24, 24)][0].shape[0] == 3 and pools[(16, 16)] == (None, None)
    assert facts["samples"] == 2 and facts["per_grid"] == {"24x24": 2}
    np.testing.assert_array_equal(pools[(24, 24)][1][1:], y)
    pools = {(16, 16): (None, None), (24, 24): (None, None)}  # an empty pool takes them as they are
    train_gpu.add_packed(pools, [str(tmp_path / "h.npz")], nz)
    np.testing.assert_array_equal(pools[(24, 24)][0], xh)
    with pytest.raises(SystemExit, match="24 x 24 nodes; the job's grids are 16 x 16, 32 x 32"):
        train_gpu.add_packed({(16, 16): (None, None), (32, 32): (None, None)}, [str(tmp_path / "p.npz")], nz)
    with pytest.raises(SystemExit, match="label channels"):
        train_gpu.add_packed({(24, 24): (None, None)}, [str(tmp_path / "p.npz")], nz + 1)

    other = tmp_path / "other"
    other.mkdir()
    small = sample_geometry(0, seed=8, config=SyntheticConfig(grid=16))
    assert label_geometry(small, other / "sample_00000.nc", solver_config=loose)
    assert pack_samples.main([str(folder), str(other), "-o", str(tmp_path / "bad.npz")]) == 1
    assert not (tmp_path / "bad.npz").exists()


def test_states_packed_unlabelled_are_labelled_by_the_job_as_the_reference_solver_does(glaciers, tmp_path):
    """States of a forward run written without labels (``evolved_states.py --no-labels``) and
    glaciers of the generator, packed by ``pack_samples.py --geometries``, come back as the same
    glaciers (thickness, bed, sliding and rate factor fields, spacing, kind); the job's
    ``add_packed_geometries`` solves them with its batched solver into the pool of their grid:
    its inputs are those the job builds of the glaciers, its labels those of the reference
    solver. A grid the job has no pool for, files of two grid sizes and half precision are
    refused."""
    import pack_samples
    import train_gpu

    sys.path.insert(0, str(GPU_DIR.parent))
    import evolved_states
    from glacier_emulator.io import read_geometry, write_geometry
    from glacier_emulator.numerics.solver import solve

    # a state of a one-year shallow-ice run of a generator glacier, written unsolved
    source = tmp_path / "geo"
    source.mkdir()
    write_geometry(glaciers[0], source / "sample_00000.nc")
    states = tmp_path / "states"
    assert evolved_states.main([str(source), "-o", str(states), "--years", "1", "--model", "sia",
                                "--no-labels"]) == 0
    written = sorted(states.glob("*.nc"))
    assert [f.name for f in written] == ["sample_00000_year001.nc"]
    import xarray as xr

    with xr.open_dataset(written[0]) as ds:
        assert "uvel" not in ds and "ubar" not in ds
        assert float(ds.attrs["years_evolved"]) == 1.0 and ds.attrs["driven_by"] == "sia"
    state = read_geometry(written[0])
    assert not np.array_equal(state.thickness, glaciers[0].thickness)  # it moved

    folder = tmp_path / "unlabelled"
    folder.mkdir()
    write_geometry(glaciers[1], folder / "sample_00001.nc")  # varying sliding and rate factor
    (folder / "sample_00000.nc").write_bytes(written[0].read_bytes())
    assert pack_samples.main(["--geometries", str(folder), "-o", str(tmp_path / "g.npz")]) == 0
    geometries, files = pack_samples.load_geometries(tmp_path / "g.npz")
    assert [Path(f).name for f in files] == ["sample_00000.nc", "sample_00001.nc"]
    for got, want in zip(geometries, (state, glaciers[1])):
        assert got.dx == want.dx and got.shape == want.shape
        for name in ("thickness", "bed", "sliding_coefficient", "rate_factor"):
            np.testing.assert_allclose(np.broadcast_to(getattr(got, name), got.shape),
                                       np.broadcast_to(getattr(want, name), want.shape), rtol=1e-6)
    assert geometries[1].attrs["kind"] == glaciers[1].attrs["kind"]
    assert np.ptp(geometries[1].sliding_coefficient) > 0

    solvers = {}

    def job_solve(specs, grid, deadline, what, geometry_of=None):
        return train_gpu.label(specs, batch=2, iterations=(2000, 3000), solvers=solvers,
                               deadline=deadline, what=what, grid=grid, geometry_of=geometry_of)

    nz = DEFAULT_VERTICAL.levels
    pools = {(16, 16): (None, None), (24, 24): (None, None)}
    facts = train_gpu.add_packed_geometries(pools, [str(tmp_path / "g.npz")], job_solve, "test")
    assert facts["samples"] == 2 and facts["not_converged"] == 0 and facts["per_grid"] == {"24x24": 2}
    assert pools[(16, 16)] == (None, None)
    x, y = pools[(24, 24)]
    assert x.shape == (2, 24, 24, 6) and y.shape == (2, 24, 24, 2 * nz)
    for i, want in enumerate((state, glaciers[1])):
        np.testing.assert_allclose(x[i], train_gpu.inputs_of(want), rtol=1e-5, atol=1e-5)
        ref = solve(want).velocity
        err = relative_l2(y[i].transpose(2, 0, 1), np.concatenate([ref.u, ref.v]))
        assert err < 5e-3, f"glacier {i}: {err:.2e}"
        assert np.abs(ref.u).max() > 1.0

    with pytest.raises(SystemExit, match="24 x 24 nodes; the job's grids are 16 x 16, 32 x 32"):
        train_gpu.add_packed_geometries({(16, 16): (None, None), (32, 32): (None, None)},
                                        [str(tmp_path / "g.npz")], job_solve, "test")
    other = tmp_path / "other"
    other.mkdir()
    write_geometry(sample_geometry(0, seed=8, config=SyntheticConfig(grid=16)), other / "sample_00000.nc")
    assert pack_samples.main(["--geometries", str(folder), str(other), "-o", str(tmp_path / "bad.npz")]) == 1
    assert not (tmp_path / "bad.npz").exists()
    with pytest.raises(SystemExit):
        pack_samples.main(["--geometries", "--float16", str(folder), "-o", str(tmp_path / "h.npz")])


def test_wide_steps_and_training_specs_follow_the_package():
    """The job's wide steps are the package's (StreamConfig.is_wide_step); its training lists keep
    two standard glaciers to one default-physics glacier in every prefix."""
    import train_gpu

    from glacier_emulator.learning.data import StreamConfig

    config = StreamConfig(crop=(64, 64), wide_crop=(96, 96), wide_every=3)
    assert [train_gpu.is_wide_step(k, 3) for k in range(12)] == [config.is_wide_step(k) for k in range(12)]
    assert sum(train_gpu.is_wide_step(k, 4) for k in range(400)) == 100
    specs = train_gpu.split_specs(6, 3, (34, 35))
    assert specs[:3] == [("standard", 34, 0), ("default_physics", 35, 0), ("standard", 34, 1)]
    assert sorted(specs) == sorted([("standard", 34, i) for i in range(6)]
                                   + [("default_physics", 35, i) for i in range(3)])
    assert train_gpu.split_specs(0, 2, (30, 31)) == [("default_physics", 31, 0), ("default_physics", 31, 1)]


@pytest.mark.slow
def test_job_labels_and_trains_on_narrow_and_wide_glaciers(tmp_path):
    """The whole job on the CPU at toy size: glaciers of 16 x 16 nodes and wide ones of 24 x 24
    labelled by the batched solver (validation and training, seeds 32-37; the wide ones one at a
    time, --wide-label-batch), a packed file of the
    wide grid added to the wide pool, a model from scratch trained with every second step on the
    wide glaciers, and packed unlabelled glaciers (pack_samples.py --geometries) solved by the job
    for training and validation; the report counts them, validates both grids apart, and the best weights
    written are at least as good on the validation glaciers as the start; import_weights.py
    makes of them the Keras model with the same output and the run's facts in its metadata."""
    import json

    import train_gpu

    nz = DEFAULT_VERTICAL.levels
    geos = [sample_geometry(i, seed=9, config=SyntheticConfig(grid=24)) for i in range(2)]
    x = np.stack([train_gpu.inputs_of(g) for g in geos])
    np.savez(tmp_path / "wide.npz", x=x, y=np.zeros(x.shape[:3] + (2 * nz,), "float32"),
             files=np.array(json.dumps(["a.nc", "b.nc"])), zeta=np.asarray(DEFAULT_VERTICAL.zeta))
    import pack_samples

    from glacier_emulator.io import write_geometry

    for name, seeds in (("geo-train", (10, 11)), ("geo-val", (12,))):  # unlabelled, solved by the job
        (tmp_path / name).mkdir()
        for k, seed in enumerate(seeds):
            write_geometry(sample_geometry(k, seed=seed, config=SyntheticConfig(grid=16)),
                           tmp_path / name / f"sample_{k:05d}.nc")
        assert pack_samples.main(["--geometries", str(tmp_path / name), "-o", str(tmp_path / f"{name}.npz")]) == 0
    out = tmp_path / "out"
    train_gpu.main(["--out", str(out), "--grid", "16", "--wide-grid", "24", "--check-labels", "",
                    "--init", str(tmp_path / "none.npz"), "--batch", "2",
                    "--val-standard", "1", "--val-default", "1", "--val-wide-standard", "1",
                    "--val-wide-default", "1", "--train-standard", "2", "--train-default", "1",
                    "--train-wide-standard", "2", "--train-wide-default", "0",
                    "--wide-label-batch", "1", "--label-seconds", "1", "--label-wide-seconds", "120",
                    "--train-steps", "160",
                    "--train-batch", "2", "--wide-batch", "1", "--wide-every", "2",
                    "--validate-every", "100", "--extra-train", str(tmp_path / "wide.npz"),
                    "--extra-train-geometries", str(tmp_path / "geo-train.npz"),
                    "--extra-val-geometries", str(tmp_path / "geo-val.npz"),
                    "--models", "s:filters=4,prior=2,lr=1e-3"])
    report = json.loads((out / "report.json").read_text())
    assert report["train_glaciers"]["standard"] + report["train_glaciers"]["default_physics"] == 2
    assert report["train_glaciers_wide"] == {"standard": 2, "default_physics": 0}
    assert report["label_train_wide"]["batches"] == 2 and report["label_train"]["batches"] == 1
    assert report["extra_train"]["per_grid"] == {"24x24": 2}
    assert report["extra_train_geometries"]["per_grid"] == {"16x16": 2}
    assert report["extra_val_geometries"]["per_grid"] == {"16x16": 1}
    assert report["extra_train_geometries"]["batches"] == 1 and report["extra_train_geometries"]["seconds"] > 0
    assert report["train_samples"] == {"narrow": 2 + 2, "wide": 4}
    assert report["steps"] == 160 and report["wide_steps"] == 80 and report["train_wall_seconds"] > 0
    first, *_, last = report["history"]["s"]
    for key in ("standard_median", "default_median", "wide_median"):
        assert np.isfinite(first[1][key]) and np.isfinite(last[1][key])
    assert np.isfinite(first[1]["extra_median"])  # the labelled validation geometry
    assert report["best"]["s"]["val_all_median"] <= first[1]["all_median"]
    params, config = unet_jax.load_params(out / "s.npz")
    assert config["filters"] == 4 and config["prior"]["smoothing"] == 2.0

    # back on the CPU machine: import_weights.py builds the Keras model, records the run
    import import_weights

    from glacier_emulator.emulator import Emulator

    import_weights.main([str(out / "s.npz"), str(tmp_path / "s.keras"), "--name", "s",
                         "--version", "0.1.0", "--report", str(out / "report.json")])
    emulator = Emulator.load(tmp_path / "s.keras")
    x = np.stack([train_gpu.inputs_of(g) for g in geos])
    ref = np.asarray(unet_jax.apply(params, config, jnp.asarray(x)))
    np.testing.assert_allclose(emulator.model(x).numpy(), ref, atol=1e-4 * np.abs(ref).max())
    facts = emulator.metadata.training_data
    assert facts["count"] == 2 + 2 + 2 + 2 and facts["validation_count"] == 4 + 1
    assert facts["glaciers"]["packed geometries labelled on the GPU (pack_samples.py --geometries)"][
        "per_grid"] == {"16x16": 2}
    assert facts["glaciers"]["standard (seed 34, grid 24)"] == 2
    assert facts["glaciers"]["packed CPU-labelled samples (pack_samples.py)"]["per_grid"] == {"24x24": 2}
    assert "one step in 2: a batch of 1 whole 24 x 24 glaciers (80 steps)" in facts["crop"]
    assert facts["steps"] == 160 and facts["selected_step"] == report["best"]["s"]["step"]
