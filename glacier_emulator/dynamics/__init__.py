"""Transient runs: the mass-conserving time stepper, SMB models and velocity providers.

* :mod:`~glacier_emulator.dynamics.stepper` -- :class:`Stepper` (``step``, ``run_until``,
  ``run_until_and_store``, ``from_output``) and :class:`RunConfig`;
* :mod:`~glacier_emulator.dynamics.smb` -- :class:`FieldSMB`, :class:`ELASMB`,
  :class:`TimeSeriesSMB`, :func:`smb_from_config`;
* :mod:`~glacier_emulator.dynamics.providers` -- the emulator, the reference solver and the SIA
  behind one interface, :func:`make_provider`;
* :mod:`~glacier_emulator.dynamics.check` -- :class:`VelocityCheck`: the run's velocity against
  the reference solver at chosen output times.

Example:
    >>> from glacier_emulator.data import example_geometry
    >>> from glacier_emulator.dynamics import ELASMB, SIAProvider, Stepper
    >>> stepper = Stepper(example_geometry(nx=25, ny=25, dx=400.0), SIAProvider(),
    ...                   ELASMB.constant(ela=2300, gradabl=0.009, gradacc=0.005, accmax=2.0))
    >>> ds = stepper.run_until_and_store(10.0, every=5.0)
    >>> [int(year) for year in ds.time.dt.year], ds.volume.attrs["units"]
    ([0, 5, 10], 'm3')
"""
from .check import VelocityCheck
from .providers import (
    PROVIDERS,
    EmulatorProvider,
    PrescribedVelocity,
    SIAProvider,
    SolverProvider,
    VelocityProvider,
    faces_from_nodes,
    make_provider,
)
from .smb import ELASMB, FieldSMB, SurfaceMassBalance, TimeSeriesSMB, smb_from_config
from .stepper import RunConfig, Stepper

__all__ = [
    "Stepper",
    "RunConfig",
    "VelocityCheck",
    "VelocityProvider",
    "SIAProvider",
    "SolverProvider",
    "EmulatorProvider",
    "PrescribedVelocity",
    "make_provider",
    "faces_from_nodes",
    "PROVIDERS",
    "SurfaceMassBalance",
    "FieldSMB",
    "ELASMB",
    "TimeSeriesSMB",
    "smb_from_config",
]
