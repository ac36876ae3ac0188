"""Build a GlacierUNet from the JAX recipe's ``.npz`` weights and save it as a ``.keras`` model
with metadata, ready for ``scripts/evaluate_model.py`` and shipping.

    python training/gpu/import_weights.py RUN/params.npz RUN/velocity3d.keras \
        --config training/configs/velocity3d-gpu.yaml
"""
import argparse
import json

import numpy as np


def training_facts(report: dict, template=None, name=None) -> dict:
    """The metadata's ``training_data`` of model ``name`` of a train_gpu.py run (its report.json)."""
    a = report["args"]
    name = name or next(iter(report["best"]))
    best = report["best"][name]
    history = dict(report["history"])[name]
    check = [e["rel_l2"] for e in report.get("label_check", [])]
    grid, wide_grid = a.get("grid", 64), a.get("wide_grid", 96)
    wide = report.get("train_glaciers_wide", {})
    packed = report.get("extra_train", {})
    geometries = report.get("extra_train_geometries", {})
    val_geometries = report.get("extra_val_geometries", {})
    glaciers = {f"standard (seed 30, SyntheticConfig(grid={grid}))": report["train_glaciers"]["standard"],
                f"default_physics (seed 31, training/default_physics.yaml, grid {grid})":
                    report["train_glaciers"]["default_physics"]}
    if sum(wide.values()):
        glaciers[f"standard (seed 34, grid {wide_grid})"] = wide["standard"]
        glaciers[f"default_physics (seed 35, grid {wide_grid})"] = wide["default_physics"]
    if packed.get("samples"):
        glaciers["packed CPU-labelled samples (pack_samples.py)"] = {
            "per_grid": packed.get("per_grid"), "files": packed.get("packed")}
    if geometries.get("samples"):
        glaciers["packed geometries labelled on the GPU (pack_samples.py --geometries)"] = {
            "per_grid": geometries.get("per_grid"), "kinds": geometries.get("kinds"),
            "files": geometries.get("packed")}
    wide_steps = report.get("wide_steps", 0)
    crop = f"none (whole {grid} x {grid} glaciers), 8 mirror/rotation images"
    if wide_steps:
        crop += (f"; one step in {a['wide_every']}: a batch of {a.get('wide_batch') or a['train_batch']} "
                 f"whole {wide_grid} x {wide_grid} glaciers ({wide_steps} steps)")
    facts = {
        "mode": "supervised",
        "recipe": "training/gpu/train_gpu.py",
        "labels": "levels",
        "count": (sum(report["train_glaciers"].values()) + sum(wide.values()) + packed.get("samples", 0)
                  + geometries.get("samples", 0)),
        "glaciers": glaciers,
        "validation_count": (a["val_standard"] + a["val_default"] + a.get("val_wide_standard", 0)
                             + a.get("val_wide_default", 0) + report.get("extra_val", {}).get("samples", 0)
                             + val_geometries.get("samples", 0)),
        "validation": ("seeds 32 (standard) and 33 (default physics), labelled on the GPU"
                       + (f"; seeds 36 and 37 at {wide_grid} x {wide_grid} nodes"
                          if a.get("val_wide_standard", 0) + a.get("val_wide_default", 0) else "")
                       + ("; packed CPU-labelled samples" if report.get("extra_val", {}).get("samples") else "")
                       + ("; packed geometries labelled on the GPU" if val_geometries.get("samples") else "")),
        "label_solver": ("training/gpu/bp_jax.py: the package's energy and L-BFGS solver ported to "
                         "JAX, float64, two-level start, relative energy tolerance 1e-9"),
        "label_check_vs_reference_solver": ({"n": len(check), "rel_l2_median": float(np.median(check)),
                                             "rel_l2_max": float(np.max(check))} if check else None),
        "label_not_converged": sum(report[k]["not_converged"] for k in ("label_train", "label_train_wide",
                                                                         "extra_train_geometries")
                                   if k in report),
        "steps": report["steps"],
        "batch_size": a["train_batch"],
        "crop": crop,
        "models_spec": a["models"],
        "seconds_per_step": report.get("seconds_per_step"),
        "label_seconds": sum(report[k]["seconds"] for k in ("label_check_and_validation", "label_train",
                                                             "label_wide_validation", "label_train_wide",
                                                             "extra_val_geometries", "extra_train_geometries")
                             if k in report),
        "device": ", ".join(report["devices"]),
        "selected_step": best["step"],
        "validation_rel_l2_ubar_median": {"start": history[0][1], "selected": best["val_all_median"]},
    }
    if template is not None:
        facts["init_from"] = f"{template.name} {template.version}"
        earlier = dict(template.training_data)
        earlier.pop("files", None)
        earlier.pop("validation_files", None)
        facts["earlier_stages"] = earlier
    return facts


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("params", help="the .npz written by training/gpu/train_gpu.py")
    parser.add_argument("output", help="the .keras file to write (metadata .json beside it)")
    parser.add_argument("--name", required=True, help="model name for the metadata")
    parser.add_argument("--description", default="", help="model description for the metadata")
    parser.add_argument("--training", default=None, help="a JSON file of training facts to record")
    parser.add_argument("--metadata-from", default=None,
                        help="a model's .json metadata to copy physics, levels and valid ranges from")
    parser.add_argument("--version", default="0.0.0")
    parser.add_argument("--not-for-forward-runs", action="store_true",
                        help="mark the model as failing the forward test (metadata forward_runs: false)")
    parser.add_argument("--report", default=None,
                        help="the run's report.json: its facts become the metadata's training_data")
    parser.add_argument("--report-model", default=None, help="which model of the report (default: the first)")
    args = parser.parse_args(argv)
    from glacier_emulator.emulator import Emulator, ModelMetadata
    from glacier_emulator.models import GlacierUNet

    first = np.load(args.params)
    config = json.loads(str(first["__config__"]))
    data = {k: first[k] for k in first.files}
    for i in range(1, int(first["__parts__"]) if "__parts__" in first.files else 1):
        part = np.load(f"{args.params[:-4]}.part{i}.npz")
        data.update({k: part[k] for k in part.files})
    model = GlacierUNet(**config)
    n = 0
    for layer in model.layers:
        if layer.get_weights():
            layer.set_weights([data[f"{layer.name}/kernel"], data[f"{layer.name}/bias"]])
            n += 1
    extra = {"version": args.version, "forward_runs": not args.not_for_forward_runs}
    if args.metadata_from:
        with open(args.metadata_from) as fh:
            template = ModelMetadata.from_dict(json.load(fh), source=args.metadata_from)
        extra.update(physics=template.physics, vertical=template.vertical,
                     grid_spacing_range=template.grid_spacing_range, input_ranges=template.input_ranges)
    if args.report:
        with open(args.report) as fh:
            extra["training_data"] = training_facts(json.load(fh), template if args.metadata_from else None,
                                                    name=args.report_model)
    if args.training:
        with open(args.training) as fh:
            extra["training_data"] = json.load(fh)
    meta = ModelMetadata.from_model(model, name=args.name, description=args.description, **extra)
    path = Emulator(model, meta).save(args.output)
    print(f"wrote {path} ({n} layers)")


if __name__ == "__main__":
    main()
