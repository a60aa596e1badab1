"""Fault diagnosis of a batch of readings: each check raises its alert exactly when it should, once,
and stays quiet on healthy data."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hub.services.diagnosis import (
    CLOCK_OFF_GRID, MISSING_RUN, NEGATIVE_INCREMENT, OUT_OF_RANGE, SPIKE, ZERO_RUN, ItemRange, Reading,
    Thresholds, diagnose,
)

T0 = datetime(2026, 3, 1, tzinfo=UTC)
SLOT = timedelta(minutes=30)
RANGES = {"LD1": {1: ItemRange(0, 1000, "cumulative"), 2: ItemRange(0, 200, "maximum")}}
T = Thresholds(zero_run_slots=4, missing_run_slots=3, spike_tolerance=3.0, spike_min_increment=0.5)


def series(increments: list[float | None], ld: str = "LD1", sub: int = 1, start: datetime = T0,
           register: float = 100.0) -> list[Reading]:
    """Rows on the grid from ``start``; ``None`` is a missing row."""
    rows = []
    for n, inc in enumerate(increments):
        if inc is None:
            rows.append(Reading(ld, sub, start + n * SLOT, None, None, "missing"))
        else:
            register += inc
            rows.append(Reading(ld, sub, start + n * SLOT, register, inc, "normal"))
    return rows


def codes(drafts) -> list[str]:  # type: ignore[no-untyped-def]
    return [d.code for d in drafts]


def day_profile(peak: float, third: float) -> list[float]:
    """48 half-hour increments of a day whose highest is ``peak`` and third-highest ``third``."""
    values = [0.2] * 48
    values[10], values[20], values[30] = peak, third + 0.1, third
    return values


def test_healthy_data_raises_nothing():
    amps = [r._replace(register_value=20.0 + n % 3) for n, r in enumerate(series([0.0] * 10, sub=2))]
    rows = series([0.3, 0.4, 0.0, 0.0, 0.5] * 20) + amps
    assert diagnose(rows, T, RANGES) == []
    assert diagnose([], T, RANGES) == []


def test_out_of_range_uses_the_parameter_group_item_range_and_summarises_per_register():
    rows = series([0.5] * 4, register=999.0)          # 999.5 and 1000.0 are in range; 1000.5, 1001.0 not
    amps = series([0.0] * 4, sub=2)
    rows += [r._replace(register_value=v) for r, v in zip(amps, [10, 260, 30, 201], strict=True)]
    drafts = diagnose(rows, T, RANGES)
    assert codes(drafts) == [OUT_OF_RANGE, OUT_OF_RANGE]
    kwh, amps = drafts
    assert kwh.ld_id == "LD1" and kwh.details["sub_number"] == 1 and kwh.details["count"] == 2
    assert kwh.details["examples"][0] == {"measured_time": "2026-03-01T01:00:00Z", "value": 1000.5}
    assert amps.details["count"] == 2 and amps.details["max_value"] == 200 and amps.severity == "warning"
    assert "outside [0, 200]" in amps.message


def test_a_device_without_a_known_range_is_not_range_checked():
    assert diagnose(series([0.5] * 3, ld="LD9", register=1e12), T, RANGES) == []


def test_negative_increment_fires_on_cumulative_registers_only():
    drafts = diagnose(series([0.5, -40.0, 0.5]), T, RANGES)
    assert codes(drafts) == [NEGATIVE_INCREMENT]
    assert drafts[0].details["count"] == 1 and drafts[0].details["first"] == "2026-03-01T00:30:00Z"
    falling_maximum = [r._replace(register_value=20.0) for r in series([5.0, -3.0, 1.0], sub=2)]
    assert diagnose(falling_maximum, T, RANGES) == []


def test_zero_run_fires_only_when_longer_than_the_threshold():
    assert diagnose(series([0.3] + [0.0] * 4 + [0.3]), T, RANGES) == []      # exactly 4: not longer
    drafts = diagnose(series([0.3] + [0.0] * 5 + [0.3]), T, RANGES)
    assert codes(drafts) == [ZERO_RUN]
    assert drafts[0].details.items() >= {"slots": 5, "threshold_slots": 4, "first": "2026-03-01T00:30:00Z",
                                      "last": "2026-03-01T02:30:00Z", "ongoing": False}.items()


def test_a_missing_row_breaks_a_zero_run():
    assert diagnose(series([0.0, 0.0, 0.0, None, 0.0, 0.0, 0.0]), T, RANGES) == []


def test_missing_run_fires_only_when_longer_than_the_threshold():
    assert diagnose(series([0.3, None, None, None, 0.3]), T, RANGES) == []
    drafts = diagnose(series([0.3, None, None, None, None]), T, RANGES)
    assert codes(drafts) == [MISSING_RUN]
    assert drafts[0].severity == "error" and drafts[0].details["ongoing"] is True
    assert drafts[0].details["slots"] == 4


def test_a_run_is_reported_once_by_the_cycle_where_it_crosses_the_threshold():
    rows = series([0.3] + [None] * 8)                   # missing from slot 1; longer than 3 at slot 4
    for cycle_start in (rows[1].measured_time, rows[2].measured_time, rows[3].measured_time):
        history = [r for r in rows if r.measured_time <= cycle_start]
        assert diagnose(history, T, RANGES, since=cycle_start) == []
    raised = [codes(diagnose([r for r in rows if r.measured_time <= now], T, RANGES, since=now))
              for now in (r.measured_time for r in rows[4:])]
    assert raised == [[MISSING_RUN], [], [], [], []]


def test_row_checks_skip_history_before_since():
    rows = series([0.5, -2.0, 0.5, 0.5])
    assert codes(diagnose(rows, T, RANGES, since=rows[1].measured_time)) == [NEGATIVE_INCREMENT]
    assert diagnose(rows, T, RANGES, since=rows[2].measured_time) == []


def test_spike_compares_the_days_highest_interval_with_its_third_highest():
    assert diagnose(series(day_profile(peak=3.0, third=1.0)), T, RANGES) == []   # exactly 3 x: tolerated
    drafts = diagnose(series(day_profile(peak=3.5, third=1.0)), T, RANGES)
    assert codes(drafts) == [SPIKE]
    assert drafts[0].details == {"sub_number": 1, "day": "2026-03-01", "measured_time": "2026-03-01T05:00:00Z",
                                 "highest": 3.5, "third_highest": 1.0, "tolerance": 3.0}
    loose = Thresholds(spike_tolerance=4.0)
    assert diagnose(series(day_profile(peak=3.5, third=1.0)), loose, RANGES) == []


def test_spike_ignores_near_idle_days_and_days_not_over():
    assert diagnose(series(day_profile(peak=0.45, third=0.01)), T, RANGES) == []   # below spike_min_increment
    assert diagnose(series(day_profile(peak=9.0, third=1.0)[:40]), T, RANGES) == []  # the day is not over


def test_spike_is_checked_by_the_cycle_holding_the_days_last_slot():
    rows = series(day_profile(peak=9.0, third=1.0) + [0.2] * 4)
    last_of_day = rows[47].measured_time
    assert codes(diagnose(rows[:48], T, RANGES, since=last_of_day)) == [SPIKE]
    assert diagnose(rows, T, RANGES, since=rows[48].measured_time) == []


def test_clock_check_flags_reads_off_the_30_minute_grid():
    rows = series([0.5] * 4)
    rows[2] = rows[2]._replace(measured_time=rows[2].measured_time + timedelta(seconds=40))
    drafts = diagnose(rows, T, RANGES)
    assert codes(drafts) == [CLOCK_OFF_GRID]
    assert drafts[0].details["count"] == 1 and drafts[0].details["first"] == "2026-03-01T01:00:40Z"
    tolerant = Thresholds(clock_tolerance_seconds=60)
    assert diagnose(rows, tolerant, RANGES) == []
    early = series([0.5])
    early[0] = early[0]._replace(measured_time=T0 - timedelta(seconds=30))
    assert diagnose(early, tolerant, RANGES) == []
    assert codes(diagnose(early, T, RANGES)) == [CLOCK_OFF_GRID]


def test_batches_of_many_devices_are_diagnosed_per_device_and_register():
    rows = series([0.5, -1.0]) + series([0.5, 0.5], ld="LD2") + series([None] * 4, ld="LD3")
    drafts = diagnose(list(reversed(rows)), T, RANGES)
    assert [(d.ld_id, d.code) for d in drafts] == [("LD1", NEGATIVE_INCREMENT), ("LD3", MISSING_RUN)]
    assert all(d.source == "diagnosis" and d.raised_at is None for d in drafts)


def test_thresholds_come_from_the_alerts_settings_section():
    from hub.config import Settings

    settings = Settings.model_validate({"alerts": {"zero_run_slots": 20, "spike_tolerance": 5}})
    t = Thresholds.from_section(settings.alerts)
    assert (t.zero_run_slots, t.missing_run_slots, t.spike_tolerance, t.slot_minutes) == (20, 6, 5.0, 30)
