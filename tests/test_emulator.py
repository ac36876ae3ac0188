"""The Emulator: model files (no optimizer state, identical output in a fresh process), the numpy,
provider, xarray and TensorFlow calls, input validation, the pretrained registry, the CLI, and a
tiny supervised fit on solver output that proves the wiring."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import warnings
import zipfile

import h5py
import keras
import numpy as np
import pytest
import tensorflow as tf

import glacier_emulator.emulator as emulator_module
from glacier_emulator import DEFAULT_PHYSICS, Geometry, InputError, Velocity, VerticalDiscretisation
from glacier_emulator.cli import main
from glacier_emulator.emulator import (
    COARSEN_TARGET_CELLS,
    WIDE_ICE_CELLS,
    Emulator,
    ExtentWarning,
    ModelMetadata,
    NoPretrainedModelError,
    geometry_from_dataset,
    ice_extent_cells,
    input_channels,
    list_pretrained,
)
from glacier_emulator.fields import relative_l2
from glacier_emulator.models import build_unet

DX = 100.0


def glacier(n=16, dx=DX, h0=150.0, slope=0.1, shift=0.0, ny=None):
    """An elliptic ice cap on a bed inclined in x (analytic, ice-free margin)."""
    ny = n if ny is None else ny
    x = (np.arange(n) - (n - 1) / 2) * dx
    y = (np.arange(ny) - (ny - 1) / 2) * dx
    X, Y = np.meshgrid(x, y)
    r2 = ((X - shift) / (0.4 * n * dx)) ** 2 + (Y / (0.3 * ny * dx)) ** 2
    thickness = h0 * np.sqrt(np.clip(1.0 - r2, 0.0, None))
    return Geometry(thickness=thickness, bed=1000.0 - slope * X, dx=dx)


def make_emulator(out_channels=2, seed=0, name="tiny", **kwargs):
    keras.utils.set_random_seed(seed)
    kwargs.setdefault("velocity_scale", 50.0)
    model = build_unet(out_channels=out_channels, filters=8, depth=2, **kwargs)
    meta = ModelMetadata.from_model(
        model, name=name, grid_spacing_range=(50.0, 500.0), version="0.0.1",
        training_data={"description": "untrained test model"}, accuracy={"relative_l2_ubar": 0.5},
    )
    return Emulator(model, meta)


@pytest.fixture(scope="module")
def tiny():
    return make_emulator()


@pytest.fixture(scope="module")
def tiny_levels():
    return make_emulator(out_channels=8, seed=1, name="tiny-levels")


@pytest.fixture(scope="module")
def saved(tiny, tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "tiny.keras"
    tiny.save(path)
    return path


# ------------------------------------------------------------------------------ model files
def test_save_writes_model_and_metadata(saved):
    meta = json.loads(saved.with_suffix(".json").read_text())
    for key in ("format", "name", "version", "created", "package_version", "inputs", "outputs",
                "vertical", "grid_spacing", "input_ranges", "physics", "architecture",
                "training_data", "accuracy"):
        assert key in meta, key
    assert [i["name"] for i in meta["inputs"]] == [
        "thickness", "surface_slope_x", "surface_slope_y", "sliding_coefficient"]
    assert meta["inputs"][0]["units"] == "m" and meta["inputs"][0]["scale"] == 500.0
    assert meta["outputs"] == {"kind": "depth_averaged", "names": ["ubar", "vbar"],
                               "units": "m year-1", "scale": 50.0}
    assert meta["grid_spacing"] == {"min": 50.0, "max": 500.0, "units": "m"}
    assert meta["physics"]["rate_factor"] == 78.0
    assert ModelMetadata.from_dict(meta).to_dict() == meta


def test_metadata_round_trip_levels(tiny_levels):
    meta = tiny_levels.metadata
    assert meta.outputs == "levels" and meta.vertical.levels == 4
    assert ModelMetadata.from_dict(meta.to_dict()) == meta


def _archive_entries(path):
    with zipfile.ZipFile(path) as archive:
        config = json.loads(archive.read("config.json"))
        with archive.open("model.weights.h5") as handle, h5py.File(handle, "r") as h5:
            keys = []
            h5.visit(keys.append)
    return config, keys


def test_model_file_has_no_optimizer_state(tmp_path):
    em = make_emulator()
    em.model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse")
    x = em.prepare_inputs(thickness=glacier().thickness, surface=glacier().surface, dx=DX)
    em.model.fit(x, np.zeros(x.shape[:-1] + (2,), "float32"), epochs=1, verbose=0)
    compiled = tmp_path / "compiled.keras"
    em.model.save(compiled)
    config, keys = _archive_entries(compiled)
    assert config.get("compile_config") and any("optimizer" in k for k in keys)  # the check works
    clean = em.save(tmp_path / "clean.keras")
    config, keys = _archive_entries(clean)
    assert not config.get("compile_config")
    assert not any("optimizer" in k for k in keys)
    assert clean.stat().st_size < compiled.stat().st_size
    np.testing.assert_array_equal(Emulator.load(clean).tf_velocity(x).numpy(), em.tf_velocity(x).numpy())


def test_float16_storage_halves_the_file_and_keeps_the_prediction(tiny_levels, tmp_path):
    """float16 storage: the large kernels half precision, the small arrays (biases, the 1 x 1
    velocity head) float32; a smaller file whose prediction differs by the rounding alone (not
    zero, far below 1e-2); its metadata says so, and saving it again keeps it bit for bit. The
    depth-averaged model made from it still passes the check that it is that model's contraction."""
    from glacier_emulator.io.weights import FLOAT16_MIN_SIZE, store_weights, stored_dtypes

    full = tiny_levels.save(tmp_path / "f32.keras")
    half = tiny_levels.save(tmp_path / "f16.keras", weights_dtype="float16")
    assert sorted(os.listdir(tmp_path)) == ["f16.json", "f16.keras", "f32.json", "f32.keras"]
    f32, f16 = stored_dtypes(full), stored_dtypes(half)
    assert set(f32) == {"float32"} and f16["float16"] > f16["float32"] > 0
    assert sum(f16.values()) == sum(f32.values()) == tiny_levels.model.count_params()
    assert half.stat().st_size < 0.85 * full.stat().st_size
    shapes = [w.shape for w in tiny_levels.model.weights if np.prod(w.shape) >= FLOAT16_MIN_SIZE]
    assert f16["float16"] == sum(int(np.prod(s)) for s in shapes)
    loaded = Emulator.load(half)
    assert loaded.metadata.weights_dtype == "float16" and tiny_levels.metadata.weights_dtype == "float32"
    assert all(w.dtype == "float32" for w in loaded.model.weights)
    g = glacier(n=21, ny=19, slope=0.15)
    v32, v16 = tiny_levels.predict_geometry(g), loaded.predict_geometry(g)
    difference = relative_l2(np.stack([v16.ubar, v16.vbar]), np.stack([v32.ubar, v32.vbar]))
    assert 0 < difference < 1e-2
    again = loaded.save(tmp_path / "again.keras")  # the loaded storage by default
    assert stored_dtypes(again) == f16
    np.testing.assert_array_equal(Emulator.load(again).predict_geometry(g).u, v16.u)
    flat = loaded.depth_averaged(name="f16-ubar", levels_model="f16")
    flat.save(tmp_path / "f16-ubar.keras")
    flat = Emulator.load(tmp_path / "f16-ubar.keras")
    assert flat.metadata.weights_dtype == "float16" and flat.levels_source() is not None
    np.testing.assert_allclose(flat.predict_geometry(g).ubar, v16.ubar, atol=1e-5 * np.abs(v16.ubar).max())
    store_weights(again, "float32")  # back to float32: the size, not the rounding
    assert set(stored_dtypes(again)) == {"float32"}
    np.testing.assert_array_equal(Emulator.load(again).predict_geometry(g).u, v16.u)
    with pytest.raises(ValueError, match="weights_dtype"):
        ModelMetadata.from_model(tiny_levels.model, name="x", weights_dtype="bfloat16")
    (tmp_path / "broken.keras").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="broken.keras: not a .keras archive"):
        store_weights(tmp_path / "broken.keras")


