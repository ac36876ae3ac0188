"""Import the numpy-only parts of glacier_emulator on a machine without TensorFlow.

The GPU recipe runs on JAX (the device image has JAX and no TensorFlow). The package imports
TensorFlow at the top of a few modules whose numpy functions it needs here (the synthetic
geometries, the solver's multigrid transfer and scales, the physics constants); a stand-in
module lets those imports succeed. Nothing TensorFlow-based may be called through it.
"""
import sys
import types


def install() -> None:
    if "tensorflow" in sys.modules:
        return
    try:
        import tensorflow  # noqa: F401  (present: use the real one)
        return
    except ImportError:
        pass
    stub = types.ModuleType("tensorflow")

    def __getattr__(name):  # tf.float32 in default arguments, tf.Tensor in annotations
        return None

    stub.__getattr__ = __getattr__
    sys.modules["tensorflow"] = stub
