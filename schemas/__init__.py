"""XML schemas (XSD) and WSDLs the hub validates against and serves, shipped as package data.

``path(name)`` finds one on disk, whether the hub runs from a source tree or an installed wheel.
"""

from pathlib import Path

SCHEMA_DIR = Path(__file__).parent


def path(name: str) -> Path:
    found = SCHEMA_DIR / name
    if not found.is_file():
        raise FileNotFoundError(f"no schema {name!r} in {SCHEMA_DIR}")
    return found
