"""Arguments shared by several subcommands: physics constants, vertical levels, YAML configs.

The physics defaults come from :class:`glacier_emulator.constants.Physics`; a ``--config`` YAML
file may set ``physics:``, ``vertical:`` and ``solver:`` sections, and flags override both.
"""
from __future__ import annotations

import argparse

from ..constants import Physics, VerticalDiscretisation


def add_physics_arguments(parser: argparse.ArgumentParser) -> None:
    d = Physics()
    g = parser.add_argument_group("physics (defaults: the package's Blatter-Pattyn constants)")
    g.add_argument("--rate-factor", type=float, metavar="A",
                   help=f"Glen rate factor A, MPa^-n yr^-1 (default {d.rate_factor}; a field "
                        "'arrhenius' in the input overrides it)")
    g.add_argument("--glen-exponent", type=float, metavar="N", help=f"Glen exponent n (default {d.glen_exponent:g})")
    g.add_argument("--sliding-coefficient", type=float, metavar="C",
                   help=f"Weertman coefficient c, MPa (m/yr)^-m (default {d.sliding_coefficient}; "
                        "a field 'slidingco' in the input overrides it)")
    g.add_argument("--sliding-exponent", type=float, metavar="M",
                   help=f"Weertman exponent m in tau_b = c|u_b|^(m-1) u_b (default {d.sliding_exponent:.4g})")
    g.add_argument("--no-slip", action="store_true", default=None, help="fix the basal velocity to zero")


def add_vertical_arguments(parser: argparse.ArgumentParser) -> None:
    d = VerticalDiscretisation()
    parser.add_argument("--layers", type=int, metavar="NZ", help=f"number of vertical levels (default {d.levels})")
    parser.add_argument("--vertical-spacing", type=float, metavar="R",
                        help=f"top/bottom layer thickness ratio, 1 = uniform (default {d.spacing:g})")


def load_config(path) -> dict:
    """Read a YAML config (a mapping of sections); a missing or malformed file is a ValueError."""
    if path is None:
        return {}
    from ..io.yaml_config import read_yaml_mapping

    return read_yaml_mapping(path, what="config")


def physics_from_args(args, config: dict | None = None) -> Physics:
    values = dict((config or {}).get("physics") or {})
    flags = {
        "rate_factor": getattr(args, "rate_factor", None),
        "glen_exponent": getattr(args, "glen_exponent", None),
        "sliding_coefficient": getattr(args, "sliding_coefficient", None),
        "sliding_exponent": getattr(args, "sliding_exponent", None),
        "no_slip": getattr(args, "no_slip", None),
    }
    values.update({k: v for k, v in flags.items() if v is not None})
    return Physics.from_dict(values)


def vertical_from_args(args, config: dict | None = None) -> VerticalDiscretisation:
    values = dict((config or {}).get("vertical") or {})
    if getattr(args, "layers", None) is not None:
        values["levels"] = args.layers
    if getattr(args, "vertical_spacing", None) is not None:
        values["spacing"] = args.vertical_spacing
    return VerticalDiscretisation(**values)
