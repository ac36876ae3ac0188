"""Labelled datasets: synthetic geometries solved by the reference solver, one NetCDF per sample.

Each sample file has the format ``glacier-emulator solve`` writes (geometry, sliding and rate
factor inputs; ``uvel``/``vvel`` on the levels; depth-averaged, surface and basal velocities) plus
the solver's tolerance and convergence report as global attributes. Generation is deterministic
for a seed and resumable: finished samples (complete files) are skipped.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from ..constants import DEFAULT_PHYSICS, DEFAULT_VERTICAL, Physics, VerticalDiscretisation
from .synthetic import SyntheticConfig, sample_geometry


def sample_path(directory, index: int) -> Path:
    return Path(directory) / f"sample_{index:05d}.nc"


def make_dataset(
    directory,
    *,
    samples: int,
    seed: int = 0,
    synthetic: SyntheticConfig = SyntheticConfig(),
    physics: Physics = DEFAULT_PHYSICS,
    vertical: VerticalDiscretisation = DEFAULT_VERTICAL,
    solver_config=None,
    start: int = 0,
    progress: Optional[bool] = None,
    labels: bool = True,
) -> dict:
    """Generate ``samples`` labelled glaciers into ``directory``; returns counts and failures.

    Samples whose solve did not converge are still written (flagged ``solver_converged = 0``) so
    that a resumed run does not retry them forever; training skips them. With ``labels=False``
    only the geometries are written (no solve): data for physics-informed training.
    """
    import sys

    from tqdm import tqdm

    from ..io.netcdf import write_geometry

    if samples < 1:
        raise ValueError(f"samples must be >= 1. Received: samples={samples!r}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    done = skipped = not_converged = 0
    disable = (not sys.stderr.isatty()) if progress is None else not progress
    for index in tqdm(range(start, start + samples), desc="solving", unit="glacier", disable=disable):
        path = sample_path(directory, index)
        if path.exists():
            skipped += 1
            continue
        geometry = sample_geometry(index, seed=seed, config=synthetic)
        if not labels:
            write_geometry(geometry, path)
            done += 1
            continue
        converged = label_geometry(geometry, path, physics=physics, vertical=vertical,
                                   solver_config=solver_config,
                                   attrs={"sample_index": index, "seed": seed,
                                          "kind": geometry.attrs.get("kind", "")})
        not_converged += not converged
        done += 1
    return {"written": done, "skipped": skipped, "not_converged": not_converged}


def label_geometry(geometry, path, *, physics: Physics = DEFAULT_PHYSICS,
                   vertical: VerticalDiscretisation = DEFAULT_VERTICAL, solver_config=None,
                   attrs: Optional[dict] = None) -> bool:
    """Solve ``geometry`` with the reference solver and write it as one labelled sample (the
    solver's settings and convergence report, plus ``attrs``, as global attributes; written
    atomically). Returns whether the solve converged."""
    from ..io.netcdf import write_velocity
    from ..numerics.solver import SolverConfig, solve

    solver_config = solver_config or SolverConfig(tolerance=1e-9)
    result = solve(geometry, physics=physics, vertical=vertical, config=solver_config)
    write_velocity(
        result.velocity, geometry, path,
        attrs={
            **(attrs or {}),
            "solver_converged": int(result.converged),
            "solver_iterations": result.iterations,
            "solver_tolerance": solver_config.tolerance,
            "solver_gradient_tolerance": solver_config.gradient_tolerance,
            "solver_energy": result.energy,
            "solver_wall_time_s": result.wall_time,
            "physics": repr(physics.to_dict()),
            "vertical_levels": vertical.levels,
            "vertical_spacing": vertical.spacing,
        },
    )
    return bool(result.converged)
