"""ISMIP-HOM A and B (Pattyn et al. 2008) against the published first-order (LMLa) ensemble.

Criteria: the maximum of the surface-speed profile lies within the LMLa mean +- 2 std, and the
RMS difference of the profile from the LMLa mean curve is <= 5 % of its maximum. The ensemble
tables (tests/data/ismip_hom, CC-BY 3.0) were derived from the paper's data supplement.
"""
from pathlib import Path

import numpy as np
import pytest

from glacier_emulator.verification.ismip_hom import load_reference, run_experiment

DATA = Path(__file__).parent / "data" / "ismip_hom"
FAST = {("A", 80), ("B", 20)}


def summary_row(experiment, length_km):
    for line in (DATA / "summary_max_surface_speed_AB.csv").read_text().splitlines():
        parts = line.split(",")
        if parts[:3] == [experiment, str(length_km), "LMLa"]:
            return float(parts[4]), float(parts[5])
    raise KeyError((experiment, length_km))


CASES = [
    pytest.param(e, L, marks=() if (e, L) in FAST else pytest.mark.slow, id=f"{e}{L:03d}")
    for e in ("A", "B")
    for L in (5, 10, 20, 40, 80, 160)
]


@pytest.mark.parametrize("experiment,length_km", CASES)
def test_ismip_hom_against_lmla_ensemble(experiment, length_km):
    profile, result = run_experiment(experiment, length_km=length_km, resolution=40)
    assert result.converged, result.summary()
    ref = load_reference(experiment, length_km, DATA)
    key = "speed" if experiment == "A" else "vx"
    ours = np.interp(ref["x_hat"], profile["x_hat"], profile[key])
    mean_max, std_max = summary_row(experiment, length_km)
    assert abs(ours.max() - mean_max) <= 2 * std_max, (ours.max(), mean_max, std_max)
    curve = ref["LMLa_mean"]
    rms = np.sqrt(np.nanmean((ours - curve) ** 2))
    assert rms <= 0.05 * np.nanmax(curve), rms / np.nanmax(curve)
