"""The time stepper: convergence, Halfar's dome, the mass budget, restart, SMB models, settings."""
import dataclasses
import math
import warnings

import numpy as np
import pytest
import xarray as xr

from glacier_emulator.data import example_config, example_geometry, load_example_geometry
from glacier_emulator.dynamics import (
    ELASMB,
    EmulatorProvider,
    FieldSMB,
    PrescribedVelocity,
    RunConfig,
    SIAProvider,
    Stepper,
    TimeSeriesSMB,
    make_provider,
    smb_from_config,
)
from glacier_emulator.fields import Geometry, InputError, Velocity, relative_l2
from glacier_emulator.verification.halfar import HalfarDome
from glacier_emulator.verification.error_location import error_by_location

IGM_TABLE = [["time", "gradabl", "gradacc", "ela", "accmax"],
             [1900, 0.009, 0.005, 2300, 2.0], [2100, 0.009, 0.005, 2300, 2.0]]


def orders(errors):
    errors = np.asarray(errors)
    return np.log2(errors[:-1] / errors[1:])


def cosine_bump(x, centre, width=1500.0, height=100.0):
    r = np.abs(x - centre) / width
    return np.where(r < 1, height * np.cos(0.5 * np.pi * r) ** 2, 0.0)


def advection_errors(limiter, cells=(25, 50, 100, 200)):
    """L1 error of a bump carried 3 km at 100 m/yr around a periodic 10 km channel."""
    length, errors = 10_000.0, []
    for nx in cells:
        dx = length / nx
        x = (np.arange(nx) + 0.5) * dx
        h = np.tile(cosine_bump(x, 3000.0), (2, 1))
        g = Geometry(thickness=h, bed=np.zeros_like(h), dx=dx, x=x, periodic=True)
        s = Stepper(g, PrescribedVelocity(100.0, 0.0), limiter=limiter, cfl=0.3, dt_max=100.0)
        s.run_until(30.0)
        exact = np.tile(cosine_bump(x, 6000.0), (2, 1))
        errors.append(np.abs(s.thickness - exact).sum() / exact.sum())
        assert abs(s.volume - s.initial_volume) <= 1e-12 * s.initial_volume
        assert s.outflow_volume == 0 and s.clipped_volume == 0
    return errors


def test_advection_converges_first_order_upwind():
    errors = advection_errors(limiter=False)
    p = orders(errors)
    print("upwind L1 errors", errors, "orders", p)
    assert np.all(np.diff(errors) < 0) and np.all(p > 0.5)


def test_advection_converges_faster_with_the_limiter():
    errors = advection_errors(limiter=True, cells=(25, 50, 100))
    p = orders(errors)
    print("minmod L1 errors", errors, "orders", p)
    assert np.all(p > 1.0)
    assert errors[-1] < 0.5 * advection_errors(limiter=False, cells=(100,))[0]


def test_outflow_through_the_domain_edge_is_counted_and_nothing_flows_in():
    nx, dx = 40, 100.0
    x = np.arange(nx) * dx
    h = np.tile(cosine_bump(x, 3000.0, width=500.0), (4, 1))
    h[[0, -1]] = 0.0
    g = Geometry(thickness=h, bed=np.zeros_like(h), dx=dx)
    s = Stepper(g, PrescribedVelocity(np.full(h.shape, 100.0), 0.0), dt_max=5.0)
    s.run_until(20.0)  # the bump moves 2 km: part of it leaves through the east edge
    assert 0 < s.outflow_volume < s.initial_volume
    assert abs(s.budget_residual) <= 1e-12 * s.initial_volume
    s.run_until(60.0)  # all gone; nothing came in from the west
    assert s.volume == pytest.approx(0.0, abs=1e-6 * s.initial_volume)
    assert s.outflow_volume == pytest.approx(s.initial_volume, rel=1e-12)