def test_fresh_process_gives_identical_output(tiny, saved, tmp_path):
    g = glacier(n=37, ny=29)
    np.save(tmp_path / "thickness.npy", g.thickness)
    np.save(tmp_path / "surface.npy", g.surface)
    script = textwrap.dedent(
        f"""
        import numpy as np
        from glacier_emulator.emulator import Emulator
        em = Emulator.load({str(saved)!r})
        v = em.velocity(thickness=np.load({str(tmp_path / 'thickness.npy')!r}),
                        surface=np.load({str(tmp_path / 'surface.npy')!r}), dx={DX})
        np.save({str(tmp_path / 'u.npy')!r}, v.ubar)
        np.save({str(tmp_path / 'v.npy')!r}, v.vbar)
        """
    )
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    expected = tiny.velocity(thickness=g.thickness, surface=g.surface, dx=DX)
    np.testing.assert_array_equal(np.load(tmp_path / "u.npy"), expected.ubar)
    np.testing.assert_array_equal(np.load(tmp_path / "v.npy"), expected.vbar)
    assert np.abs(expected.ubar).max() > 0


def test_load_needs_metadata(saved, tmp_path):
    lone = tmp_path / "lone.keras"
    shutil.copy(saved, lone)
    with pytest.raises(FileNotFoundError, match="metadata"):
        Emulator.load(lone)
    with pytest.raises(FileNotFoundError, match="no such model"):
        Emulator.load(tmp_path / "missing.keras")


def test_metadata_must_match_model(tiny):
    meta = ModelMetadata.from_model(tiny.model, name="x", outputs="levels")
    with pytest.raises(ValueError, match="output channels"):
        Emulator(tiny.model, meta)


# ------------------------------------------------------------------------------ numpy calls
def test_velocity_single_and_batch_on_odd_grid(tiny):
    g1, g2 = glacier(n=53, ny=37), glacier(n=53, ny=37, shift=300.0, h0=200.0)
    v = tiny.velocity(thickness=g1.thickness, surface=g1.surface, dx=DX)
    assert isinstance(v, Velocity) and v.ubar.shape == (37, 53) and not v.has_levels
    batch = tiny.velocity(thickness=np.stack([g1.thickness, g2.thickness]),
                          surface=np.stack([g1.surface, g2.surface]), dx=DX, batch_size=1)
    assert isinstance(batch, list) and len(batch) == 2
    np.testing.assert_allclose(batch[0].ubar, v.ubar, rtol=1e-5, atol=1e-5 * np.abs(v.ubar).max())
    slopes = tiny.velocity(thickness=g1.thickness, surface_slope=g1.slopes(), dx=DX)
    np.testing.assert_array_equal(slopes.ubar, v.ubar)
    np.testing.assert_array_equal(tiny.predict_geometry(g1).ubar, v.ubar)
    np.testing.assert_array_equal(tiny(g1).vbar, v.vbar)


def test_levels_model_returns_3d_velocity(tiny_levels):
    g = glacier(n=21, ny=19)
    v = tiny_levels.predict_geometry(g)
    assert v.has_levels and v.u.shape == (4, 19, 21)
    np.testing.assert_allclose(v.zeta, VerticalDiscretisation(levels=4).zeta)
    w = VerticalDiscretisation(levels=4).depth_average_weights
    np.testing.assert_allclose(v.ubar, np.tensordot(w, v.u, axes=(0, 0)))


