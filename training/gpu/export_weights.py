"""Write a Keras model's convolution weights and architecture to an ``.npz`` for the JAX recipe.

    python training/gpu/export_weights.py pretrained/velocity3d-default.keras training/gpu/init.npz

``--float16`` stores the kernels of 4096 values or more in half precision, as the shipped models
are stored (``glacier_emulator.io.weights``): a 32-filter network's start (31 MB in float32) then
fits the 64 MB that travel to the GPU machine with the packed states; ``unet_jax.load_params``
reads every array back as float32.
"""
import argparse
import json

import numpy as np


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="a .keras file of a GlacierUNet")
    parser.add_argument("output", help="the .npz to write")
    parser.add_argument("--float16", action="store_true",
                        help="kernels of 4096 values or more in half precision (about half the size)")
    args = parser.parse_args(argv)
    from glacier_emulator.emulator import Emulator
    from glacier_emulator.io.weights import FLOAT16_MIN_SIZE

    model = Emulator.load(args.model).model
    config = model.constructor_arguments()
    if config.get("symmetrise") in ("xy", "dihedral"):
        # the shipped models predict with more images of the grid than they train with; the
        # weights are the same (GlacierUNet.with_symmetrise): the JAX recipe trains with "x"
        print(f"{args.model}: symmetrise={config['symmetrise']!r} exported as 'x' for training "
              "(training/set_symmetrise.py sets it back on the imported model)")
        config["symmetrise"] = "x"
    arrays = {}
    for layer in model.layers:
        weights = layer.get_weights()
        if weights:
            kernel, bias = weights
            if args.float16 and kernel.size >= FLOAT16_MIN_SIZE:
                kernel = kernel.astype(np.float16)
            arrays[f"{layer.name}/kernel"], arrays[f"{layer.name}/bias"] = kernel, bias
    np.savez(args.output, __config__=np.array(json.dumps(config)), **arrays)
    print(f"wrote {args.output}: {len(arrays) // 2} layers, config {config}")


if __name__ == "__main__":
    main()
