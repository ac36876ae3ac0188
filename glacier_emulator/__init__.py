"""glacier-emulator: a fast, verified ice-flow velocity solver.

Layout (what is solved, how, and what learns it):

* :mod:`glacier_emulator.constants` -- the unit system (m, yr, MPa) and physical defaults;
* :mod:`glacier_emulator.fields` -- ``Geometry`` in, ``Velocity`` out: the provider interface;
* :mod:`glacier_emulator.physics` -- the Blatter-Pattyn energy, the shallow-ice approximation;
* :mod:`glacier_emulator.numerics` -- grid operators and the reference solver;
* :mod:`glacier_emulator.models` / :mod:`glacier_emulator.emulator` -- the U-Net and its API;
* :mod:`glacier_emulator.learning` -- datasets and training (supervised, physics, hybrid);
* :mod:`glacier_emulator.dynamics` -- the mass-conserving time stepper, SMB, providers;
* :mod:`glacier_emulator.io` -- NetCDF in and out;
* :mod:`glacier_emulator.verification` -- ISMIP-HOM and Halfar set-ups;
* :mod:`glacier_emulator.cli` -- the ``glacier-emulator`` command.
"""
import os as _os

_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

__version__ = "0.1.0"

from .constants import DEFAULT_PHYSICS, Physics, VerticalDiscretisation  # noqa: E402
from .fields import Geometry, InputError, Velocity  # noqa: E402

__all__ = ["Physics", "VerticalDiscretisation", "DEFAULT_PHYSICS", "Geometry", "Velocity", "InputError"]
