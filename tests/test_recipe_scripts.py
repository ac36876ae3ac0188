"""The scripts that make the shipped models' numbers and files, on a tiny model and two solved
glaciers: ``training/set_symmetrise.py``, ``training/set_spacing_range.py``,
``training/average_weights.py``, ``training/make_depth_averaged.py``, ``training/widen.py`` and
``scripts/evaluate_model.py`` (the model card's held-out accuracy) and ``scripts/compare_models.py``
(the decision rules' checks)."""
from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
import xarray as xr

from glacier_emulator import Geometry, VerticalDiscretisation
from glacier_emulator.emulator import Emulator, ModelMetadata
from glacier_emulator.fields import relative_l2
from glacier_emulator.io import read_geometry
from glacier_emulator.io.netcdf import write_geometry, write_velocity
from glacier_emulator.models import build_unet
from glacier_emulator.numerics.solver import solve

ROOT = Path(__file__).resolve().parents[1]
VERTICAL = VerticalDiscretisation(levels=4)


def run_script(path: Path, args, monkeypatch):
    """Run a script's ``__main__`` in this process (TensorFlow is imported once)."""
    monkeypatch.setattr(sys, "argv", [str(path)] + [str(a) for a in args])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(str(path), run_name="__main__")
        raise SystemExit(0)  # scripts whose main returns None fall through
    assert exit_info.value.code in (0, None)


