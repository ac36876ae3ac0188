#!/usr/bin/env python
"""Recipe step: a trained U-Net made wider without changing what it computes.

    python training/widen.py velocity3d-prior.keras velocity3d-prior-wide.keras --filters 32

Writes OUT.keras and OUT.json: the source's architecture with ``filters`` (the width of the finest
level, doubled at each coarser one) raised to ``--filters``. Every convolution keeps the source's
weights for its old outputs from its old inputs; the new outputs get a fresh random kernel
(Glorot-uniform times ``--init-scale``) from all inputs, and the weights from new inputs into old
outputs are zero. The old channels therefore compute exactly what they did, the velocity head
reads only them, and the widened model predicts what the source predicts (to round-off:
checked on random glaciers before writing). Training then starts from the source's function
with the new channels free to take up what it could not fit (``init_from`` in the config):
velocity3d-prior 1.4 under-fits at 16 filters (training/README.md).
"""
from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import numpy as np


def widened_kernel(old_kernel, old_bias, in_index, in_new, out_new, rng, init_scale):
    """The kernel and bias of a convolution widened to ``in_new`` inputs and ``out_new`` outputs.

    ``in_index``: positions of the old input channels among the new ones. Old outputs keep their
    weights from old inputs and get zeros from new inputs; new outputs get Glorot-uniform weights
    (times ``init_scale``) from every input and zero bias.
    """
    kh, kw, in_old, out_old = old_kernel.shape
    fan_in, fan_out = kh * kw * in_new, kh * kw * out_new
    limit = init_scale * np.sqrt(6.0 / (fan_in + fan_out))
    kernel = rng.uniform(-limit, limit, (kh, kw, in_new, out_new)).astype(old_kernel.dtype)
    kernel[:, :, :, :out_old] = 0.0
    kernel[:, :, np.asarray(in_index), :out_old] = old_kernel
    bias = np.zeros(out_new, old_bias.dtype)
    bias[:out_old] = old_bias
    return kernel, bias


def widen(model, filters: int, *, seed: int = 0, init_scale: float = 1.0):
    """A copy of the :class:`GlacierUNet` ``model`` with ``filters`` at the finest level.

    Its predictions equal ``model``'s (see the module docstring); ``filters`` must not be smaller
    than ``model.filters``.
    """
    import keras

    from glacier_emulator.models.unet import GlacierUNet

    if filters < model.filters:
        raise ValueError(f"--filters {filters} is narrower than the source's {model.filters}")
    config = model.get_config()
    config["filters"] = int(filters)
    wide = GlacierUNet.from_config(config)
    rng = np.random.default_rng(seed)
    old_f, new_f, depth = model.filters, int(filters), model.depth

    def width(level, f):
        return f * 2**level

    def block_input(layer_name, n_inputs):
        """(old positions among the new inputs, number of new inputs) of a convolution's input;
        ``n_inputs``: its input channels in the source."""
        kind, block = layer_name.rsplit("_conv", 1)
        block = int(block)
        if kind == "bottom":
            level = depth
        else:
            level = int(kind[4:]) if kind.startswith("down") else int(kind[2:])
        if block > 0:  # the previous convolution of the same level
            return list(range(width(level, old_f))), width(level, new_f)
        if kind == "down0":  # the network's (unchanged) input channels
            return list(range(n_inputs)), n_inputs
        if kind.startswith("down") or kind == "bottom":  # pooled output of the level above
            return list(range(width(level - 1, old_f))), width(level - 1, new_f)
        # decoder: concat([upsampled level + 1, skip of this level])
        below_old, below_new = width(level + 1, old_f), width(level + 1, new_f)
        index = list(range(below_old)) + [below_new + k for k in range(width(level, old_f))]
        return index, below_new + width(level, new_f)

    for layer in model.layers:
        if not isinstance(layer, keras.layers.Conv2D):
            continue
        kernel, bias = layer.get_weights()
        target = wide.get_layer(layer.name)
        if layer.name == "velocity_head":  # reads the old channels of up0 only
            new_kernel = np.zeros(target.get_weights()[0].shape, kernel.dtype)
            new_kernel[:, :, : kernel.shape[2], :] = kernel
            target.set_weights([new_kernel, bias])
            continue
        index, n_in = block_input(layer.name, kernel.shape[2])
        out_new = target.get_weights()[0].shape[3]
        target.set_weights(list(widened_kernel(kernel, bias, index, n_in, out_new, rng, init_scale)))
    return wide


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("source", help="a model, NAME.keras (with NAME.json)")
    parser.add_argument("output", help="the model to write, NAME.keras")
    parser.add_argument("--filters", type=int, required=True, help="width of the finest level")
    parser.add_argument("--init-scale", type=float, default=1.0,
                        help="scale of the new channels' random kernels (default 1: Glorot-uniform)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the new channels' kernels")
    args = parser.parse_args(argv)

    from glacier_emulator.emulator import Emulator

    source = Emulator.load(args.source)
    try:
        wide = widen(source.model, args.filters, seed=args.seed, init_scale=args.init_scale)
    except ValueError as exc:  # one line, no traceback, no file
        raise SystemExit(f"widen.py: {args.source}: {exc}") from None
    rng = np.random.default_rng(1)
    x = np.zeros((2, 40, 56, source.model.in_channels), "float32")
    x[..., 0] = rng.uniform(0, 400, x.shape[:3]) * (rng.uniform(size=x.shape[:3]) > 0.2)
    x[..., 1:3] = rng.normal(0, 0.1, x.shape[:3] + (2,))
    x[..., 3:] = source.model.input_scale[3:]
    before, after = np.asarray(source.model(x)), np.asarray(wide(x))
    change = np.abs(after - before).max() / max(np.abs(before).max(), 1e-30)
    if change > 1e-4:
        raise SystemExit(f"widening changed the prediction by {change:.2e} (relative): a bug")
    training = dict(source.metadata.training_data)
    training["widened"] = (f"from {source.metadata.name} {source.metadata.version} "
                           f"({source.model.filters} filters) to {args.filters} filters, same "
                           f"function (training/widen.py, seed {args.seed}, init scale {args.init_scale})")
    architecture = dict(source.metadata.architecture, filters=int(args.filters))
    out = Emulator(wide, dataclasses.replace(source.metadata, training_data=training,
                                             architecture=architecture))
    out.save(Path(args.output))
    print(f"{args.output}: {wide.count_params()} parameters (source {source.model.count_params()}); "
          f"prediction changed by {change:.1e} (relative max)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