def test_halfar_dome_converges_and_conserves_volume():
    dome = HalfarDome(height=500.0, radius=10_000.0)
    t_end = 2.0 * dome.t0
    errors = []
    for cells in (21, 41, 81):
        g = dome.geometry(cells=cells, half_width=13_000.0)
        s = Stepper(g, SIAProvider(dome.physics_no_slip), start_time=dome.t0, dt_max=10.0)
        s.run_until(t_end)
        exact = dome.thickness(dome.radii(g), t_end)
        errors.append(relative_l2(s.thickness, exact))
        assert abs(s.volume - s.initial_volume) <= 1e-6 * s.initial_volume
        edges = np.concatenate([s.thickness[[0, -1], :].ravel(), s.thickness[:, [0, -1]].ravel()])
        assert edges.max() < 1e-6  # the ice stays inside the domain
        assert s.outflow_volume <= 1e-12 * s.initial_volume
    p = orders(errors)
    print("Halfar relative L2 errors", errors, "orders", p)
    assert np.all(np.diff(errors) < 0) and np.all(p > 0.5)
    assert errors[-1] < 0.02


def coarse_example():
    return example_geometry(nx=25, ny=25, dx=400.0)


def test_mass_budget_closes_over_100_years_with_smb():
    s = Stepper(coarse_example(), SIAProvider(), ELASMB(IGM_TABLE), start_time=2000.0)
    ds = s.run_until_and_store(2100.0, every=25.0)
    throughput = float(np.abs(ds.smb_volume).max() + ds.outflow_volume.max() + ds.clipped_volume.max())
    residual = np.abs(ds.budget_residual.values).max()
    change = ds.volume.values - ds.volume.values[0]
    recomputed = change - (ds.smb_volume - ds.outflow_volume + ds.clipped_volume).values
    print("budget: max |residual| / throughput =", residual / throughput, "clipped",
          float(ds.clipped_volume[-1]), "outflow", float(ds.outflow_volume[-1]))
    assert residual <= 1e-9 * throughput
    np.testing.assert_allclose(recomputed, ds.budget_residual.values, atol=1e-9 * throughput)
    assert ds.clipped_volume.values[-1] > 0  # ablation on ice-free ground is clipped away
    np.testing.assert_array_equal(ds.year.values, [2000, 2025, 2050, 2075, 2100])



def test_stepper_from_run_config_takes_every_setting():
    # the CLI, the forward benchmark and the pretrained forward test all build their stepper so
    config = RunConfig(start_time=1990.0, cfl=0.2, dt_max=0.5, velocity_every=3, limiter=True,
                       smb=0.5)
    g = coarse_example()
    s = Stepper.from_config(g, SIAProvider(), config)
    assert (s.t, s.cfl, s.dt_max, s.velocity_every, s.limiter) == (1990.0, 0.2, 0.5, 3, True)
    assert config.stepper_settings() == dict(cfl=0.2, dt_max=0.5, velocity_every=3, limiter=True)
    np.testing.assert_allclose(s.smb_model.smb(g, 1990.0), 0.5)
    # an explicit SMB overrides the config's; "input" or none: the geometry's own field
    assert isinstance(Stepper.from_config(g, SIAProvider(), config, smb=ELASMB(IGM_TABLE)).smb_model, ELASMB)
    field = np.full(g.shape, -0.25)
    for spec in ("input", None):
        s = Stepper.from_config(g.replace(smb=field), SIAProvider(), config.replace(smb=spec) if spec
                                else dataclasses.replace(config, smb=None))
        np.testing.assert_allclose(s.smb_model.smb(g, 1990.0), -0.25)
    with pytest.raises(InputError, match="edge"):
        edge = g.thickness.copy()
        edge[:, 0] = 10.0
        Stepper.from_config(g.replace(thickness=edge), SIAProvider(),
                            dataclasses.replace(config, check_domain_edges=True))


