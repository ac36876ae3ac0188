"""Pack reference-solver labels of a few validation glaciers for the GPU run's label check.

    python training/gpu/make_check_labels.py DATA/val64 2 standard DATA/valdef64 6 default_physics \
        --count 16 8 --output training/gpu/check_labels.npz

Each (folder, seed, config) names a make-dataset folder of the reference solver and how its
glaciers were drawn (``sample_geometry(index, seed=seed, config=...)``); the GPU run draws the same
glaciers, solves them and reports the relative L2 difference from these labels.
"""
import argparse
import json
from pathlib import Path

import numpy as np


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("sets", nargs="+", help="FOLDER SEED CONFIG triples")
    p.add_argument("--count", type=int, nargs="+", required=True, help="glaciers per set")
    p.add_argument("--output", required=True)
    args = p.parse_args(argv)
    import xarray as xr

    triples = [args.sets[i:i + 3] for i in range(0, len(args.sets), 3)]
    specs, labels, thickness = [], [], []
    for (folder, seed, config), count in zip(triples, args.count):
        for path in sorted(Path(folder).glob("sample_*.nc"))[:count]:
            with xr.open_dataset(path) as ds:
                if int(ds.attrs.get("solver_converged", 1)) == 0:
                    continue
                index = int(ds.attrs["sample_index"])
                u, v = ds["uvel"].values, ds["vvel"].values
                labels.append(np.concatenate([u, v]).transpose(1, 2, 0).astype(np.float32))
                thickness.append(ds["thk"].values.astype(np.float32))
                specs.append((config, int(seed), index))
    np.savez_compressed(args.output, specs=np.array(json.dumps(specs)), labels=np.stack(labels),
                        thickness=np.stack(thickness))
    print(f"wrote {args.output}: {len(specs)} glaciers")


if __name__ == "__main__":
    main()
