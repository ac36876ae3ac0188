"""``glacier-emulator train``: train an emulator on NetCDF samples (supervised, physics, hybrid).

Example::

    glacier-emulator make-dataset -o data/ --samples 2000 --grid 64 --seed 1
    glacier-emulator train data/ -o ubar.keras --config training/configs/ubar-default.yaml

Writes ``ubar.keras`` + ``ubar.json`` (the model and its metadata), ``ubar.ckpt/`` (checkpoints;
``--resume`` continues from them) and ``ubar.log.csv`` (the loss curve).
"""
from __future__ import annotations

import sys


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "train", help="train an emulator on NetCDF samples (supervised, physics or hybrid)",
        description="Train a U-Net emulator on NetCDF samples (files or folders of *.nc, e.g. "
        "from `glacier-emulator make-dataset`). Settings come from --config (a YAML file of "
        "TrainConfig keys, see training/README.md); the flags override them. Writes MODEL.keras "
        "and MODEL.json, checkpoints in MODEL.ckpt/ and the loss curve in MODEL.log.csv.",
    )
    p.add_argument("data", nargs="+", metavar="DATA", help="NetCDF files or folders of them")
    p.add_argument("-o", "--output", required=True, metavar="MODEL.keras", help="the model file to write")
    p.add_argument("--mode", choices=["supervised", "physics", "hybrid"],
                   help="supervised (labels), physics (the Blatter-Pattyn energy, no labels) or "
                        "hybrid (default: the config's, else supervised)")
    p.add_argument("--config", metavar="YAML", help="training settings (TrainConfig keys)")
    p.add_argument("--steps", type=int, metavar="N", help="optimizer steps in total")
    p.add_argument("--batch-size", type=int, metavar="B", help="global batch size")
    p.add_argument("--learning-rate", type=float, metavar="LR", help="peak learning rate")
    p.add_argument("--seed", type=int, help="seed of the weights, the split and the data stream")
    p.add_argument("--init-from", metavar="MODEL.keras",
                   help="start from this model's architecture and weights (fine-tuning, e.g. a "
                        "shipped model on your own data)")
    p.add_argument("--validation", nargs="+", metavar="DATA",
                   help="validate on these files/folders instead of holding out a fraction of DATA")
    p.add_argument("--resume", action="store_true",
                   help="continue from the latest checkpoint in MODEL.ckpt/")
    p.add_argument("--progress", dest="progress", action="store_true", default=None,
                   help="show a progress bar (default: when stderr is a terminal)")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..learning.train import TrainConfig, train

    overrides = {"mode": args.mode, "steps": args.steps, "batch_size": args.batch_size,
                 "learning_rate": args.learning_rate, "seed": args.seed,
                 "init_from": args.init_from}
    if args.config:
        config = TrainConfig.from_yaml(args.config, **overrides)
    else:
        config = TrainConfig.from_dict({k: v for k, v in overrides.items() if v is not None})
    result = train(args.data, args.output, config, resume=args.resume, validation=args.validation,
                   progress=args.progress)
    final = result.get("final") or {}
    measured = ", ".join(f"{k} {v:.4g}" for k, v in final.items()
                         if isinstance(v, float) and k in ("relative_l2_ubar", "energy_gap",
                                                           "normalised_energy"))
    print(f"{result['model_path']}: {config.mode} training, {result['step']} steps on "
          f"{result['replicas']} replica(s), {result['data']['count']} files"
          + (f" ({len(result['data']['skipped_not_converged'])} skipped: not converged)"
             if result["data"]["skipped_not_converged"] else "")
          + (" (stopped early)" if result["stopped_early"] else "")
          + (f"; {final.get('dataset', '')}: {measured}" if measured else ""),
          file=sys.stderr)
    return 0