def test_restart_repeats_the_uninterrupted_run(tmp_path):
    kwargs = dict(cfl=0.3, dt_max=1.0)
    full = Stepper(coarse_example(), SIAProvider(), ELASMB(IGM_TABLE), **kwargs)
    ds_full = full.run_until_and_store(40.0, every=10.0)
    first = Stepper(coarse_example(), SIAProvider(), ELASMB(IGM_TABLE), **kwargs)
    ds_first = first.run_until_and_store(20.0, every=10.0)
    from glacier_emulator.io.netcdf import safe_write

    path = safe_write(ds_first, tmp_path / "first.nc")
    for source in (ds_first, path):
        again = Stepper.from_output(source, SIAProvider(), ELASMB(IGM_TABLE))
        assert again.t == 20.0
        ds_second = again.run_until_and_store(40.0, every=10.0)
        np.testing.assert_array_equal(ds_second.thk.isel(time=-1), ds_full.thk.isel(time=-1))
        np.testing.assert_array_equal(ds_second.year, [20.0, 30.0, 40.0])
        for name in ("smb_volume", "outflow_volume", "clipped_volume", "n_steps", "budget_residual"):
            np.testing.assert_allclose(ds_second[name].values, ds_full[name].values[2:], rtol=1e-12,
                                       atol=1e-9)
    with pytest.raises(ValueError, match="ELASMB"):
        Stepper.from_output(ds_first, SIAProvider())  # the SMB model must be given again


def test_output_is_cf_and_round_trips_through_netcdf(tmp_path):
    from glacier_emulator.io.netcdf import safe_write

    s = Stepper(coarse_example(), SIAProvider(), ELASMB(IGM_TABLE), start_time=2000.0)
    ds = s.run_until_and_store(2002.0, every=1.0)
    for name in ("thk", "usurf", "topg", "ubar", "vbar", "velbar_mag", "smb", "volume", "area",
                 "smb_volume", "outflow_volume", "clipped_volume", "budget_residual", "max_speed",
                 "dt", "n_steps"):
        assert "units" in ds[name].attrs and "long_name" in ds[name].attrs, name
    assert ds.thk.attrs["units"] == "m" and ds.ubar.attrs["units"] == "m year-1"
    assert ds.volume.attrs["units"] == "m3" and ds.dt.attrs["units"] == "year"
    path = safe_write(ds, tmp_path / "run.nc")
    raw = xr.open_dataset(path, decode_times=False)
    assert raw.time.attrs["units"].startswith("days since 0000-01-01")
    assert raw.time.attrs["calendar"] == "noleap"
    np.testing.assert_allclose(raw.time.values / 365.0, [2000, 2001, 2002])
    decoded = xr.open_dataset(path, decode_times=xr.coders.CFDatetimeCoder(use_cftime=True))
    assert [t.year for t in decoded.time.values] == [2000, 2001, 2002]
    safe_write(decoded, tmp_path / "again.nc")  # decode -> encode round trip
    again = xr.open_dataset(tmp_path / "again.nc", decode_times=False)
    np.testing.assert_array_equal(again.time.values, raw.time.values)
    np.testing.assert_array_equal(again.thk.values, ds.thk.values)
    # off the ice the stored velocity is zero
    assert np.all(ds.ubar.values[ds.thk.values == 0] == 0)


def test_velocity_is_reused_between_updates_and_refreshed_at_saves():
    class Counting(PrescribedVelocity):
        calls = 0

        def velocity(self, geometry):
            Counting.calls += 1
            return super().velocity(geometry)

    h = np.pad(np.full((4, 4), 50.0), 3)
    g = Geometry(thickness=h, bed=np.zeros_like(h), dx=100.0)
    s = Stepper(g, Counting(1.0, 0.0), dt_max=0.5, velocity_every=4)
    s.run_until(4.0)  # 8 steps: evaluations at steps 1 and 5
    assert s.n_steps == 8 and Counting.calls == 2
    s.record()  # the stored velocity belongs to the stored thickness
    assert Counting.calls == 3