@pytest.mark.parametrize("prior", [False, True], ids=["plain", "prior"])
def test_depth_averaged_contraction_matches_the_3d_model(tiny_levels, tmp_path, prior):
    """The contracted 2-channel model gives the depth average of the 3-D one (random weights,
    so nothing is special about the answer), also with the local shallow-ice prior (its scale
    multiplies after the contracted layer), survives a save/load round trip, and a
    depth-averaged model cannot be contracted again."""
    if prior:
        tiny_levels = make_emulator(out_channels=8, seed=2, name="tiny-prior", velocity_scale=1.0,
                                    prior=dict(smoothing=1.0, rho_g=DEFAULT_PHYSICS.rho_g))
    g = glacier(n=21, ny=19, slope=0.15)
    full = tiny_levels.predict_geometry(g)
    flat = tiny_levels.depth_averaged(name="tiny-ubar", description="contracted")
    assert not flat.has_levels and flat.name == "tiny-ubar" and flat.model.out_channels == 2
    assert flat.model.count_params() < tiny_levels.model.count_params()
    v = flat.predict_geometry(g)
    assert v.u is None
    scale = np.max(np.abs(full.ubar)) + np.max(np.abs(full.vbar))
    assert scale > 0
    np.testing.assert_allclose(v.ubar, full.ubar, atol=1e-5 * scale)
    np.testing.assert_allclose(v.vbar, full.vbar, atol=1e-5 * scale)
    flat.save(tmp_path / "ubar.keras")
    again = Emulator.load(tmp_path / "ubar.keras")
    np.testing.assert_array_equal(again.predict_geometry(g).ubar, v.ubar)
    with pytest.raises(ValueError, match="already depth-averaged"):
        flat.depth_averaged()


def test_zero_thickness_gives_zero_velocity(tiny, tiny_levels):
    g = glacier(n=20)
    assert np.any(g.thickness == 0)
    for em in (tiny, tiny_levels):
        v = em.predict_geometry(g)
        off = g.thickness == 0
        assert np.all(v.ubar[off] == 0) and np.all(v.vbar[off] == 0)
        none = em.velocity(thickness=np.zeros((9, 11)), surface=np.zeros((9, 11)), dx=DX)
        assert np.all(none.ubar == 0) and np.all(none.vbar == 0)
        if none.has_levels:
            assert np.all(none.u == 0)


def test_mirror_in_x_flips_u(tiny):
    g = glacier(n=23, ny=17, shift=250.0)
    v = tiny.predict_geometry(g)
    gm = Geometry(thickness=g.thickness[:, ::-1], bed=g.bed[:, ::-1], dx=DX)
    vm = tiny.predict_geometry(gm)
    scale = np.abs(v.ubar).max()
    np.testing.assert_allclose(-vm.ubar[:, ::-1], v.ubar, atol=1e-5 * scale, rtol=0)
    np.testing.assert_allclose(vm.vbar[:, ::-1], v.vbar, atol=1e-5 * scale, rtol=0)


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(thickness=np.full((8, 8), np.nan)), "thickness contains NaN"),
        (dict(thickness=-np.ones((8, 8))), "thickness is negative"),
        (dict(thickness=np.ones(8)), r"thickness must be a \(ny, nx\) grid"),
        (dict(thickness=np.full((8, 8), 9000.0)), "plausible range"),
        (dict(surface=np.ones((8, 9))), "surface has shape"),
        (dict(surface=None), "give the surface"),
        (dict(dx=10.0), "outside the range 50 to 500 m"),
        (dict(dx=5000.0), "outside the range 50 to 500 m"),
        (dict(dy=200.0), "square cells"),
        (dict(dx=-1.0), "must be a positive number"),
        (dict(sliding_coefficient=np.full((8, 8), np.inf)), "sliding_coefficient contains NaN"),
        (dict(sliding_coefficient=4.6e4), "sliding_coefficient spans"),
        (dict(rate_factor=100.0), "trained with"),
        (dict(surface=np.arange(64.0).reshape(8, 8) * 1000.0), "surface_slope_x spans"),
    ],
)
def test_bad_inputs_are_rejected(tiny, change, message):
    args = dict(thickness=np.full((8, 8), 100.0), surface=np.full((8, 8), 1100.0), dx=DX)
    args.update(change)
    with pytest.raises(InputError, match=message):
        tiny.velocity(**args)


def test_default_rate_factor_is_accepted(tiny):
    v = tiny.velocity(thickness=np.full((8, 8), 100.0), surface=np.full((8, 8), 1100.0), dx=DX,
                      rate_factor=tiny.physics.rate_factor)
    assert np.all(np.isfinite(v.ubar))


# ------------------------------------------------------------------------------ TensorFlow
def test_tf_velocity_is_differentiable(tiny):
    g = glacier(n=16, shift=150.0)
    x = tiny.prepare_inputs(thickness=g.thickness, surface=g.surface, dx=DX)
    thickness = tf.Variable(x[..., 0])
    sliding = tf.Variable(tf.fill(thickness.shape, 0.03))
    with tf.GradientTape() as tape:
        uv = tiny.tf_velocity({"thickness": thickness, "surface_slope_x": x[..., 1],
                               "surface_slope_y": x[..., 2], "sliding_coefficient": sliding})
        loss = tf.reduce_sum(uv[..., 0] ** 2 + uv[..., 1] ** 2)
    d_thickness, d_sliding = tape.gradient(loss, [thickness, sliding])
    for grad in (d_thickness, d_sliding):
        assert np.all(np.isfinite(grad.numpy())) and np.abs(grad.numpy()).max() > 0
    x[..., 3] = 0.03
    np.testing.assert_allclose(tiny.tf_velocity(x).numpy(), uv.numpy(), rtol=1e-5, atol=1e-4)


