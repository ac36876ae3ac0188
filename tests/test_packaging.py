"""The wheel carries the package data: the example glacier and every shipped model."""
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp("wheel")
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(out), str(ROOT)],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    (path,) = out.glob("glacier_emulator-*.whl")
    with zipfile.ZipFile(path) as zf:
        return {info.filename: info.file_size for info in zf.infolist()}


def test_wheel_has_example_glacier_and_cli(wheel):
    assert "glacier_emulator/data/example_glacier.nc" in wheel
    assert "glacier_emulator/data/example_run.yaml" in wheel
    assert "glacier_emulator/pretrained/__init__.py" in wheel
    assert any(name.endswith("entry_points.txt") for name in wheel)


def test_wheel_has_every_shipped_model(wheel):
    shipped = sorted(p.name for p in (ROOT / "pretrained").glob("*.keras"))
    assert len(shipped) >= 2, shipped  # a depth-averaged and a 3-D model (tests/test_pretrained.py)
    for name in shipped:
        assert f"glacier_emulator/pretrained/{name}" in wheel
        assert f"glacier_emulator/pretrained/{Path(name).with_suffix('.json')}" in wheel
        assert f"glacier_emulator/pretrained/{Path(name).with_suffix('.md')}" in wheel
        size = wheel[f"glacier_emulator/pretrained/{name}"]
        assert 0 < size <= 50 * 2**20, (name, size)


def test_machine_record_of_benchmarks():
    # every benchmark and model card stores this record next to its timings
    import os

    from glacier_emulator.provenance import describe_machine, load_average, machine_info

    m = machine_info()
    assert m["cpu_count"] == os.cpu_count() and 1 <= m["cpus_usable"] <= m["cpu_count"]
    assert m["platform"] and m["python"]
    m["load_average_end"] = load_average()
    line = describe_machine(m)
    assert f"{m['cpu_count']} CPUs" in line and m["platform"] in line
    if m["load_average_start"] is not None:
        assert str(m["load_average_start"]) in line and "at the end" in line
    assert "GiB" not in describe_machine(dict(m, memory_gib=None))
    assert "None" not in describe_machine(dict(m, load_average_end=None))