def test_time_steps_respect_cfl_dt_max_and_output_times():
    h = np.pad(np.full((4, 4), 50.0), 3)
    g = Geometry(thickness=h, bed=np.zeros_like(h), dx=100.0)
    s = Stepper(g, PrescribedVelocity(300.0, 0.0), cfl=0.3, dt_max=1.0)
    assert s.stable_time_step() == pytest.approx(0.1)  # 0.3 * 100 m / 300 m/yr
    s2 = Stepper(g, PrescribedVelocity(1.0, 0.0), cfl=0.3, dt_max=0.7)
    ds = s2.run_until_and_store(2.0, every=1.0)
    np.testing.assert_array_equal(ds.year.values, [0.0, 1.0, 2.0])
    np.testing.assert_allclose(ds.dt.values[1:], [0.3, 0.3])  # 0.7 + 0.3 lands on 1.0
    assert s2.step(0.05) == 0.05 and s2.t == pytest.approx(2.05)


def test_bad_settings_raise_clear_errors():
    g = coarse_example()
    sia = SIAProvider()
    with pytest.raises(ValueError, match="cfl"):
        Stepper(g, sia, cfl=0.0)
    with pytest.raises(ValueError, match="dt_max"):
        Stepper(g, sia, dt_max=-1.0)
    with pytest.raises(ValueError, match="velocity_every"):
        Stepper(g, sia, velocity_every=0)
    with pytest.raises(ValueError, match=r"shape \(3, 3\); expected \(25, 25\)"):
        Stepper(g, sia, np.zeros((3, 3)))
    with pytest.raises(ValueError, match="provider must have"):
        Stepper(g, object())
    s = Stepper(g, sia)
    with pytest.raises(ValueError, match="negative number of years"):
        s.run_until(-5.0)
    with pytest.raises(ValueError, match="every"):
        s.run_until_and_store(1.0, every=0.0)
    with pytest.raises(ValueError, match="dt must be > 0"):
        s.step(0.0)
    with pytest.raises(ValueError, match="emulator, solver, sia"):
        make_provider("stokes")
    with pytest.raises(ValueError, match="years"):
        RunConfig(years=-1)
    with pytest.raises(ValueError, match="Unknown velocity provider"):
        RunConfig(velocity="magic")
    with pytest.raises(ValueError, match="Unknown run setting"):
        RunConfig.from_dict({"yeers": 3})