def cap(n: int, shift: float, dx: float = 100.0) -> Geometry:
    """An elongated ice cap on an inclined bed, off-centre so that no symmetry maps it to itself."""
    x = (np.arange(n) - (n - 1) / 2) * dx
    y = (np.arange(n + 3) - (n + 2) / 2) * dx
    X, Y = np.meshgrid(x, y)
    r2 = ((X - shift) / (0.42 * n * dx)) ** 2 + (Y / (0.3 * n * dx)) ** 2
    thickness = 160.0 * np.sqrt(np.clip(1.0 - r2, 0.0, None))
    return Geometry(thickness=thickness, bed=1200.0 - 0.08 * X + 0.03 * Y, dx=dx)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A tiny 3-D emulator (4 levels, with the flow prior) and two solved glaciers."""
    root = tmp_path_factory.mktemp("recipe")
    keras.utils.set_random_seed(5)
    model = build_unet(in_channels=6, out_channels=8, filters=8, depth=2, velocity_scale=1.0,
                       prior=dict(smoothing=1.0))
    meta = ModelMetadata.from_model(model, name="tiny3d", vertical=VERTICAL, grid_spacing_range=(50.0, 200.0),
                                    version="0.0.1", training_data={"description": "untrained"})
    Emulator(model, meta).save(root / "tiny3d.keras")
    (root / "test").mkdir()
    for i, shift in enumerate((150.0, -250.0)):
        geometry = cap(14, shift)
        result = solve(geometry, vertical=VERTICAL)
        assert result.converged
        write_velocity(result.velocity, geometry, root / "test" / f"sample_{i:05d}.nc",
                       attrs={"solver_converged": 1, "kind": "icecap"})
    return root


def test_set_symmetrise_writes_the_same_weights_with_the_new_mode(workdir, monkeypatch):
    run_script(ROOT / "training" / "set_symmetrise.py",
               [workdir / "tiny3d.keras", workdir / "tiny3d-d.keras", "--symmetrise", "dihedral",
                "--version", "0.0.2"], monkeypatch)
    source, out = Emulator.load(workdir / "tiny3d.keras"), Emulator.load(workdir / "tiny3d-d.keras")
    assert out.model.symmetrise == "dihedral" and source.model.symmetrise == "x"
    assert "dihedral" in out.metadata.training_data["symmetrise"]
    assert out.metadata.version == "0.0.2" and out.name == source.name
    geometry = read_geometry(workdir / "test" / "sample_00000.nc")
    a = out.predict_geometry(geometry)
    b = source.with_symmetrise("dihedral").predict_geometry(geometry)
    np.testing.assert_allclose(a.u, b.u, rtol=1e-6, atol=1e-6)


def test_set_symmetrise_can_ship_the_network_under_another_name(workdir, monkeypatch):
    """velocity3d-prior-large: a network trained as velocity3d-prior, shipped under its own name
    and description (its card's recipe: test_model_card_names_the_recipe_of_the_models_version)."""
    run_script(ROOT / "training" / "set_symmetrise.py",
               [workdir / "tiny3d.keras", workdir / "tiny3d-large.keras", "--symmetrise", "dihedral",
                "--name", "tiny3d-large", "--description", "the opt-in one"], monkeypatch)
    source, out = Emulator.load(workdir / "tiny3d.keras"), Emulator.load(workdir / "tiny3d-large.keras")
    assert out.name == "tiny3d-large" and out.metadata.description == "the opt-in one"
    assert source.name != out.name and out.metadata.version == source.metadata.version
    geometry = read_geometry(workdir / "test" / "sample_00000.nc")
    np.testing.assert_allclose(out.predict_geometry(geometry).u,
                               source.with_symmetrise("dihedral").predict_geometry(geometry).u, rtol=1e-6, atol=1e-6)


def test_set_symmetrise_can_store_the_weights_as_float16(workdir, monkeypatch):
    run_script(ROOT / "training" / "set_symmetrise.py",
               [workdir / "tiny3d.keras", workdir / "tiny3d-f16.keras", "--symmetrise", "x",
                "--weights-dtype", "float16"], monkeypatch)
    source, out = Emulator.load(workdir / "tiny3d.keras"), Emulator.load(workdir / "tiny3d-f16.keras")
    assert source.metadata.weights_dtype == "float32" and out.metadata.weights_dtype == "float16"
    assert (workdir / "tiny3d-f16.keras").stat().st_size < (workdir / "tiny3d.keras").stat().st_size
    geometry = read_geometry(workdir / "test" / "sample_00000.nc")
    a, b = out.predict_geometry(geometry), source.predict_geometry(geometry)
    assert 0 < relative_l2(a.u, b.u) < 1e-2


def test_weights_precision_measures_the_float16_difference(workdir, monkeypatch):
    """scripts/weights_precision.py: the difference of the stored model's prediction from the
    float32 one, as a direct computation gives it, and both models' errors against the labels."""
    source = Emulator.load(workdir / "tiny3d.keras")
    source.save(workdir / "precision-f16.keras", weights_dtype="float16")
    out = workdir / "precision.json"
    run_script(ROOT / "scripts" / "weights_precision.py",
               [workdir / "tiny3d.keras", workdir / "precision-f16.keras", "--set",
                f"caps={workdir / 'test'}", "--json", out], monkeypatch)
    caps = json.loads(out.read_text())["caps"]
    stored = Emulator.load(workdir / "precision-f16.keras")
    direct = []
    for path in sorted((workdir / "test").glob("*.nc")):
        g = read_geometry(path)
        a, b = source.predict_geometry(g), stored.predict_geometry(g)
        direct.append(relative_l2(np.stack([b.ubar, b.vbar]), np.stack([a.ubar, a.vbar]), g.thickness > 0))
    assert caps["n"] == 2 and [r["difference"] for r in caps["per_file"]] == pytest.approx(direct, rel=1e-4)
    assert 0 < caps["difference_max"] < 1e-2
    assert caps["error_stored_median"] == pytest.approx(caps["error_reference_median"], rel=1e-2)


def test_set_spacing_range_widens_the_range_and_keeps_the_weights(workdir, monkeypatch):
    source = Emulator.load(workdir / "tiny3d.keras")
    narrow = Emulator(source.model, ModelMetadata.from_model(
        source.model, name="tiny3d", vertical=VERTICAL, grid_spacing_range=(50.3, 199.7),
        training_data={"description": "untrained"}))
    narrow.save(workdir / "spacing-narrow.keras")
    script = ROOT / "training" / "set_spacing_range.py"
    run_script(script, [workdir / "spacing-narrow.keras", workdir / "spacing-wide.keras", "--range", 50, 200], monkeypatch)
    wide = Emulator.load(workdir / "spacing-wide.keras")
    assert wide.metadata.grid_spacing_range == (50.0, 200.0) and wide.metadata.covers_spacing(200.0)
    assert not narrow.metadata.covers_spacing(200.0)
    assert wide.metadata.training_data["grid_spacings_seen"]["max"] == 199.7
    geometry = read_geometry(workdir / "test" / "sample_00000.nc")
    np.testing.assert_array_equal(wide.predict_geometry(geometry).u, narrow.predict_geometry(geometry).u)
    # a range is only widened: one that leaves out spacings the model was trained on is refused
    monkeypatch.setattr(sys, "argv", [str(script), str(workdir / "spacing-narrow.keras"),
                                      str(workdir / "spacing-moved.keras"), "--range", "60", "200"])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(str(script), run_name="__main__")
    assert exit_info.value.code == 2 and not (workdir / "spacing-moved.keras").exists()


def test_average_weights_is_the_mean_of_the_weights(workdir, monkeypatch):
    source = Emulator.load(workdir / "tiny3d.keras")
    other = Emulator.load(workdir / "tiny3d.keras")
    rng = np.random.default_rng(0)
    other.model.set_weights([w + rng.normal(0, 0.01, w.shape).astype(w.dtype) for w in other.model.get_weights()])
    other.save(workdir / "average-other.keras")
    script = ROOT / "training" / "average_weights.py"
    run_script(script, [workdir / "tiny3d.keras", workdir / "average-other.keras", "-o", workdir / "average-mean.keras",
                        "--weights", 3, 1, "--version", "0.0.9"], monkeypatch)
    mean = Emulator.load(workdir / "average-mean.keras")
    for m, a, b in zip(mean.model.get_weights(), source.model.get_weights(), other.model.get_weights()):
        np.testing.assert_allclose(m, 0.75 * a + 0.25 * b, rtol=1e-6, atol=1e-7)
    assert mean.metadata.version == "0.0.9"
    assert mean.metadata.training_data["weight_average"]["weights"] == [0.75, 0.25]
    # models of another architecture are refused
    wider = build_unet(in_channels=6, out_channels=8, filters=12, depth=2, velocity_scale=1.0,
                       prior=dict(smoothing=1.0))
    Emulator(wider, ModelMetadata.from_model(wider, name="wider", vertical=VERTICAL,
                                             grid_spacing_range=(50.0, 200.0))).save(workdir / "average-wider.keras")
    monkeypatch.setattr(sys, "argv", [str(script), str(workdir / "tiny3d.keras"), str(workdir / "average-wider.keras"),
                                      "-o", str(workdir / "average-bad.keras")])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(str(script), run_name="__main__")
    assert exit_info.value.code == 2 and not (workdir / "average-bad.keras").exists()


def test_make_depth_averaged_keeps_the_mode_and_the_depth_average(workdir, monkeypatch):
    run_script(ROOT / "training" / "make_depth_averaged.py",
               [workdir / "tiny3d-d.keras", workdir / "tinyubar.keras", "--name", "tinyubar"], monkeypatch)
    flat, full = Emulator.load(workdir / "tinyubar.keras"), Emulator.load(workdir / "tiny3d-d.keras")
    assert flat.model.symmetrise == "dihedral" and not flat.has_levels
    geometry = read_geometry(workdir / "test" / "sample_00001.nc")
    a, b = flat.predict_geometry(geometry), full.predict_geometry(geometry)
    np.testing.assert_allclose(a.ubar, b.ubar, rtol=0, atol=1e-4 * np.abs(b.ubar).max())


def test_evaluate_model_measures_the_card_numbers(workdir, monkeypatch, capsys):
    model = workdir / "tiny3d-d.keras"
    card = workdir / "tiny3d-d.md"
    run_script(ROOT / "scripts" / "evaluate_model.py",
               [model, "--test", workdir / "test", "--card", card, "--compare-symmetrise", "x",
                "--extra-test", f"again={workdir / 'test'}"], monkeypatch)
    held = json.loads(model.with_suffix(".json").read_text())["accuracy"]["held_out"]
    assert held["symmetrise"] == "dihedral" and held["test_files"] == 2
    emulator = Emulator.load(model)
    errors = {}
    for mode, em in (("dihedral", emulator), ("x", emulator.with_symmetrise("x"))):
        errors[mode] = []
        for path in sorted((workdir / "test").glob("*.nc")):
            geometry = read_geometry(path)
            with xr.open_dataset(path) as ds:
                ref = np.stack([ds["ubar"].values, ds["vbar"].values])
            v = em.predict_geometry(geometry)
            errors[mode].append(relative_l2(np.stack([v.ubar, v.vbar]), ref, geometry.thickness > 0))
    assert [r["rel_l2_ubar"] for r in held["per_file"]] == pytest.approx(errors["dihedral"], rel=1e-5)
    assert held["rel_l2_ubar"]["median"] == pytest.approx(np.median(errors["dihedral"]), rel=1e-5)
    modes = held["symmetrise_modes"]
    assert modes["x"]["rel_l2_ubar"]["median"] == pytest.approx(np.median(errors["x"]), rel=1e-5)
    # each extra set measured under every mode too (here the same glaciers again)
    for mode in ("dihedral", "x"):
        assert modes[mode]["extra"]["again"]["rel_l2_ubar"]["median"] == pytest.approx(
            np.median(errors[mode]), rel=1e-5)
    assert errors["x"] != pytest.approx(errors["dihedral"], rel=1e-3)  # the modes differ
    assert all(np.isfinite(r["energy_gap"]) for r in held["per_file"])
    # where the error lies: the bands' shares of the squared error add up to 1 and the error over
    # all bands is the file's error
    for r in held["per_file"]:
        assert sum(r["error_share"].values()) == pytest.approx(1.0, abs=1e-9)
        assert sum(r["node_share"].values()) == pytest.approx(1.0, abs=1e-9)
        assert r["rel_l2_ubar_interior"] is None or r["rel_l2_ubar_interior"] >= 0
    text = card.read_text()
    assert f"{held['rel_l2_ubar']['median']:.3f}" in text and "| dihedral | 8 |" in text and "| x | 2 |" in text
    x = modes["x"]["rel_l2_ubar"]
    assert "| symmetrise | network evaluations | all | again | inference (ms) |" in text
    assert f"| x | 2 | {x['median']:.3f} ({x['p90']:.3f}) | {x['median']:.3f} ({x['p90']:.3f}) |" in text
    assert "Where the ubar error lies" in text and "| all | 2 |" in text
    # the card again from the stored evaluation, with notes: the same tables, nothing re-measured
    notes = workdir / "notes.md"
    notes.write_text("## Recipe\n\nA note written after the evaluation.\n")
    again = workdir / "again.md"
    run_script(ROOT / "scripts" / "evaluate_model.py",
               [model, "--card-only", "--card", again, "--notes", notes], monkeypatch)
    assert again.read_text() == text + notes.read_text() + "\n"
    # --location-only adds the same fields to a stored evaluation that lacks them, nothing else
    meta_path = model.with_suffix(".json")
    meta = json.loads(meta_path.read_text())
    for r in meta["accuracy"]["held_out"]["per_file"]:
        for key in ("rel_l2_ubar_interior", "error_share", "node_share"):
            del r[key]
    meta_path.write_text(json.dumps(meta))
    run_script(ROOT / "scripts" / "evaluate_model.py",
               [model, "--test", workdir / "test", "--location-only"], monkeypatch)
    located = json.loads(meta_path.read_text())["accuracy"]["held_out"]
    assert located["location_measured"]["largest_rel_l2_ubar_difference"] < 1e-6
    for new, old in zip(located["per_file"], held["per_file"]):
        assert new["rel_l2_ubar_interior"] == pytest.approx(old["rel_l2_ubar_interior"], rel=1e-6)
        for key in ("error_share", "node_share"):
            assert new[key] == pytest.approx(old[key], rel=1e-6)


def test_model_card_names_the_recipe_of_the_models_version(tmp_path):
    """A model trained in stages has one config per stage, all of its name: the card names the
    one whose version is the model's (the shipped configs, and a stage added beside them), or
    the version it was trained under."""
    script = runpy.run_path(str(ROOT / "scripts" / "evaluate_model.py"))
    recipe_file = script["recipe_file"]
    assert recipe_file("velocity3d-prior", "1.4.0") == "training/configs/velocity3d-prior.yaml"
    assert recipe_file("velocity3d-prior", "1.3.0") == "training/configs/velocity3d-prior-base.yaml"
    # the shipped 1.7.0, trained as the candidate 1.7.0-wide96
    assert recipe_file("velocity3d-prior", "1.7.0-wide96", "1.7.0") \
        == "training/configs/velocity3d-prior-wide96.yaml"
    # the shipped 1.8.0, trained as 1.8.0-evo96b from the output of the stage 1.8.0-evo96
    assert recipe_file("velocity3d-prior", "1.8.0-evo96b", "1.8.0") \
        == "training/configs/velocity3d-prior-evo96b.yaml"
    assert recipe_file("velocity3d-prior", "1.8.0-evo96") == "training/configs/velocity3d-prior-evo96.yaml"
    # the shipped 2.0.0, trained as 2.0.0-wide24b from 1.8 widened
    assert recipe_file("velocity3d-prior", "2.0.0-wide24b", "2.0.0") \
        == "training/configs/velocity3d-prior-wide24b.yaml"
    # the shipped 2.2.0, trained as 2.2.0-wide96 with wide steps: its card says so
    assert recipe_file("velocity3d-prior", "2.2.0-wide96", "2.2.0") \
        == "training/configs/velocity3d-prior-widesteps.yaml"
    md = json.loads((ROOT / "pretrained" / "velocity3d-prior.json").read_text())
    summary = script["_training_summary"](md)
    assert "`training/configs/velocity3d-prior-widesteps.yaml`" in summary
    assert "8000 steps of batch 8 on 64-node crops (one batch in 4: 96-node crops of the 208 " \
        "glaciers whose grid holds them)" in summary
    # velocity3d-prior-large, trained as velocity3d-prior 3.0.0-w32 and shipped under its own
    # name: the card finds its recipe by the name in its training config
    md = json.loads((ROOT / "pretrained" / "velocity3d-prior-large.json").read_text())
    assert (md["name"], md["training_data"]["config"]["name"]) == ("velocity3d-prior-large", "velocity3d-prior")
    assert "`training/configs/velocity3d-prior-large.yaml`" in script["_training_summary"](md)
    (tmp_path / "stage9.yaml").write_text("name: velocity3d-prior\nversion: 9.0.0\n")
    (tmp_path / "other.yaml").write_text("name: another\nversion: 9.0.0\n")
    assert recipe_file("velocity3d-prior", "9.0.0", configs=tmp_path) == "training/configs/stage9.yaml"
    assert recipe_file("unknown", "1.0.1", configs=tmp_path) == "training/configs/unknown.yaml"
    # a candidate trained as 9.0.0-try and shipped as 9.0.0: found by its shipped version, but
    # the version it was trained under comes first
    assert recipe_file("velocity3d-prior", "9.0.0-try", "9.0.0", configs=tmp_path) \
        == "training/configs/stage9.yaml"
    (tmp_path / "try.yaml").write_text("name: velocity3d-prior\nversion: 9.0.0-try\n")
    assert recipe_file("velocity3d-prior", "9.0.0-try", "9.0.0", configs=tmp_path) \
        == "training/configs/try.yaml"


def test_evaluate_model_leaves_out_glaciers_outside_the_spacing_range(workdir, monkeypatch, capsys):
    """A held-out set with a grid the model was not trained for (dx 300 m > 200 m): that glacier is
    left out and named, the others are measured, and the card says how many were left out."""
    import shutil
    extra = workdir / "coarse"
    extra.mkdir()
    shutil.copy(workdir / "test" / "sample_00000.nc", extra / "sample_00000.nc")
    geometry = cap(14, 150.0, dx=300.0)
    write_velocity(solve(geometry, vertical=VERTICAL).velocity, geometry, extra / "sample_00001.nc",
                   attrs={"solver_converged": 1, "kind": "icecap"})
    model, card = workdir / "tiny3d.keras", workdir / "tiny3d.md"
    run_script(ROOT / "scripts" / "evaluate_model.py",
               [model, "--test", workdir / "test", "--extra-test", f"coarse={extra}", "--card", card], monkeypatch)
    held = json.loads(model.with_suffix(".json").read_text())["accuracy"]["held_out"]
    assert held["outside_spacing_range"] == [] and held["test_files"] == 2
    coarse = held["extra"]["coarse"]
    assert coarse["outside_spacing_range"] == ["sample_00001.nc"] and coarse["test_files"] == 1
    assert coarse["per_file"][0]["rel_l2_ubar"] == pytest.approx(held["per_file"][0]["rel_l2_ubar"], rel=1e-6)
    assert f"| coarse ({extra}; 1 outside the grid-spacing range left out) | 1 |" in card.read_text()
    # the per-type table covers every set: the one glacier of "coarse" under its own type
    kinds = sorted({r["kind"] for r in held["per_file"]})
    lines = card.read_text().splitlines()
    header = lines.index("| glaciers | " + " | ".join(kinds) + " |")
    first = held["per_file"][0]
    coarse_row = lines[header + 3].split(" | ")
    assert coarse_row[0] == "| coarse" and len(coarse_row) == len(kinds) + 1
    e = first["rel_l2_ubar"]
    assert coarse_row[1 + kinds.index(first["kind"])].rstrip(" |") == f"{e:.3f} / {e:.3f} (1)"


def test_distill_labels_writes_the_models_prediction_as_training_labels(workdir, monkeypatch):
    """Rehearsal labels: geometry files labelled by a model's prediction, in the training format."""
    from glacier_emulator.learning.data import load_data

    source, out = workdir / "geometries", workdir / "distilled"
    source.mkdir()
    for i, shift in enumerate((150.0, -250.0)):
        write_geometry(cap(14, shift), source / f"sample_{i:05d}.nc")
    args = [workdir / "tiny3d.keras", source, out, "--symmetrise", "xy"]
    run_script(ROOT / "training" / "distill_labels.py", args, monkeypatch)
    emulator = Emulator.load(workdir / "tiny3d.keras").with_symmetrise("xy")
    data = load_data(sorted(out.glob("*.nc")), require_labels=True)
    assert len(data) == 2 and data.layout.has_levels
    for path in sorted(out.glob("*.nc")):
        geometry = read_geometry(source / path.name)
        expected = emulator.predict_geometry(geometry)
        with xr.open_dataset(path) as ds:
            assert "tiny3d" in ds.attrs["label_source"] and "xy" in ds.attrs["label_source"]
            assert "solver_converged" not in ds.attrs  # no solver ran
            np.testing.assert_allclose(ds["uvel"].values, expected.u, rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(ds["vbar"].values, expected.vbar, rtol=1e-5, atol=1e-6)
    stamp = {p.name: p.stat().st_mtime_ns for p in out.glob("*.nc")}
    run_script(ROOT / "training" / "distill_labels.py", args, monkeypatch)  # resumes: nothing redone
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.nc")} == stamp


def test_widen_keeps_the_prediction_and_connects_the_new_channels(workdir, monkeypatch):
    """A wider network that starts from the source's function, and whose new channels can learn."""
    import tensorflow as tf

    run_script(ROOT / "training" / "widen.py",
               [workdir / "tiny3d.keras", workdir / "wide.keras", "--filters", "12"], monkeypatch)
    source, wide = Emulator.load(workdir / "tiny3d.keras"), Emulator.load(workdir / "wide.keras")
    assert wide.model.filters == 12 and wide.metadata.architecture["filters"] == 12
    assert wide.model.count_params() > 2 * source.model.count_params()
    assert "8 filters" in wide.metadata.training_data["widened"]
    geometry = read_geometry(workdir / "test" / "sample_00001.nc")
    a, b = wide.predict_geometry(geometry), source.predict_geometry(geometry)
    np.testing.assert_allclose(a.u, b.u, rtol=1e-5, atol=1e-5 * np.abs(b.u).max())
    # the loss reaches the new channels: the head's weights from them get a non-zero gradient
    x = tf.constant(wide.prepare_inputs(thickness=geometry.thickness, surface_slope=geometry.slopes(),
                                        dx=geometry.dx, dy=geometry.dy))
    head = wide.model.get_layer("velocity_head")
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(wide.model(x) ** 2)
    grad = tape.gradient(loss, head.kernel).numpy()
    assert np.all(head.kernel.numpy()[:, :, 8:, :] == 0) and np.abs(grad[:, :, 8:, :]).max() > 0
    args = [workdir / "wide.keras", workdir / "narrow.keras", "--filters", "8"]
    monkeypatch.setattr(sys, "argv", ["widen.py"] + [str(a) for a in args])
    with pytest.raises(SystemExit, match="narrower than"):
        runpy.run_path(str(ROOT / "training" / "widen.py"), run_name="__main__")
    assert not (workdir / "narrow.keras").exists()


def test_evolved_states_labels_the_states_of_a_forward_run(workdir, monkeypatch):
    """training/evolved_states.py: each geometry run forward under an ELA mass balance (here
    with the shallow-ice model), the state at each year solved and written as a labelled sample
    whose velocity is the solver's for the evolved thickness; deterministic and resumable."""
    sys.path.insert(0, str(ROOT / "training"))
    try:
        import evolved_states
    finally:
        sys.path.remove(str(ROOT / "training"))
    from glacier_emulator.io.netcdf import write_geometry
    geo, out = workdir / "evo-geo", workdir / "evo"
    geo.mkdir()
    start = cap(14, 0.0)  # an ice-free rim: nothing flows out
    write_geometry(start, geo / "sample_00000.nc")
    with xr.open_dataset(geo / "sample_00000.nc") as ds:  # the generator's files name the glacier type
        typed = ds.load()
    typed.attrs["kind"] = "icecap"
    typed.to_netcdf(geo / "sample_00000.nc")
    args = [str(geo), "-o", str(out), "--years", "2", "5", "--model", "sia", "--seed", "3"]
    assert evolved_states.main(args) == 0
    files = sorted(out.glob("*.nc"))
    assert [f.name for f in files] == ["sample_00000_year002.nc", "sample_00000_year005.nc"]
    thickness = []
    for f in files:
        with xr.open_dataset(f) as ds:
            assert int(ds.attrs["solver_converged"]) == 1 and ds.attrs["driven_by"] == "sia"
            assert ds.attrs["kind"] == "icecap"
            assert ds.attrs["ela_m"] == pytest.approx(evolved_states.ela_for(start, 0, 3, [40, 60, 75]))
            thickness.append(ds["thk"].values)
            geometry = read_geometry(f)
            again = solve(geometry).velocity  # the label is the solver's velocity for this state
            assert relative_l2(np.stack([again.ubar, again.vbar]), np.stack([ds["ubar"].values, ds["vbar"].values]),
                               geometry.thickness > 0) < 1e-3
    assert np.abs(thickness[0] - start.thickness).max() > 0.1  # the states did evolve
    assert np.abs(thickness[1] - thickness[0]).max() > 0.1
    stamp = [f.stat().st_mtime_ns for f in files]
    assert evolved_states.main(args) == 0  # resumed: nothing redone
    assert [f.stat().st_mtime_ns for f in files] == stamp
    assert evolved_states.main([str(workdir / "nothing-here"), "-o", str(out)]) == 1


def test_median_interval_brackets_the_median_and_narrows_with_more_glaciers():
    """The card's bootstrap interval: around the sample median, about 1/sqrt(n) wide, seeded."""
    interval = runpy.run_path(str(ROOT / "scripts" / "evaluate_model.py"))["median_interval"]
    rng = np.random.default_rng(3)
    few, many = rng.lognormal(np.log(0.05), 0.4, 40), rng.lognormal(np.log(0.05), 0.4, 640)
    (lo, hi), (lo_many, hi_many) = interval(few), interval(many)
    assert lo < np.median(few) < hi and lo_many < np.median(many) < hi_many
    assert lo_many < 0.05 < hi_many  # the true median of the distribution
    assert 2.0 < (hi - lo) / (hi_many - lo_many) < 8.0  # about sqrt(16) = 4
    assert interval(few) == (lo, hi)
    assert all(np.isnan(interval([0.1])))


def test_bench_solver_compares_the_preconditioner_settings_side_by_side(tmp_path, monkeypatch):
    """scripts/bench_solver.py solves each grid with every --diagonal-probes setting in one run:
    a row each, the later ones with their wall-time ratio to the first and how far their
    solution is from it (both converged, so within the tolerance's reach)."""
    run_script(ROOT / "scripts" / "bench_solver.py",
               ["--sizes", 48, "--repeats", 1, "--diagonal-probes", 2, 0, "--out", tmp_path], monkeypatch)
    rows = json.loads((tmp_path / "solver.json").read_text())["rows"]
    assert [(r["grid"], r["diagonal_probes"]) for r in rows] == [("48x48", 2), ("48x48", 0)]
    assert all(r["converged"] and r["coarse_levels"] for r in rows)  # from the multilevel start
    assert rows[0]["wall_vs_first"] is None and rows[1]["wall_vs_first"] > 0
    assert 0 < rows[1]["difference_from_first"] < 2e-3
    table = (tmp_path / "solver.md").read_text()
    assert "| 48x48 | 208.3 |" in table and "| probes |" in table


def test_bench_extent_resamples_the_example_glacier():
    """scripts/bench_extent.py's grids: the same glacier over fewer or more cells (nodes shared
    with the 100 m grid keep their values)."""
    example_at = runpy.run_path(str(ROOT / "scripts" / "bench_extent.py"))["example_at"]
    base, coarse, fine = example_at(100.0), example_at(200.0), example_at(50.0)
    assert base.thickness.shape == (100, 100) and coarse.thickness.shape == (50, 50)
    assert fine.thickness.shape == (199, 199) and fine.dx == 50.0
    np.testing.assert_allclose(coarse.thickness, base.thickness[::2, ::2])
    np.testing.assert_allclose(fine.thickness[::2, ::2], base.thickness, atol=1e-9)
    np.testing.assert_allclose(fine.bed[1::2, ::2], 0.5 * (base.bed[:-1] + base.bed[1:]), atol=1e-9)


def test_evaluate_model_refine_rows(workdir, monkeypatch):
    """--refine N measures the prediction refined by N solver iterations on every test set (here
    lower than the untrained network's error); --refine-only adds such rows to the stored
    evaluation without measuring the network again, and the card shows them."""
    model = workdir / "tiny3d-r.keras"
    Emulator.load(workdir / "tiny3d.keras").save(model)
    script = ROOT / "scripts" / "evaluate_model.py"
    run_script(script, [model, "--test", workdir / "test", "--refine", "40"], monkeypatch)
    held = json.loads(model.with_suffix(".json").read_text())["accuracy"]["held_out"]
    emulator = Emulator.load(model)
    errors = []
    for path in sorted((workdir / "test").glob("*.nc")):
        geometry = read_geometry(path)
        with xr.open_dataset(path) as ds:
            ref = np.stack([ds["ubar"].values, ds["vbar"].values])
        v = emulator.predict_geometry(geometry, refine=40)
        errors.append(relative_l2(np.stack([v.ubar, v.vbar]), ref, geometry.thickness > 0))
    refined = held["refine"]["40"]["test"]
    assert refined["rel_l2_ubar"]["median"] == pytest.approx(np.median(errors), rel=1e-4)
    assert refined["rel_l2_ubar"]["median"] < 0.5 * held["rel_l2_ubar"]["median"]
    card = workdir / "tiny3d-r.md"
    run_script(script, [model, "--test", workdir / "test", "--refine", "5", "--refine-only",
                        "--card", card], monkeypatch)
    again = json.loads(model.with_suffix(".json").read_text())["accuracy"]["held_out"]
    assert again["per_file"] == held["per_file"] and list(again["refine"]) == ["5"]
    assert again["refine"]["5"]["test"]["rel_l2_ubar"]["median"] > refined["rel_l2_ubar"]["median"]
    assert "| 5 | all | 2 |" in card.read_text()
    # what the refinements started from is recorded and on the card
    assert again["refine_start"] == "N = 5 from the levels of tiny3d 0.0.1"
    assert "started as `Emulator.refine_initial` does: N = 5 from the levels of tiny3d 0.0.1" in card.read_text()
    assert held["refine_start"] == "N = 40 from the shallow-ice profile"


def test_bench_refine_measures_error_and_time_per_iteration_budget(workdir):
    """scripts/bench_refine.py on one small glacier: each budget's error against the converged
    solve, falling with N, and the markdown table of it."""
    bench = runpy.run_path(str(ROOT / "scripts" / "bench_refine.py"))
    emulator = Emulator.load(workdir / "tiny3d.keras")
    row = bench["bench_glacier"]("cap", cap(14, 150.0), [emulator], [0, 10, 300], repeats=1)
    errors = [r["rel_l2_ubar"] for r in row["results"]]
    assert errors[0] > errors[1] > errors[2] and errors[2] < 1e-3
    assert all(r["seconds"] > 0 for r in row["results"]) and row["solve_s"] > 0
    report = dict(date="today", machine={}, command="bench_refine.py", rows=[row])
    text = bench["markdown"](report)
    assert "| 300 | " in text and f"{errors[2]:.4f}" in text


def test_bench_forward_runs_a_symmetry_averaging_as_a_provider(workdir):
    """scripts/bench_forward.py's ``emulator@MODE``: the same weights with that averaging in the
    same run (a model file of that averaging gives the same run, another averaging another one);
    a mode that does not exist is refused; ``--named NAME=PATH`` runs another model file as
    provider NAME (NAME@MODE too) in the same run."""
    bench = runpy.run_path(str(ROOT / "scripts" / "bench_forward.py"))
    model = workdir / "tiny3d.keras"  # symmetrise x
    dihedral = workdir / "bench-forward-d.keras"
    Emulator.load(model).with_symmetrise("dihedral").save(dihedral)
    runs = {name: bench["run_provider"](name, model=m, years=0.3)[0]
            for name, m in (("emulator", dihedral), ("emulator@dihedral", model), ("emulator@x", dihedral))}
    a, b, c = (runs[n]["thk"].values[-1] for n in ("emulator", "emulator@dihedral", "emulator@x"))
    assert runs["emulator"]["year"].values[-1] == pytest.approx(runs["emulator@x"]["year"].values[-1])
    np.testing.assert_allclose(b, a, rtol=0, atol=1e-6 * np.abs(a).max())
    assert np.abs(c - a).max() > 1e-4
    with pytest.raises(SystemExit, match="emulator@yx"):
        bench["run_provider"]("emulator@yx", model=model, years=0.3)
    # --named: another model file as a provider of its own, with its averaging options
    named = bench["parse_named"]([f"cand={dihedral}"])
    d_run = bench["run_provider"]("cand", model=model, years=0.3, named=named)
    assert d_run[2]["model"] == str(dihedral)  # the results' "model": the named file
    d = d_run[0]["thk"].values[-1]
    e = bench["run_provider"]("cand@x", model=dihedral, years=0.3, named=named)[0]["thk"].values[-1]
    np.testing.assert_allclose(d, a, rtol=0, atol=1e-6 * np.abs(a).max())
    np.testing.assert_allclose(e, c, rtol=0, atol=1e-6 * np.abs(c).max())
    for bad in ("cand", "solver=x.keras", "a@b=x.keras"):
        with pytest.raises(SystemExit, match="--named"):
            bench["parse_named"]([bad])


def test_compare_models_pairs_the_glaciers_of_two_models(workdir, monkeypatch):
    """scripts/compare_models.py (the decision rules' checks): each glacier's error for both
    models as a direct computation gives it, the paired counts and ratios, the example's static
    error, and a model against itself: ratio 1, lower on none."""
    source = Emulator.load(workdir / "tiny3d.keras")
    other = Emulator.load(workdir / "tiny3d.keras")
    rng = np.random.default_rng(1)
    other.model.set_weights([w + rng.normal(0, 0.02, w.shape).astype(w.dtype) for w in other.model.get_weights()])
    other.save(workdir / "compare-other.keras")
    # a second folder with the same file names holding other glaciers (the two swapped)
    swapped = workdir / "compare-swapped"
    swapped.mkdir()
    for i in (0, 1):
        (swapped / f"sample_0000{i}.nc").write_bytes((workdir / "test" / f"sample_0000{1 - i}.nc").read_bytes())
    out = workdir / "compare.json"
    script = ROOT / "scripts" / "compare_models.py"
    run_script(script, [workdir / "compare-other.keras", workdir / "tiny3d.keras",
                        "--set", f"caps={workdir / 'test'} {swapped}",
                        "--set", f"same={workdir / 'test' / 'sample_0000*.nc'} {swapped}",
                        "--example", "--json", out], monkeypatch)
    report = json.loads(out.read_text())
    caps = report["sets"]["caps"]
    files = sorted((workdir / "test").glob("*.nc")) + sorted(swapped.glob("*.nc"))
    assert caps["files"] == [str(f) for f in files] and caps == report["sets"]["same"] and caps["n"] == 4
    assert caps["candidate"][:2] == pytest.approx(caps["candidate"][2:][::-1], rel=1e-6)
    for key, em in (("candidate", other), ("reference", source)):
        direct = []
        for path in files:
            geometry = read_geometry(path)
            with xr.open_dataset(path) as ds:
                ref = np.stack([ds["ubar"].values, ds["vbar"].values])
            v = em.predict_geometry(geometry)
            direct.append(relative_l2(np.stack([v.ubar, v.vbar]), ref, geometry.thickness > 0))
        assert caps[key] == pytest.approx(direct, rel=1e-5)
    assert caps["candidate"] != pytest.approx(caps["reference"], rel=1e-3)
    assert caps["better"] == sum(c < r for c, r in zip(caps["candidate"], caps["reference"]))
    assert caps["median_ratio"] == pytest.approx(np.median(caps["candidate"]) / np.median(caps["reference"]))
    static = report["example_static"]
    assert static["years"] == [2000.0, 2010.0, 2020.0, 2030.0, 2040.0, 2050.0]
    assert len(static["candidate"]) == 6 and all(e > 0 for e in static["candidate"])
    # a model against itself
    run_script(script, [workdir / "tiny3d.keras", workdir / "tiny3d.keras",
                        "--set", f"caps={workdir / 'test'}", "--json", out], monkeypatch)
    itself = json.loads(out.read_text())["sets"]["caps"]
    assert itself["median_ratio"] == 1.0 and itself["better"] == 0
    # the forward-run check at its first state: the start is the solver-driven run's start
    example_run = runpy.run_path(str(script))["example_run"]
    start = example_run(source, 0.0)
    assert start["thickness_rms_diff_m"] == 0.0 and start["volume_km3"] == pytest.approx(8.471, abs=5e-4)
    # a missing file is named
    monkeypatch.setattr(sys, "argv", [str(script), str(workdir / "tiny3d.keras"), str(workdir / "tiny3d.keras"),
                                      "--set", f"none={workdir / 'nothing.nc'}"])
    with pytest.raises(SystemExit, match="nothing.nc"):
        runpy.run_path(str(script), run_name="__main__")
