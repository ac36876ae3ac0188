"""``glacier-emulator models``: list the shipped (pretrained) emulators and what they are for."""
from __future__ import annotations

import argparse
import json


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "models",
        help="list the shipped emulator models",
        description="List the pretrained emulators installed with the package: name, outputs, "
        "levels, valid grid spacing and measured accuracy.",
    )
    parser.add_argument("--json", action="store_true", help="print the full metadata as JSON")
    parser.set_defaults(func=run)


def _accuracy(entry: dict) -> str:
    from ..emulator import DEFAULT_PHYSICS_SET, held_out_ubar_error

    held = held_out_ubar_error(entry.get("accuracy"))
    if "median" in held:  # the model card's number: held-out glaciers against the solver
        text = f"held-out rel. L2 of ubar {held['median']:.3f} median, {held.get('p90', float('nan')):.3f} p90"
        # the card's default-physics set, where one was measured (what a run without sliding or
        # rate-factor fields sees; the main set varies both)
        default = held_out_ubar_error(entry.get("accuracy"), test_set=DEFAULT_PHYSICS_SET)
        if "median" in default:
            text += f" ({default['median']:.3f} median on the default physics)"
        return text
    accuracy = {k: v for k, v in (entry.get("accuracy") or {}).items() if isinstance(v, (int, float))}
    return ", ".join(f"{k}={v:.3g}" for k, v in accuracy.items()) or "not measured"


def _metres(value) -> str:
    return "?" if value is None else f"{float(value):.0f}"


def describe(entry: dict) -> str:
    """One line per model: name, version, outputs, Nz, dx range, accuracy."""
    outputs = entry.get("outputs", {}).get("kind", "?")
    levels = entry.get("vertical", {}).get("levels", "?")
    spacing = entry.get("grid_spacing", {})
    flags = ("" if entry.get("available") else "  [weights file missing]") + (
        "  (default)" if entry.get("default") else ""
    ) + ("" if entry.get("forward_runs", True) else "  (not for forward runs: see its model card)") + (
        f"  (--refine: from the levels of {entry['levels_model']})" if entry.get("levels_model") else ""
    )
    symmetrise = entry.get("architecture", {}).get("symmetrise", "?")
    return (
        f"{entry.get('name', '?')}  v{entry.get('version', '?')}  outputs={outputs}  Nz={levels}  "
        f"symmetrise={symmetrise}  dx={_metres(spacing.get('min'))}-{_metres(spacing.get('max'))} m  accuracy: {_accuracy(entry)}{flags}"
    )


def run(args: argparse.Namespace) -> int:
    from ..emulator import PRETRAINED_DIR, list_pretrained

    entries = list_pretrained()
    if args.json:
        print(json.dumps(entries, indent=2))
        return 0
    if not entries:
        print(
            f"No pretrained emulator is installed yet (looked in {PRETRAINED_DIR}). Train one with "
            "`glacier-emulator train`, or pass a model file to `glacier-emulator predict --model "
            "MODEL.keras`."
        )
        return 0
    for entry in entries:
        print(describe(entry))
    return 0
