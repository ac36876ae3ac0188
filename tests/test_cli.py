"""The command line: solve and ismip-hom end to end, and bad input handled for people."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import xarray as xr

from glacier_emulator.cli import main
from glacier_emulator.fields import Geometry
from glacier_emulator.io import read_geometry, write_geometry


def small_glacier(n=12, dx=100.0) -> Geometry:
    x = np.arange(n) * dx
    X, Y = np.meshgrid(x, x)
    c = x.mean()
    thickness = np.clip(150 * (1 - ((X - c) / (0.4 * n * dx)) ** 2 - ((Y - c) / (0.4 * n * dx)) ** 2), 0, None)
    return Geometry(thickness=thickness, bed=1000 - 0.1 * X, dx=dx)


@pytest.fixture(scope="module")
def glacier_file(tmp_path_factory):
    return write_geometry(small_glacier(), tmp_path_factory.mktemp("cli") / "glacier.nc")


def test_solve_writes_cf_output(glacier_file, tmp_path, capsys):
    out = tmp_path / "velocity.nc"
    code = main(["solve", str(glacier_file), "-o", str(out), "--layers", "4", "--tolerance", "1e-7"])
    assert code == 0
    assert "converged" in capsys.readouterr().err
    with xr.open_dataset(out) as ds:
        assert ds["ubar"].attrs["units"] == "m year-1"
        assert ds["uvel"].sizes["zeta"] == 4
        assert ds.attrs["solver_converged"] == 1
        thk = ds["thk"].values
        assert np.all(ds["ubar"].values[thk == 0] == 0)
        assert np.nanmax(np.abs(ds["ubar"].values)) > 0
    assert read_geometry(out).shape == (12, 12)  # the output is a valid input again


def test_solve_physics_flags_change_the_answer(glacier_file, tmp_path):
    slow, fast = tmp_path / "slow.nc", tmp_path / "fast.nc"
    assert main(["solve", str(glacier_file), "-o", str(slow), "--layers", "4", "--rate-factor", "20"]) == 0
    assert main(["solve", str(glacier_file), "-o", str(fast), "--layers", "4", "--rate-factor", "80"]) == 0
    with xr.open_dataset(slow) as a, xr.open_dataset(fast) as b:
        assert float(np.abs(b["ubar"]).max()) > 1.5 * float(np.abs(a["ubar"]).max())


def test_solve_diagonal_probes_flag(tmp_path, capsys):
    """--diagonal-probes 0 solves without the preconditioner (recorded in the output), the
    default with it from the multilevel start of a 48 x 48 grid; the same velocity within the
    tolerance's reach; a negative count is one line and exit code 2, no output file."""
    path = write_geometry(small_glacier(n=48, dx=100.0), tmp_path / "g48.nc")
    runs = {}
    for probes in ("2", "0"):
        out = tmp_path / f"p{probes}.nc"
        assert main(["solve", str(path), "-o", str(out), "--layers", "4", "--diagonal-probes", probes]) == 0
        with xr.open_dataset(out) as ds:
            assert ds.attrs["solver_diagonal_probes"] == int(probes) and ds.attrs["solver_converged"] == 1
            assert ds.attrs["solver_preconditioned"] == (probes != "0")
            runs[probes] = np.hypot(ds["ubar"].values, ds["vbar"].values)
    assert np.abs(runs["2"] - runs["0"]).max() < 1e-2 * runs["0"].max()
    capsys.readouterr()
    bad = tmp_path / "bad.nc"
    assert main(["solve", str(path), "-o", str(bad), "--diagonal-probes", "-1"]) == 2
    err = capsys.readouterr().err
    assert "diagonal_probes" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not bad.exists()


def _bad_file(tmp_path, kind):
    g = small_glacier()
    path = tmp_path / f"{kind}.nc"
    write_geometry(g, path)
    if kind in ("nan", "negative"):
        with xr.open_dataset(path) as ds:
            ds = ds.load()
        thk = ds["thk"].values.copy()
        thk[3, 3] = np.nan if kind == "nan" else -5.0
        ds["thk"].values = thk
        path.unlink()
        ds.to_netcdf(path)
    elif kind == "units":
        with xr.open_dataset(path) as ds:
            ds = ds.load()
        ds["thk"].attrs["units"] = "furlong"
        path.unlink()
        ds.to_netcdf(path)
    elif kind == "missing":
        with xr.open_dataset(path) as ds:
            ds = ds.drop_vars(["thk", "usurf"]).load()  # bed alone: no thickness
        path.unlink()
        ds.to_netcdf(path)
    elif kind == "text":
        path.write_text("this is not a NetCDF file\n")
    elif kind == "truncated":
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    return path


@pytest.mark.parametrize("kind,words", [
    ("nan", ["thk", "NaN"]), ("negative", ["thk", "negative"]), ("units", ["thk", "furlong"]),
    ("missing", ["thickness"]), ("text", []), ("truncated", []),
])
def test_solve_bad_input_one_line_no_output(tmp_path, capsys, kind, words):
    path = _bad_file(tmp_path, kind)
    out = tmp_path / "out.nc"
    code = main(["solve", str(path), "-o", str(out), "--layers", "3"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert path.name in err
    for w in words:
        assert w in err
    assert not out.exists()
    assert not list(tmp_path.glob(".out.nc*"))  # no temporary file left behind


def test_bad_settings_are_one_line_errors(glacier_file, tmp_path, capsys):
    assert main(["solve", str(glacier_file), "-o", str(tmp_path / "o.nc"), "--tolerance", "-1"]) == 2
    assert "tolerance" in capsys.readouterr().err
    assert main(["solve", str(glacier_file), "-o", str(tmp_path / "missing_dir" / "o.nc")]) == 2
    assert "missing_dir" in capsys.readouterr().err
    assert main(["solve", str(tmp_path / "nope.nc"), "-o", str(tmp_path / "o.nc")]) == 2
    assert "nope.nc" in capsys.readouterr().err


def test_ismip_hom_command_writes_profile(tmp_path, capsys):
    out = tmp_path / "b.csv"
    code = main(["ismip-hom", "B", "--length", "20", "--resolution", "16", "-o", str(out)])
    assert code == 0
    rows = out.read_text().splitlines()
    assert rows[0] == "x_hat,vx,vy,speed"
    values = np.array([[float(v) for v in r.split(",")] for r in rows[1:]])
    assert values.shape == (17, 4)
    assert 40 < values[:, 1].max() < 56  # LMLa ensemble 48.3 +- 1.8 m/yr at full resolution
    assert np.abs(values[:, 2]).max() < 1e-3 * values[:, 1].max()  # no flow across the flowline


def test_cli_process_exit_code_and_no_traceback(tmp_path):
    bad = tmp_path / "bad.nc"
    bad.write_text("garbage")
    proc = subprocess.run(
        [sys.executable, "-m", "glacier_emulator.cli", "solve", str(bad), "-o", str(tmp_path / "o.nc")],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "bad.nc" in proc.stderr.strip().splitlines()[-1]


def test_main_formats_warnings_for_its_command_only(tmp_path, capsys):
    """The CLI prints warnings as one line named after the command while it runs; called from
    Python, it leaves the warning format as it found it (the caller's later warnings are theirs),
    after a command that succeeded and after one that failed."""
    import warnings

    before = warnings.formatwarning
    assert main(["models"]) == 0
    assert warnings.formatwarning is before
    assert main(["predict", str(tmp_path / "missing.nc"), "-o", str(tmp_path / "out.nc")]) == 2
    assert "missing.nc" in capsys.readouterr().err
    assert warnings.formatwarning is before and not (tmp_path / "out.nc").exists()