def test_ice_at_the_domain_edge_warns_or_raises():
    h = np.full((6, 6), 10.0)
    g = Geometry(thickness=h, bed=np.zeros_like(h), dx=100.0)
    with pytest.warns(UserWarning, match="domain edge"):
        Stepper(g, PrescribedVelocity())
    with pytest.raises(InputError, match="domain edge"):
        Stepper(g, PrescribedVelocity(), check_domain_edges=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Stepper(g.replace(periodic=True), PrescribedVelocity())  # no edges on a periodic domain


def test_ice_reaching_the_domain_edge_during_a_run_warns_once():
    h = np.zeros((6, 10))
    h[2:4, 2:4] = 10.0  # clear of the edges at the start, carried east at 100 m/yr
    g = Geometry(thickness=h, bed=np.zeros_like(h), dx=100.0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        s = Stepper(g, PrescribedVelocity(100.0, 0.0), dt_max=0.25)
        s.run_until(1.0)
        assert not caught  # upwind transport moves the front at most one cell a step: 4 of 6
        s.run_until(12.0)
    messages = [str(w.message) for w in caught if "reached the domain edge" in str(w.message)]
    assert len(messages) == 1
    year = float(messages[0].split("at year ")[1].split()[0])
    assert 1.0 < year < 12.0 and s.outflow_volume > 0


def test_ela_smb_formula_and_time_interpolation():
    bed = np.array([[2200.0, 2300.0], [2400.0, 3000.0]])
    g = Geometry(thickness=np.zeros((2, 2)), bed=bed, dx=1.0)
    smb = smb_from_config({"type": "ela", "table": IGM_TABLE})
    np.testing.assert_allclose(smb.smb(g, 2000.0), [[-0.9, 0.0], [0.5, 2.0]])
    moving = ELASMB([[0, 0.01, 0.01, 2000, 5.0], [100, 0.01, 0.01, 2400, 5.0]])
    assert moving.parameters(50.0)["ela"] == pytest.approx(2200.0)
    np.testing.assert_allclose(moving.smb(g, 50.0), [[0.0, 1.0], [2.0, 5.0]])
    assert moving.parameters(500.0)["ela"] == 2400.0  # held beyond the table
    with pytest.raises(ValueError, match="header"):
        ELASMB([["time", "ela"], [0, 1]])
    with pytest.raises(ValueError, match="rows of 5"):
        ELASMB([[0, 1, 2]])
    with pytest.raises(ValueError, match="Unknown SMB type"):
        smb_from_config({"type": "pdd"})
    with pytest.raises(ValueError, match="unknown key"):
        smb_from_config({"type": "ela", "ela": 1, "gradabl": 1, "gradacc": 1, "accmax": 1, "x": 2})


def test_field_and_time_series_smb(tmp_path):
    g = Geometry(thickness=np.ones((3, 4)), bed=np.zeros((3, 4)), dx=10.0)
    assert np.all(FieldSMB(0.5).smb(g, 0.0) == 0.5)
    with pytest.raises(ValueError, match=r"shape \(4, 3\); expected \(3, 4\)"):
        FieldSMB(np.zeros((4, 3))).smb(g, 0.0)
    csv = tmp_path / "offsets.csv"
    csv.write_text("time,smb\n0,-1.0\n10,1.0\n")
    series = smb_from_config(
        {"type": "timeseries", "file": str(csv), "base": {"type": "field", "value": 0.25}}
    )
    np.testing.assert_allclose(series.smb(g, 5.0), 0.25)
    np.testing.assert_allclose(series.smb(g, 20.0), 1.25)
    fields = TimeSeriesSMB([0.0, 2.0], np.stack([np.zeros((3, 4)), np.full((3, 4), 2.0)]))
    np.testing.assert_allclose(fields.smb(g, 0.5), 0.5)
    with pytest.raises(ValueError, match="one per time"):
        TimeSeriesSMB([0.0, 1.0], [1.0, 2.0, 3.0])
    # a truncated NetCDF-3 SMB file is refused by name (its missing end would read as zeros)
    series_nc = tmp_path / "series.nc"
    xr.Dataset({"smb": (("time", "y", "x"), np.ones((2, 3, 4)))},
               coords={"time": [0.0, 10.0]}).to_netcdf(series_nc, format="NETCDF3_CLASSIC")
    field_nc = tmp_path / "field.nc"
    xr.Dataset({"smb": (("y", "x"), np.ones((3, 4)))}).to_netcdf(field_nc, format="NETCDF3_CLASSIC")
    np.testing.assert_allclose(smb_from_config({"type": "field", "file": str(field_nc)}).smb(g, 0.0), 1.0)
    for path, spec in ((series_nc, {"type": "timeseries", "file": str(series_nc)}),
                       (field_nc, {"type": "field", "file": str(field_nc)})):
        path.write_bytes(path.read_bytes()[:-8])
        with pytest.raises(InputError, match="truncated NetCDF-3") as info:
            smb_from_config(spec)
        assert str(path) in str(info.value)


def test_emulator_provider_accepts_any_object_with_predict_geometry():
    class Fake:
        def predict_geometry(self, geometry):
            return Velocity(ubar=np.ones(geometry.shape), vbar=np.zeros(geometry.shape))

    h = np.pad(np.full((3, 3), 20.0), 2)
    g = Geometry(thickness=h, bed=np.zeros_like(h), dx=50.0)
    provider = make_provider("emulator", emulator=Fake())
    s = Stepper(g, provider, dt_max=1.0)
    s.run_until(3.0)
    assert abs(s.budget_residual) <= 1e-12 * s.initial_volume
    centre_of_mass = [(t.sum(axis=0) * np.arange(7)).sum() / t.sum() for t in (h, s.thickness)]
    assert centre_of_mass[1] > centre_of_mass[0]  # carried east by the emulated velocity
    with pytest.raises(TypeError, match="predict_geometry"):
        EmulatorProvider(object())


def test_example_glacier_file_matches_its_generator():
    from_file = load_example_geometry()
    generated = example_geometry()
    np.testing.assert_array_equal(from_file.thickness, generated.thickness)
    np.testing.assert_array_equal(from_file.bed, generated.bed)
    assert from_file.dx == 100.0 and from_file.shape == (100, 100)
    config = example_config()
    assert config.years == 50 and config.save_every == 10 and config.start_time == 2000
    smb = smb_from_config(config.smb)
    assert smb.parameters(2020.0) == {"time": 2020.0, "gradabl": 0.009, "gradacc": 0.005,
                                      "ela": 2300.0, "accmax": 2.0}


def test_cli_run_restart_and_plot(tmp_path, capsys):
    from glacier_emulator.cli import main
    from glacier_emulator.io.netcdf import write_geometry

    write_geometry(coarse_example(), tmp_path / "in.nc")
    out, restarted, full = (tmp_path / n for n in ("out.nc", "restarted.nc", "full.nc"))
    assert main([
        "run", str(tmp_path / "in.nc"), "-o", str(out), "--years", "4", "--save-every", "2",
        "--velocity", "sia", "--smb", "ela"]) == 0
    assert main(["run", "-o", str(restarted), "--restart", str(out), "--years", "4"]) == 0
    assert main(["run", str(tmp_path / "in.nc"), "-o", str(full), "--years", "8", "--save-every",
                 "2", "--velocity", "sia", "--smb", "ela"]) == 0
    a, b = xr.open_dataset(restarted, decode_times=False), xr.open_dataset(full, decode_times=False)
    np.testing.assert_array_equal(a.year.values, [0, 2, 4, 6, 8])
    np.testing.assert_array_equal(a.thk.values, b.thk.values)
    for name in ("thk", "ubar", "volume", "year", "topg"):  # the restarted file keeps the metadata
        assert a[name].attrs == b[name].attrs and "units" in a[name].attrs, name
    assert main(["plot", str(restarted), "-o", str(tmp_path / "fig.png")]) == 0
    assert (tmp_path / "fig.png").stat().st_size > 1000
    assert main(["run", str(tmp_path / "in.nc"), "-o", str(out), "--years", "-1"]) == 2
    assert main(["run", str(tmp_path / "in.nc"), "-o", str(out), "--years", "1", "--cfl", "0"]) == 2
    assert main(["run", str(tmp_path / "in.nc"), "-o", str(out), "--years", "1", "--smb",
                 str(tmp_path / "missing.yaml")]) == 2
    err = capsys.readouterr().err
    assert "--years must be >= 0" in err and "cfl must be > 0" in err and "Traceback" not in err


@pytest.mark.slow
def test_solver_provider_warm_starts_on_a_tiny_glacier():
    from glacier_emulator.dynamics import SolverProvider
    from glacier_emulator.numerics.solver import SolverConfig

    g = example_geometry(nx=10, ny=12, dx=1000.0)
    provider = SolverProvider(config=SolverConfig(tolerance=1e-6, max_iterations=300))
    s = Stepper(g, provider, dt_max=0.5)
    s.run_until(1.0)
    assert s.n_steps >= 2 and provider.last_result is not None
    assert abs(s.budget_residual) <= 1e-9 * max(s.initial_volume, 1.0)
    assert math.isfinite(s.volume)


def test_solver_memory_warm_start_reaches_the_same_solution():
    """A solve started from an earlier solve's velocity and L-BFGS curvature pairs
    (SolveResult.memory, what SolverProvider passes between time steps) converges to the same
    velocity as a solve from rest; memory from another grid is ignored."""
    from glacier_emulator.numerics.solver import SolverConfig, solve

    g = example_geometry(nx=24, ny=20, dx=400.0)
    first = solve(g)
    assert first.converged and first.memory is not None
    shape, pairs = first.memory
    assert 0 < len(pairs) <= SolverConfig().history and pairs[0][0].shape == (int(np.prod(shape)),)
    changed = Geometry(thickness=g.thickness * 1.01 + 0.5 * (g.thickness > 0), bed=g.bed, dx=g.dx)
    tight = SolverConfig(tolerance=1e-12, max_iterations=3000)
    cold = solve(changed, config=tight)
    warm = solve(changed, initial=first.velocity, memory=first.memory, config=tight)
    assert warm.converged and cold.converged
    assert relative_l2(warm.velocity.ubar, cold.velocity.ubar) < 2e-3
    small = example_geometry(nx=12, ny=10, dx=800.0)
    other = solve(small, initial=solve(small).velocity, memory=first.memory)  # wrong size: ignored
    assert other.converged


def test_velocity_check_measures_the_solver_difference_and_leaves_the_run_unchanged():
    """``check=VelocityCheck(SolverProvider(), every)``: at the records on its interval the
    run's velocity is compared with a converged solve of the geometry the run has reached, from
    rest at every check (VelocityCheck resets the provider): the stored number is that of a
    fresh solve of the state, to round-off (a warm start from the previous check's state stopped
    about 0.5 % apart in this error at the default tolerance)."""
    from glacier_emulator.dynamics import SolverProvider, VelocityCheck
    from glacier_emulator.numerics.solver import SolverConfig, solve

    g = example_geometry(nx=16, ny=14, dx=600.0)
    smb = ELASMB(IGM_TABLE)
    plain = Stepper(g, SIAProvider(), smb, start_time=2000.0).run_until_and_store(2004.0, every=1.0)
    tight = SolverConfig(tolerance=1e-12)
    check = VelocityCheck(SolverProvider(config=tight), every=2.0)
    checked = Stepper(g, SIAProvider(), smb, start_time=2000.0, check=check)
    ds = checked.run_until_and_store(2004.0, every=1.0)
    np.testing.assert_array_equal(ds.thk.values, plain.thk.values)  # the check only reads
    err = ds["velocity_check_error"].values
    assert np.isnan(err[[1, 3]]).all() and np.isfinite(err[[0, 2, 4]]).all()
    assert ds["velocity_check_error"].attrs["units"] == "1" and ds.attrs["velocity_check_every"] == 2.0
    for k in (0, 4):  # the stored number is the SIA's difference from a converged solve
        state = g.replace(thickness=ds.thk.values[k])
        ice = state.thickness > 0
        reference = solve(state, config=tight).velocity
        expected = relative_l2(np.stack([ds.ubar.values[k], ds.vbar.values[k]])[:, ice],
                               np.stack([reference.ubar, reference.vbar])[:, ice])
        assert err[k] == pytest.approx(expected, rel=1e-9)
        assert err[k] > 0.05  # the SIA is no Blatter-Pattyn solver on this glacier
        where = error_by_location(np.stack([ds.ubar.values[k], ds.vbar.values[k]]),
                                  np.stack([reference.ubar, reference.vbar]), state.thickness)
        assert ds["velocity_check_error_interior"].values[k] == pytest.approx(where["rel_l2_interior"], rel=1e-2)
        for band in ("margin", "edge"):
            stored = ds[f"velocity_check_error_share_{band}"].values[k]
            assert stored == pytest.approx(where["error_share"][band], rel=1e-2, abs=1e-3)
    shares = ds["velocity_check_error_share_margin"].values + ds["velocity_check_error_share_edge"].values
    assert np.isnan(shares[[1, 3]]).all() and ((shares[[0, 2, 4]] > 0) & (shares[[0, 2, 4]] <= 1)).all()
    assert ds["velocity_check_error_interior"].attrs["units"] == "1"
    assert ds["velocity_check_max_speed_difference"].values[0] > 0
    # checked against itself the SIA is exact: the difference is the check's, not the solver's
    same = Stepper(g, SIAProvider(), smb, check=VelocityCheck(SIAProvider(), every=1.0))
    assert np.all(same.run_until_and_store(2.0, every=1.0)["velocity_check_error"].values == 0.0)
    with pytest.raises(ValueError, match="every must be > 0"):
        VelocityCheck(SolverProvider(), every=0.0)

    class Counting(SIAProvider):  # a reference with reset(): called before each check unless told not to
        resets = 0

        def reset(self):
            self.resets += 1

    for from_rest, expected_resets in ((True, 3), (False, 0)):
        reference = Counting()
        Stepper(g, SIAProvider(), smb, check=VelocityCheck(reference, every=1.0, from_rest=from_rest)
                ).run_until_and_store(2.0, every=1.0)
        assert reference.resets == expected_resets
    with pytest.raises(ValueError, match="multiple of save_every"):
        RunConfig(save_every=2.0, check_every=3.0)


def test_cli_run_check_every(tmp_path, capsys):
    from glacier_emulator.cli import main
    from glacier_emulator.io.netcdf import write_geometry

    write_geometry(example_geometry(nx=16, ny=14, dx=600.0), tmp_path / "in.nc")
    out, restarted = tmp_path / "out.nc", tmp_path / "restarted.nc"
    base = ["run", str(tmp_path / "in.nc"), "--velocity", "sia", "--smb", "ela", "--save-every", "1"]
    assert main(base + ["-o", str(out), "--years", "2", "--check-every", "2"]) == 0
    err = capsys.readouterr().err
    assert "velocity check" in err and "(year 0, interior " in err and "(year 2, interior " in err
    # a restart repeats the stored interval: checks at 2 and 4, none at the records between
    assert main(["run", "-o", str(restarted), "--restart", str(out), "--years", "2"]) == 0
    with xr.open_dataset(restarted, decode_times=False) as ds:
        np.testing.assert_array_equal(ds.year.values, [0, 1, 2, 3, 4])
        np.testing.assert_array_equal(np.isfinite(ds["velocity_check_error"].values),
                                      [True, False, True, False, True])
        assert ds["velocity_check_error"].attrs["units"] == "1"
    assert main(["plot", str(restarted), "-o", str(tmp_path / "fig.png")]) == 0
    assert (tmp_path / "fig.png").stat().st_size > 1000
    assert main(base + ["-o", str(tmp_path / "bad.nc"), "--years", "2", "--check-every", "1.5"]) == 2
    assert main(base[:2] + ["--velocity", "solver", "-o", str(tmp_path / "bad.nc"), "--years", "1",
                            "--save-every", "1", "--check-every", "1"]) == 2
    err = capsys.readouterr().err
    assert "multiple of save_every" in err and "already uses the solver" in err
    assert "Traceback" not in err and not (tmp_path / "bad.nc").exists()
    # options of the emulator with another velocity are refused, not silently ignored
    assert main(base + ["-o", str(tmp_path / "bad.nc"), "--years", "1", "--refine", "3",
                        "--symmetrise", "x"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--symmetrise, --refine set the emulator" in err[0] and "sia" in err[0]
    assert not (tmp_path / "bad.nc").exists()
