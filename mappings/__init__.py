"""Code tables that translate between the hub's canonical model and each standard (61968-9
ReadingType and control/event codes, IEEE 1888 point IDs, OpenADR signals), kept as data files
beside this module so a new code is a row, not a code change."""

from pathlib import Path

MAPPINGS_DIR = Path(__file__).parent


def path(name: str) -> Path:
    found = MAPPINGS_DIR / name
    if not found.is_file():
        raise FileNotFoundError(f"no mapping table {name!r} in {MAPPINGS_DIR}")
    return found
