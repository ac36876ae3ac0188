"""Regenerate the bundled example file: ``python -m glacier_emulator.data``."""
from . import write_example

if __name__ == "__main__":
    print(write_example())
