"""YAML configuration files: one reader for every config (run, training, solver, CLI)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Union


def read_yaml_mapping(path: Union[str, os.PathLike], *, what: str = "config") -> dict:
    """The mapping in a YAML file (an empty file gives ``{}``).

    Raises ``FileNotFoundError`` for a missing file and ``ValueError`` (naming the file) for
    invalid YAML or a document that is not a mapping.
    """
    import yaml

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: {what} file not found")
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: not valid YAML ({exc})") from None
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ValueError(f"{path}: a {what} must be a mapping of settings")
    return values
