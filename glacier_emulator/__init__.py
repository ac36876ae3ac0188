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
import sys as _sys

_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _import_tensorflow_quietly() -> None:
    """Import TensorFlow with its start-up chatter (absl/oneDNN notices written to the stderr
    file descriptor before logging is configured) sent to /dev/null, so that commands print only
    what they mean to. Import errors still raise; ``GLACIER_EMULATOR_DEBUG=1`` keeps the chatter."""
    if "tensorflow" in _sys.modules or _os.environ.get("GLACIER_EMULATOR_DEBUG"):
        return
    try:
        fd = _sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # no real stderr (e.g. captured)
        return
    _sys.stderr.flush()
    saved = _os.dup(fd)
    devnull = _os.open(_os.devnull, _os.O_WRONLY)
    try:
        _os.dup2(devnull, fd)
        import tensorflow  # noqa: F401
    finally:
        _os.dup2(saved, fd)
        _os.close(saved)
        _os.close(devnull)


_import_tensorflow_quietly()

__version__ = "0.1.0"

from .constants import DEFAULT_PHYSICS, Physics, VerticalDiscretisation  # noqa: E402
from .fields import Geometry, InputError, Velocity  # noqa: E402

__all__ = ["Physics", "VerticalDiscretisation", "DEFAULT_PHYSICS", "Geometry", "Velocity", "InputError"]
