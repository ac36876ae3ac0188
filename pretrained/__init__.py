"""Shipped emulator weights (``NAME.keras``) with their metadata (``NAME.json``) and model cards
(``NAME.md``). Installed with the package as :mod:`glacier_emulator.pretrained`; the recipes that
reproduce each model are in the repository's ``training/`` folder."""