def test_tf_velocity_rejects_bad_layouts(tiny):
    with pytest.raises(InputError, match="channels"):
        tiny.tf_velocity(tf.zeros((1, 8, 8, 3)))
    with pytest.raises(InputError, match="missing input 'surface_slope_y'"):
        tiny.tf_velocity({"thickness": tf.zeros((1, 8, 8)), "surface_slope_x": tf.zeros((1, 8, 8))})
    with pytest.raises(InputError, match="no input"):
        tiny.tf_velocity({"thickness": tf.zeros((1, 8, 8)), "surface_slope_x": 0.0,
                          "surface_slope_y": 0.0, "rate_factor": 50.0})


# ------------------------------------------------------------------------------ xarray
def test_predict_dataset(tiny):
    pytest.importorskip("glacier_emulator.io.netcdf")
    from glacier_emulator.io.netcdf import geometry_to_dataset

    g = glacier(n=19, ny=13)
    ds = geometry_to_dataset(g)
    assert geometry_from_dataset(ds).shape == (13, 19)
    out = tiny.predict_dataset(ds.isel(y=slice(None, None, -1)))  # descending y is handled
    expected = tiny.predict_geometry(g)
    np.testing.assert_allclose(out["ubar"].values, expected.ubar, rtol=1e-6, atol=1e-6)
    assert out["ubar"].attrs["units"] == "m year-1"


def test_geometry_from_dataset_names_missing_variables():
    xr = pytest.importorskip("xarray")
    ds = xr.Dataset({"foo": (("y", "x"), np.zeros((3, 3)))}, coords={"x": [0, 1, 2], "y": [0, 1, 2]})
    with pytest.raises(InputError, match="'thk'"):
        geometry_from_dataset(ds)


# ------------------------------------------------------------------------------ registry
@pytest.fixture
def empty_registry(tmp_path, monkeypatch):
    monkeypatch.setattr(emulator_module, "PRETRAINED_DIR", tmp_path)
    return tmp_path


def test_pretrained_raises_while_none_is_installed(empty_registry):
    assert list_pretrained() == []
    with pytest.raises(NoPretrainedModelError, match="No pretrained emulator is installed yet"):
        Emulator.pretrained()
    with pytest.raises(LookupError):
        Emulator.pretrained("anything")


def test_pretrained_finds_installed_models(empty_registry, saved, tiny):
    for suffix in (".keras", ".json"):
        shutil.copy(saved.with_suffix(suffix), empty_registry / f"tiny{suffix}")
    (empty_registry / "card.json").write_text('{"title": "a model card, not a model"}')
    entries = list_pretrained()
    assert [e["name"] for e in entries] == ["tiny"] and entries[0]["available"]
    em = Emulator.pretrained()
    assert em.name == "tiny" and Emulator.pretrained("tiny").name == "tiny"
    g = glacier()
    np.testing.assert_array_equal(em.predict_geometry(g).ubar, tiny.predict_geometry(g).ubar)
    (empty_registry / "tiny.keras").unlink()
    with pytest.raises(NoPretrainedModelError, match="without weights"):
        Emulator.pretrained()


