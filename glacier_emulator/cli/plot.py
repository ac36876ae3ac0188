"""``glacier-emulator plot OUTPUT.nc -o FIGURE.png``: a quick look at a run's output.

Three panels: the ice thickness and the depth-averaged speed at the last record (maps, ice-free
nodes blank), and the ice volume through time (with the error of the velocity against the
reference solver where the run was checked: ``run --check-every``). Drawn with matplotlib's Agg
backend (no display needed).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "plot",
        help="plot thickness and speed at the last step and the volume through time",
        description="Plot the output of `glacier-emulator run`: maps of the ice thickness and "
        "the depth-averaged speed at the last record, and the ice volume time series.",
    )
    p.add_argument("input", metavar="OUTPUT.nc", help="a time series written by `glacier-emulator run`")
    p.add_argument("-o", "--output", required=True, metavar="FIGURE.png", help="image to write")
    p.add_argument("--dpi", type=int, default=120, help="resolution of the image (default 120)")
    p.set_defaults(func=run)


def _years(ds):
    import numpy as np

    from ..dynamics.stepper import years_of

    if "year" in ds.variables:
        return np.asarray(ds["year"].values, float)
    return years_of(ds["time"].values, ds["time"].attrs)


def plot_run(ds, path, *, dpi: int = 120, title: str | None = None) -> Path:
    """Draw the figure of a run's Dataset to ``path`` (PNG, PDF, SVG: by the suffix)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from ..fields import InputError

    missing = [v for v in ("thk", "volume") if v not in ds]
    if missing:
        raise InputError(f"{title or 'dataset'}: not a `glacier-emulator run` output; missing {missing}")
    years = _years(ds)
    thk = np.asarray(ds["thk"].isel(time=-1).values, float)
    if "velbar_mag" in ds:
        speed = np.asarray(ds["velbar_mag"].isel(time=-1).values, float)
    else:
        speed = np.hypot(ds["ubar"].isel(time=-1).values, ds["vbar"].isel(time=-1).values)
    ice = thk > 0
    x = np.asarray(ds["x"].values, float) / 1000.0
    y = np.asarray(ds["y"].values, float) / 1000.0
    extent = (x[0], x[-1], y[0], y[-1])

    fig, axes = plt.subplots(1, 3, figsize=(14, 4.2), constrained_layout=True)
    for ax, field, label, cmap in (
        (axes[0], np.where(ice, thk, np.nan), "ice thickness (m)", "Blues"),
        (axes[1], np.where(ice, speed, np.nan), "depth-averaged speed (m/yr)", "viridis"),
    ):
        if "topg" in ds:
            ax.imshow(np.asarray(ds["topg"].values, float), origin="lower", extent=extent,
                      cmap="Greys", alpha=0.5)
        image = ax.imshow(field, origin="lower", extent=extent, cmap=cmap)
        fig.colorbar(image, ax=ax, label=label, shrink=0.85)
        ax.set_xlabel("x (km)")
        ax.set_ylabel("y (km)")
        ax.set_title(f"{label.split(' (')[0]}, year {years[-1]:g}")
    volume = np.asarray(ds["volume"].values, float) / 1e9
    axes[2].plot(years, volume, "o-")
    axes[2].set_xlabel("year")
    axes[2].set_ylabel("ice volume (km$^3$)")
    axes[2].set_title("ice volume")
    axes[2].grid(alpha=0.3)
    check = (np.asarray(ds["velocity_check_error"].values, float) if "velocity_check_error" in ds
             else np.array([]))
    if np.isfinite(check).any():  # run --check-every: the velocity's error against the solver
        checked = np.isfinite(check)
        twin = axes[2].twinx()
        twin.plot(years[checked], 100.0 * check[checked], "s--", color="tab:red", label="all ice")
        if "velocity_check_error_interior" in ds:  # away from ice-free ground and the domain edge
            interior = np.asarray(ds["velocity_check_error_interior"].values, float)
            twin.plot(years[checked], 100.0 * interior[checked], "^:", color="tab:orange",
                      label="interior")
            twin.legend(loc="upper right", fontsize="small")
        twin.set_ylabel("ubar error against the solver (%)", color="tab:red")
        twin.set_ylim(bottom=0.0)
        axes[2].set_title("ice volume, and the velocity check")
    if title:
        fig.suptitle(title)
    path = Path(path)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def run(args: argparse.Namespace) -> int:
    import xarray as xr

    from ..fields import InputError

    source = Path(args.input)
    if not source.is_file():
        raise FileNotFoundError(f"{source}: no such file")
    output = Path(args.output)
    if not output.parent.is_dir():
        raise FileNotFoundError(f"{output}: cannot write, directory '{output.parent}' does not exist")
    try:
        ds = xr.open_dataset(source, decode_times=False)
    except (OSError, ValueError, RuntimeError) as exc:
        raise InputError(f"{source}: not a readable NetCDF file ({exc})") from None
    with ds:
        plot_run(ds, output, dpi=args.dpi, title=source.name)
    print(f"{output}: figure of {source}", file=sys.stderr)
    return 0
