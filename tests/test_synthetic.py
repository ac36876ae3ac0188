"""Synthetic glaciers and labelled datasets: deterministic, diverse, glaciological, resumable."""
import numpy as np
import pytest
import xarray as xr

from glacier_emulator.constants import VerticalDiscretisation
from glacier_emulator.learning.dataset import make_dataset, sample_path
from glacier_emulator.learning.synthetic import KINDS, SyntheticConfig, sample_geometry
from glacier_emulator.numerics.solver import SolverConfig


def test_samples_are_deterministic_and_independent():
    cfg = SyntheticConfig(grid=24)
    a = sample_geometry(3, seed=7, config=cfg)
    b = sample_geometry(3, seed=7, config=cfg)
    c = sample_geometry(4, seed=7, config=cfg)
    np.testing.assert_array_equal(a.thickness, b.thickness)
    np.testing.assert_array_equal(a.sliding_coefficient, b.sliding_coefficient)
    assert not np.array_equal(a.thickness, c.thickness)


@pytest.mark.parametrize("kind", KINDS)
def test_each_kind_is_a_plausible_glacier(kind):
    cfg = SyntheticConfig(grid=48, kinds=(kind,))
    for i in range(4):
        g = sample_geometry(i, seed=11, config=cfg)
        assert g.attrs["kind"] == kind
        ice = g.thickness > 0
        assert 0.05 < ice.mean() < 0.9  # a glacier, not an empty or a full domain
        assert not ice[0].any() and not ice[-1].any() and not ice[:, 0].any() and not ice[:, -1].any()
        assert 20 < g.thickness.max() <= 1000
        assert 50 <= g.dx <= 200
        sx, sy = g.slopes()
        tau = 910 * 9.81e-6 * g.thickness * np.hypot(sx, sy)
        assert np.median(tau[ice]) < 0.3  # driving stress of real glaciers (MPa)
        assert np.all(g.sliding_coefficient > 0)


def test_config_validation():
    with pytest.raises(ValueError, match="kinds"):
        SyntheticConfig(kinds=("moon",))
    with pytest.raises(ValueError, match="grid"):
        SyntheticConfig(grid=4)


def test_make_dataset_is_resumable(tmp_path):
    kw = dict(samples=2, seed=3, synthetic=SyntheticConfig(grid=16),
              vertical=VerticalDiscretisation(levels=3), solver_config=SolverConfig(tolerance=1e-6),
              progress=False)
    first = make_dataset(tmp_path, **kw)
    assert first == {"written": 2, "skipped": 0, "not_converged": 0}
    stamp = sample_path(tmp_path, 0).stat().st_mtime_ns
    again = make_dataset(tmp_path, **{**kw, "samples": 3})
    assert again["written"] == 1 and again["skipped"] == 2
    assert sample_path(tmp_path, 0).stat().st_mtime_ns == stamp
    with xr.open_dataset(sample_path(tmp_path, 2)) as ds:
        assert ds.attrs["solver_tolerance"] == 1e-6
        assert ds.attrs["seed"] == 3 and ds.attrs["sample_index"] == 2
        assert ds["uvel"].sizes["zeta"] == 3
        assert ds["ubar"].attrs["units"] == "m year-1"


def test_default_physics_glaciers():
    """``uniform_sliding`` gives every node the same coefficient without changing the geometry of
    the seed's sample; a wider driving-stress range gives thicker ice on the same slopes."""
    base = sample_geometry(3, seed=7, config=SyntheticConfig(grid=32))
    uniform = sample_geometry(3, seed=7, config=SyntheticConfig(grid=32, uniform_sliding=0.0464,
                                                                rate_factor_range=(78.0, 78.0)))
    np.testing.assert_array_equal(uniform.thickness, base.thickness)
    np.testing.assert_array_equal(uniform.bed, base.bed)
    assert np.all(uniform.sliding_coefficient == 0.0464) and uniform.rate_factor == 78.0
    assert np.ptp(base.sliding_coefficient) > 0
    stiff = [sample_geometry(i, seed=7, config=SyntheticConfig(grid=32, kinds=("icecap",),
                                                               driving_stress_range=(0.2, 0.25)))
             for i in range(3)]
    soft = [sample_geometry(i, seed=7, config=SyntheticConfig(grid=32, kinds=("icecap",),
                                                              driving_stress_range=(0.04, 0.05)))
            for i in range(3)]
    assert all(a.thickness.max() > b.thickness.max() for a, b in zip(stiff, soft))