# ------------------------------------------------------------------------------ CLI
def test_cli_without_pretrained_model_fails_with_one_line(empty_registry, tmp_path, capsys):
    code = main(["predict", str(tmp_path / "in.nc"), "-o", str(tmp_path / "out.nc")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "No pretrained emulator is installed yet" in err
    assert main(["models"]) == 0
    assert "No pretrained emulator is installed yet" in capsys.readouterr().out


def test_cli_predict_with_model_file(saved, tiny, tmp_path, capsys):
    netcdf = pytest.importorskip("glacier_emulator.io.netcdf")
    g = glacier(n=21, ny=15)
    netcdf.write_geometry(g, tmp_path / "in.nc")
    assert main(["predict", str(tmp_path / "in.nc"), "-o", str(tmp_path / "out.nc"), "--model", str(saved)]) == 0
    import xarray as xr

    with xr.open_dataset(tmp_path / "out.nc") as out:
        np.testing.assert_allclose(out["ubar"].values, tiny.predict_geometry(g).ubar, rtol=1e-6, atol=1e-6)
        assert out.attrs["emulator"] == "tiny"
    bad = Geometry(thickness=g.thickness, bed=g.bed, dx=5.0)
    netcdf.write_geometry(bad, tmp_path / "bad.nc")
    capsys.readouterr()
    assert main(["predict", str(tmp_path / "bad.nc"), "-o", str(tmp_path / "o.nc"), "--model", str(saved)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "bad.nc" in err and "outside the range" in err


def test_with_symmetrise_and_the_cli_option(saved, tiny, tmp_path):
    """A transposed glacier gets the transposed velocity from the "dihedral" emulator (not from
    the "x" one); the weights and metadata stay, and predict --symmetrise records the mode."""
    g = glacier(n=21, ny=15, shift=150.0)
    gt = Geometry(thickness=g.thickness.T, bed=g.bed.T, dx=g.dx)
    dihedral = tiny.with_symmetrise("dihedral")
    assert dihedral.model.symmetrise == "dihedral" and tiny.model.symmetrise == "x"
    assert dihedral.metadata.architecture["symmetrise"] == "dihedral"
    assert dihedral.name == tiny.name and dihedral.metadata.accuracy == tiny.metadata.accuracy
    a, b = dihedral.predict_geometry(g), dihedral.predict_geometry(gt)
    scale = np.abs(a.ubar).max()
    np.testing.assert_allclose(b.vbar.T, a.ubar, rtol=0, atol=1e-5 * scale)
    np.testing.assert_allclose(b.ubar.T, a.vbar, rtol=0, atol=1e-5 * scale)
    c, d = tiny.predict_geometry(g), tiny.predict_geometry(gt)
    assert np.abs(d.vbar.T - c.ubar).max() > 1e-3 * scale
    netcdf = pytest.importorskip("glacier_emulator.io.netcdf")
    netcdf.write_geometry(g, tmp_path / "in.nc")
    assert main(["predict", str(tmp_path / "in.nc"), "-o", str(tmp_path / "out.nc"), "--model", str(saved),
                 "--symmetrise", "dihedral"]) == 0
    import xarray as xr

    with xr.open_dataset(tmp_path / "out.nc") as out:
        np.testing.assert_allclose(out["ubar"].values, a.ubar, rtol=1e-6, atol=1e-6)
        assert out.attrs["emulator_symmetrise"] == "dihedral"


def test_cli_models_lists_installed(empty_registry, saved, capsys):
    for suffix in (".keras", ".json"):
        shutil.copy(saved.with_suffix(suffix), empty_registry / f"tiny{suffix}")
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "tiny" in out and "depth_averaged" in out and "50-500 m" in out and "relative_l2_ubar" in out
    assert "symmetrise=x" in out


# ------------------------------------------------------------------------------ training
@pytest.fixture(scope="module")
def solved_glaciers():
    from glacier_emulator.numerics.solver import SolverConfig, solve

    vertical = VerticalDiscretisation(levels=4)
    out = []
    for geometry in (glacier(), glacier(shift=200.0, h0=180.0)):
        result = solve(geometry, vertical=vertical, config=SolverConfig(tolerance=1e-6))
        assert result.converged, result.summary()
        out.append((geometry, result.velocity))
    return out


def test_tiny_supervised_fit_lowers_the_error(solved_glaciers):
    em = make_emulator(seed=3)
    x = np.stack([input_channels(g) for g, _ in solved_glaciers])
    target = np.stack([np.stack([v.ubar, v.vbar], -1) for _, v in solved_glaciers]).astype("float32")
    scale = float(np.abs(target).max())

    def error():
        predicted = em.tf_velocity(x).numpy()
        return relative_l2(predicted[..., 0], target[..., 0])

    before = error()
    optimizer = keras.optimizers.Adam(3e-3)

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(((em.tf_velocity(x, training=True) - target) / scale) ** 2)
        grads = tape.gradient(loss, em.model.trainable_variables)
        optimizer.apply_gradients(zip(grads, em.model.trainable_variables))
        return loss

    for _ in range(40):
        step()
    after = error()
    print(f"relative L2 of ubar: {before:.3f} -> {after:.3f}")
    assert after < 0.5 * before, (before, after)


def test_covers_spacing_is_the_rule_the_emulator_applies(tiny):
    """``ModelMetadata.covers_spacing`` (used by scripts/evaluate_model.py to leave glaciers out)
    says yes exactly where the emulator accepts the grid: the ends of the range included."""
    args = dict(thickness=np.full((8, 8), 100.0), surface=np.full((8, 8), 1100.0))
    for dx in (50.0, 120.0, 500.0, 49.9, 500.1):
        covered = tiny.metadata.covers_spacing(dx)
        assert covered == (50.0 <= dx <= 500.0)
        if covered:
            tiny.velocity(dx=dx, **args)
        else:
            with pytest.raises(InputError, match="outside the range"):
                tiny.velocity(dx=dx, **args)


def test_ice_extent_is_measured_in_cells():
    thickness = np.zeros((3, 30, 40))
    thickness[0, 5:9, 10:30] = 100.0  # 20 nodes along x: 19 cells
    thickness[1, 2:28, 3:5] = 50.0  # 26 nodes along y: 25 cells
    assert ice_extent_cells(thickness[0]) == 19
    assert ice_extent_cells(thickness) == 25
    assert ice_extent_cells(np.zeros((4, 4))) == 0


def test_ice_wider_than_wide_ice_cells_warns_once_per_emulator():
    """The error grows with the ice's extent in cells (WIDE_ICE_CELLS): one
    ExtentWarning per emulator when the ice spans more cells, none for a glacier within it
    (or one the model was trained on grids as large as)."""
    emulator = make_emulator(name="extent")
    n = int(WIDE_ICE_CELLS * 1.5)  # the ice spans 0.8 n cells
    big, small = glacier(n), glacier(40)
    assert ice_extent_cells(big.thickness) > WIDE_ICE_CELLS >= ice_extent_cells(small.thickness)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        emulator.predict_geometry(small)
    with pytest.warns(ExtentWarning, match=r"spans \d+ grid cells across, more than 128; emulator 'extent'"):
        emulator.predict_geometry(big)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        emulator.predict_geometry(big)  # once is enough
        trained_large = make_emulator(name="large")
        trained_large.metadata.training_data["grid_shapes"] = [f"{n + 10}x{n + 10}"]
        trained_large.predict_geometry(big)


def test_quoted_extent_errors_are_the_measured_ones():
    """EXAMPLE_EXTENT_ERRORS (quoted by the ExtentWarning, the --coarsen help and the model
    cards) holds the numbers of the last scripts/bench_extent.py run, made with the default model."""
    from pathlib import Path

    from glacier_emulator.constants import EXAMPLE_EXTENT_ERRORS as quoted, ExtentErrors
    from glacier_emulator.emulator import list_pretrained

    measured = json.loads((Path(__file__).parents[1] / "scripts" / "results" / "extent.json").read_text())
    default = [m for m in list_pretrained() if m.get("default")]
    assert len(default) == 1
    assert measured["model"] == quoted.model == f"{default[0]['name']} {default[0]['version']}"
    rows = {row["dx"]: row for row in measured["rows"]}
    assert [dx for dx, _ in quoted.rel_l2_ubar] == sorted(rows, reverse=True)
    for dx, error in quoted.rel_l2_ubar:
        assert error == pytest.approx(rows[dx]["rel_l2_ubar"], abs=5e-4)
    assert quoted.coarsen_auto_at_50m == pytest.approx(rows[50.0]["rel_l2_ubar_coarsen_auto"], abs=5e-4)
    example = ExtentErrors("m", ((200.0, 0.023), (100.0, 0.056), (50.0, 0.252)), 0.028)
    assert example.percentages() == "2 % off on a 200 m grid, 6 % at 100 m, 25 % at 50 m"


def test_cli_prints_the_extent_warning_as_one_line(saved, tmp_path):
    """In a process of its own: pytest records warnings instead of printing them."""
    netcdf = pytest.importorskip("glacier_emulator.io.netcdf")
    netcdf.write_geometry(glacier(int(WIDE_ICE_CELLS * 1.5)), tmp_path / "wide.nc")
    proc = subprocess.run(
        [sys.executable, "-m", "glacier_emulator.cli", "predict", str(tmp_path / "wide.nc"),
         "-o", str(tmp_path / "out.nc"), "--model", str(saved)],
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    err = [line for line in proc.stderr.splitlines() if "warning" in line]
    assert len(err) == 1 and err[0].startswith("glacier-emulator predict: warning: the ice spans"), err
    assert (tmp_path / "out.nc").is_file()


def test_coarsened_prediction_is_the_coarse_one_interpolated_back(tiny_levels):
    """``coarsen=2``: the velocity on every other node is the prediction for the subsampled
    glacier, the nodes between are bilinear means, ice-free nodes zero; the 3-D model's depth
    average matches its levels."""
    from glacier_emulator.numerics.solver import coarsen as halve

    g = glacier(33, ny=29)
    fine = tiny_levels.predict_geometry(g, coarsen=2)
    coarse = tiny_levels.predict_geometry(halve(g), coarsen=None)
    ice = g.thickness > 0
    assert fine.u.shape == (tiny_levels.metadata.vertical.levels,) + g.shape
    np.testing.assert_allclose(fine.u[:, ::2, ::2][:, ice[::2, ::2]], coarse.u[:, ice[::2, ::2]], rtol=1e-6, atol=1e-9)
    assert np.all(fine.ubar[~ice] == 0) and np.abs(fine.ubar[ice]).max() > 0
    inner = ice[1:-1:2, ::2] & ice[:-2:2, ::2] & ice[2::2, ::2]  # odd rows between two ice nodes
    mean = 0.5 * (fine.ubar[:-2:2, ::2] + fine.ubar[2::2, ::2])
    np.testing.assert_allclose(fine.ubar[1:-1:2, ::2][inner], mean[inner], rtol=1e-6, atol=1e-9)


def test_coarsen_auto_acts_only_on_wide_ice_and_stays_in_the_spacing_range(tiny):
    narrow = glacier(60)  # ice about 48 cells across
    wide = glacier(int(WIDE_ICE_CELLS * 2.5), dx=50.0)  # about 256 cells at 50 m
    assert tiny.coarsening_levels(narrow, "auto") == 0
    levels = tiny.coarsening_levels(wide, "auto")
    assert levels == 3 and ice_extent_cells(wide.thickness) / 2 ** levels <= COARSEN_TARGET_CELLS
    near_top = Geometry(thickness=wide.thickness, bed=wide.bed, dx=300.0)  # range 50-500 m
    assert tiny.coarsening_levels(near_top, "auto") == 0  # 600 m would leave it
    assert tiny.coarsening_levels(wide, 4) == 2 and tiny.coarsening_levels(wide, None) == 0
    for bad in (3, "coarse", 0, True):
        with pytest.raises(ValueError, match="coarsen"):
            tiny.coarsening_levels(wide, bad)
    auto = tiny.with_coarsen("auto")
    assert auto.coarsen == "auto" and tiny.coarsen is None and auto.model is tiny.model
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no ExtentWarning: the coarse grid is within the extent
        v = auto.predict_geometry(wide)
    assert v.ubar.shape == wide.shape
    with pytest.raises(ValueError, match="coarsen"):
        tiny.with_coarsen(6)


def test_cli_coarsen_option(saved, tmp_path):
    import xarray as xr

    netcdf = pytest.importorskip("glacier_emulator.io.netcdf")
    netcdf.write_geometry(glacier(40), tmp_path / "in.nc")
    args = ["predict", str(tmp_path / "in.nc"), "--model", str(saved)]
    assert main(args + ["-o", str(tmp_path / "c2.nc"), "--coarsen", "2"]) == 0
    assert main(args + ["-o", str(tmp_path / "c1.nc")]) == 0
    with xr.open_dataset(tmp_path / "c2.nc") as c2, xr.open_dataset(tmp_path / "c1.nc") as c1:
        assert c2.attrs["emulator_coarsening"] == 2 and c1.attrs["emulator_coarsening"] == 1
        assert not np.allclose(c2["ubar"].values, c1["ubar"].values)


# ------------------------------------------------------------------- solver refinement
@pytest.mark.parametrize("fixture", ["tiny_levels", "tiny"])
def test_refine_converges_to_the_reference_solve(fixture, request):
    """``refine`` runs the reference solver from the network's prediction: 0 iterations change
    nothing, each budget lowers the error of even an untrained network, and enough iterations
    reach the converged solve (the energy has one minimiser). The 2-channel model starts from
    the shallow-ice vertical profile of its depth average."""
    from glacier_emulator.numerics.solver import SolverConfig, solve

    emulator = request.getfixturevalue(fixture)
    g = glacier(n=21, ny=15)
    ref = solve(g, physics=emulator.physics, vertical=emulator.vertical,
                config=SolverConfig(tolerance=1e-10)).velocity
    ice = g.thickness > 0

    def error(v):
        return relative_l2(np.stack([v.ubar, v.vbar]), np.stack([ref.ubar, ref.vbar]), ice)

    raw = emulator.predict_geometry(g)
    np.testing.assert_array_equal(emulator.predict_geometry(g, refine=0).ubar, raw.ubar)
    errors = [error(raw)] + [error(emulator.predict_geometry(g, refine=k)) for k in (10, 3000)]
    assert errors[0] > 0.1  # untrained: far from the solution
    assert errors[1] < 0.5 * errors[0]
    assert errors[2] < 1e-3
    refined = emulator.with_refine(10)
    assert refined.refine == 10 and emulator.refine == 0 and refined.model is emulator.model
    assert error(refined.predict_geometry(g)) == pytest.approx(errors[1], rel=1e-9)
    assert refined.predict_geometry(g).u is not None  # the solver's levels


def test_depth_averaged_model_refines_from_its_3d_models_levels(tiny_levels, tmp_path):
    """A model made by ``depth_averaged`` names its 3-D model (``levels_model``) and refinement
    starts from that model's levels: the refined velocity is the 3-D model's refined velocity,
    not the one from the shallow-ice profile of the same depth average. The link survives a save
    and load of both files in one folder; without the 3-D file it warns once and falls back to
    the shallow-ice profile; a 3-D file with other weights under that name is refused."""
    g = glacier(n=21, ny=15, slope=0.15)
    flat = tiny_levels.depth_averaged(name="tiny-ubar")
    assert flat.metadata.levels_model == "tiny-levels" and flat.levels_source() is tiny_levels
    assert tiny_levels.levels_source() is tiny_levels
    unlinked = tiny_levels.depth_averaged(name="tiny-ubar", levels_model="")
    assert unlinked.levels_source() is None
    deep = tiny_levels.predict_geometry(g, refine=5)
    linked, shallow = flat.predict_geometry(g, refine=5), unlinked.predict_geometry(g, refine=5)
    np.testing.assert_array_equal(linked.u, deep.u)
    assert np.max(np.abs(shallow.u - deep.u)) > 1e-3 * np.max(np.abs(deep.u))
    # the start: the 3-D prediction, whose depth average is the flat model's output
    start = flat.refine_initial(g)
    np.testing.assert_array_equal(start.u, tiny_levels.predict_geometry(g).u)
    scale = np.max(np.abs(start.ubar))
    np.testing.assert_allclose(start.ubar, flat.predict_geometry(g).ubar, atol=1e-5 * scale)
    # symmetry averaging follows the depth-averaged model
    assert flat.with_symmetrise("x").levels_source().model.symmetrise == "x"

    # files: both in one folder
    folder = tmp_path / "both"
    tiny_levels.save(folder / "tiny-levels.keras")
    flat.save(folder / "tiny-ubar.keras")
    assert json.loads((folder / "tiny-ubar.json").read_text())["levels_model"] == "tiny-levels"
    loaded = Emulator.load(folder / "tiny-ubar.keras")
    assert loaded.levels_source().source_path == folder / "tiny-levels.keras"
    np.testing.assert_allclose(loaded.predict_geometry(g, refine=5).u, deep.u, rtol=1e-6, atol=1e-6 * scale)
    # the depth-averaged file alone: one warning, the shallow-ice start
    alone = tmp_path / "alone"
    alone.mkdir()
    for suffix in (".keras", ".json"):
        shutil.copy(folder / f"tiny-ubar{suffix}", alone)
    lonely = Emulator.load(alone / "tiny-ubar.keras")
    with pytest.warns(UserWarning, match="'tiny-levels' that 'tiny-ubar' was made from is not there"):
        v = lonely.predict_geometry(g, refine=5)
    np.testing.assert_allclose(v.u, shallow.u, rtol=1e-6, atol=1e-6 * scale)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        lonely.predict_geometry(g, refine=1)  # warned once
    # another 3-D network under the linked name is refused
    impostor = tmp_path / "impostor"
    make_emulator(out_channels=8, seed=7, name="tiny-levels").save(impostor / "tiny-levels.keras")
    for suffix in (".keras", ".json"):
        shutil.copy(folder / f"tiny-ubar{suffix}", impostor)
    with pytest.raises(InputError, match="not the 3-D model that 'tiny-ubar' was made from.*weights"):
        Emulator.load(impostor / "tiny-ubar.keras").predict_geometry(g, refine=1)
    with pytest.raises(ValueError, match="levels_model"):
        ModelMetadata(name="x", outputs="levels", levels_model="y")


def test_refinement_start_follows_the_number_of_iterations(tiny_levels):
    """``refine_from="auto"``: at most REFINE_LEVELS_MAX iterations of a single prediction start
    from the levels, more (and every step of a forward run) from the shallow-ice profile of the
    network's depth average, for a 3-D model and its depth-averaged twin alike; ``start``
    overrides it; the start is recorded in words."""
    from glacier_emulator.constants import REFINE_LEVELS_MAX

    flat = tiny_levels.depth_averaged(name="tiny-ubar")
    few, many = REFINE_LEVELS_MAX, REFINE_LEVELS_MAX + 1
    for em in (tiny_levels, flat):
        assert em.refine_source(few) is tiny_levels
        assert em.refine_source(many) is None and em.refine_source(few, forward=True) is None
        assert em.with_refine(many, start="levels").refine_source().model is tiny_levels.model
        assert em.with_refine(few, start="shallow-ice").refine_source() is None
        assert em.with_refine(few).refine_start_description() == "levels of tiny-levels 0.0.1"
        assert em.with_refine(many).refine_start_description() == "shallow-ice profile"
    g = glacier(n=21, ny=15, slope=0.15)
    start = tiny_levels.refine_initial(g, iterations=many)
    net = tiny_levels.predict_geometry(g)
    scale = np.max(np.abs(net.ubar))
    np.testing.assert_allclose(start.ubar, net.ubar, atol=1e-6 * scale)  # the same depth average
    assert np.max(np.abs(start.u - net.u)) > 1e-3 * scale  # another profile
    np.testing.assert_allclose(flat.refine_initial(g, iterations=many).u, start.u, atol=1e-5 * scale)
    np.testing.assert_array_equal(tiny_levels.refine_initial(g, iterations=few).u, net.u)
    with pytest.raises(ValueError, match="start must be one of"):
        tiny_levels.with_refine(5, start="sia")


def test_emulator_provider_refines_with_the_memory_and_correction_of_the_previous_step(tiny_levels):
    """In a forward run an emulator with ``refine`` > 0 is refined by EmulatorProvider with the
    L-BFGS memory of the previous time step (as SolverProvider does) and, with
    ``carry_correction``, from the network's prediction plus the previous step's correction: the
    first step is the emulator's own ``predict_geometry``, and over the following slowly changing
    glaciers the velocity is closer to the converged solve with the memory than without, and
    closer still with the correction carried too; ``reset`` forgets both. Each refinement starts
    from the shallow-ice profile of the network's depth average (``refine_from="auto"`` in a
    forward run), or from the levels when asked (``with_refine(N, start="levels")``)."""
    from glacier_emulator.dynamics.providers import EmulatorProvider
    from glacier_emulator.numerics.solver import SolverConfig, solve

    refined = tiny_levels.with_refine(10)
    profile = tiny_levels.with_refine(10, start="shallow-ice")  # what a forward run starts from
    both = EmulatorProvider(refined, carry_correction=True)
    memory = EmulatorProvider(refined)  # the default: the memory, no correction
    neither = EmulatorProvider(refined, reuse_memory=False, carry_correction=False)
    providers = (both, memory, neither)
    base = glacier(n=21, ny=15)
    ice = base.thickness > 0
    gaps = []
    for k in range(4):
        g = Geometry(thickness=base.thickness * (1 + 0.003 * k), bed=base.bed, dx=base.dx)
        ref = solve(g, physics=refined.physics, vertical=refined.vertical,
                    config=SolverConfig(tolerance=1e-10)).velocity
        out = [p.velocity(g) for p in providers]
        if k == 0:
            np.testing.assert_allclose(out[0].ubar, profile.predict_geometry(g).ubar, rtol=1e-6, atol=1e-6)
            assert np.max(np.abs(out[0].ubar - refined.predict_geometry(g).ubar)) > 1e-3 * np.max(np.abs(out[0].ubar))
        gaps.append([relative_l2(np.stack([v.ubar, v.vbar]), np.stack([ref.ubar, ref.vbar]), ice)
                     for v in out])
    gaps = np.array(gaps)
    np.testing.assert_allclose(gaps[0], gaps[0, 0], rtol=1e-6)
    assert np.all(gaps[1:, 1] < gaps[1:, 2])  # the memory helps
    assert np.all(gaps[1:, 0] < 0.7 * gaps[1:, 1])  # the carried correction helps more
    assert both.last_result.memory is not None and both.last_result.iterations <= 10
    du, dv = both.correction
    assert du.shape == (refined.vertical.levels,) + base.shape
    assert np.all(du[:, ~ice] == 0) and np.all(dv[:, ~ice] == 0)
    both.reset()
    assert both.correction is None and both.last_result is None
    np.testing.assert_allclose(both.velocity(base).ubar, profile.predict_geometry(base).ubar,
                               rtol=1e-6, atol=1e-6)
    assert both.describe()["emulator_refine_start"] == "shallow-ice profile"
    levels = EmulatorProvider(tiny_levels.with_refine(10, start="levels"))
    np.testing.assert_allclose(levels.velocity(base).ubar, refined.predict_geometry(base).ubar,
                               rtol=1e-6, atol=1e-6)
    assert levels.describe()["emulator_refine_start"] == "levels of tiny-levels 0.0.1"
    # without refine the provider is the network's prediction, as before
    plain = EmulatorProvider(tiny_levels)
    np.testing.assert_array_equal(plain.velocity(base).ubar, tiny_levels.predict_geometry(base).ubar)


@pytest.mark.parametrize("bad", [-1, 2.5, True, "10"])
def test_refine_must_be_a_whole_number_of_iterations(tiny, bad):
    with pytest.raises(ValueError, match="refine must be a whole number"):
        tiny.with_refine(bad)
    with pytest.raises(ValueError, match="refine must be a whole number"):
        tiny.predict_geometry(glacier(), refine=bad)


def test_cli_refine_option(saved, tiny, tmp_path, capsys):
    """predict --refine N records N in the output; a negative N is one line and exit code 2."""
    import xarray as xr

    netcdf = pytest.importorskip("glacier_emulator.io.netcdf")
    g = glacier(n=21, ny=15)
    netcdf.write_geometry(g, tmp_path / "in.nc")
    args = ["predict", str(tmp_path / "in.nc"), "--model", str(saved)]
    assert main(args + ["-o", str(tmp_path / "r.nc"), "--refine", "10"]) == 0
    with xr.open_dataset(tmp_path / "r.nc") as out:
        assert int(out.attrs["emulator_refine_iterations"]) == 10
        expected = tiny.predict_geometry(g, refine=10)
        np.testing.assert_allclose(out["ubar"].values, expected.ubar, rtol=1e-6,
                                   atol=1e-6 * np.abs(expected.ubar).max())
    capsys.readouterr()
    assert main(args + ["-o", str(tmp_path / "bad.nc"), "--refine", "-1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--refine" in err[0]
    assert not (tmp_path / "bad.nc").exists()
