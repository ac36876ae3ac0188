"""NetCDF in and out (see :mod:`glacier_emulator.io.netcdf`)."""
from .netcdf import (
    CONVERSIONS,
    INPUT_NAMES,
    VARIABLES,
    check_netcdf3_complete,
    geometry_to_dataset,
    read_geometry,
    safe_write,
    velocity_to_dataset,
    write_geometry,
    write_velocity,
)

__all__ = [
    "read_geometry",
    "write_geometry",
    "geometry_to_dataset",
    "velocity_to_dataset",
    "write_velocity",
    "safe_write",
    "check_netcdf3_complete",
    "VARIABLES",
    "INPUT_NAMES",
    "CONVERSIONS",
]
