"""Quality flags of a usage row: a bit set stored in ``usage_history.quality``.

The bits are part of the stored data and of the API, so their values never change; new flags take
new bits. Names are what the API shows. The same bit set describes a stored version
(``usage_version.quality``) and an estimate in a view. docs/quality.md explains each.

| bit | value | name | meaning |
| --- | --- | --- | --- |
| 0 | 1 | valid | the register value was read (on time or re-collected) |
| 1 | 2 | missing | no value was read for this snapshot (yet) |
| 2 | 4 | recollected | the value was re-read from the meter's memory after the schedule missed it |
| 3 | 8 | estimated-interpolated | an estimate by linear interpolation across a gap; computed when read, never stored (:mod:`hub.services.estimation`) |
| 4 | 16 | estimated-flat | an estimate by flat fill at the edge of the data; computed when read, never stored |
| 5 | 32 | edited | a stored version after collection (by hand or a billing correction); the raw row stays (:mod:`hub.services.usage_versions`) |
| 6 | 64 | questionable | a validation check rejected the value (outside its register's range, or a day's spike); the value is kept, an alert says why (:mod:`hub.services.collection_diagnosis`) |
| 7 | 128 | negative-increment | the register went backwards (meter replacement): kept negative for billing to correct |
| 8 | 256 | spans-gap | the increment covers more than one interval, because earlier snapshots are missing |
| 9 | 512 | recalculated | ``recollected_increment`` holds the increment recomputed after a gap before it was filled |
| 10 | 1024 | expired | still missing past the collection deadline: no longer re-read, missing for good |
"""

from __future__ import annotations

from enum import IntFlag


class Quality(IntFlag):
    VALID = 1
    MISSING = 2
    RECOLLECTED = 4
    ESTIMATED_INTERPOLATED = 8
    ESTIMATED_FLAT = 16
    EDITED = 32
    QUESTIONABLE = 64
    NEGATIVE_INCREMENT = 128
    SPANS_GAP = 256
    RECALCULATED = 512
    EXPIRED = 1024


FLAG_NAMES: dict[Quality, str] = {flag: (flag.name or "").lower().replace("_", "-") for flag in Quality}


def quality_names(bits: int) -> list[str]:
    """The names of the flags set in ``bits``, lowest bit first."""
    return [name for flag, name in FLAG_NAMES.items() if bits & flag]


def quality_bits(names: list[str]) -> int:
    """The bit set of flag names; unknown names raise ``ValueError``."""
    by_name = {name: flag for flag, name in FLAG_NAMES.items()}
    bits = 0
    for name in names:
        if name not in by_name:
            raise ValueError(f"unknown quality flag {name!r}; known: {', '.join(by_name)}")
        bits |= by_name[name]
    return bits
