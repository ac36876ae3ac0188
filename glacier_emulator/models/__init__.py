"""The neural networks of the emulator: the U-Net (:mod:`.unet`) and its layers (:mod:`.layers`).

Importing this package registers every custom layer with Keras, which ``keras.saving.load_model``
needs (under ``safe_mode=True``) to read a ``.keras`` file written by this package.
"""
from .layers import (
    CropTo,
    GridTranspose,
    IceMask,
    InputNormalization,
    LocalFlowPrior,
    MirrorAverage,
    MirrorStack,
    OutputScaling,
    PadToMultiple,
    ScaleBy,
)
from .unet import INPUT_CHANNELS, INPUT_UNITS, GlacierUNet, build_unet, input_names, output_names

__all__ = [
    "GlacierUNet",
    "build_unet",
    "INPUT_CHANNELS",
    "INPUT_UNITS",
    "input_names",
    "output_names",
    "PadToMultiple",
    "CropTo",
    "InputNormalization",
    "OutputScaling",
    "IceMask",
    "MirrorStack",
    "MirrorAverage",
    "GridTranspose",
    "LocalFlowPrior",
    "ScaleBy",
]
