"""The mdmhub command as a user runs it: database upgrade, device import, the demo."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from click.testing import CliRunner

from hub.cli import main
from hub.config import Settings
from hub.db import Database, make_engine
from hub.migrate import head_revision, pending_model_changes
from hub.demo import seed_catalogue
from hub.runtime import Hub


def run_cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hub.cli", *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **env})


def test_db_upgrade_migrates_an_empty_database_to_the_head_revision(tmp_path):
    url = f"sqlite:///{tmp_path / 'fresh.db'}"
    env = {"MDMHUB_DATABASE_URL": url, "MDMHUB_LOG_FORMAT": "text"}
    upgraded = run_cli(["db", "upgrade"], env)
    assert upgraded.returncode == 0, upgraded.stderr
    engine = make_engine(url)
    assert f"empty -> {head_revision(engine)}" in upgraded.stdout
    assert pending_model_changes(engine) == []
    engine.dispose()
    assert "current" in run_cli(["db", "current"], env).stdout


def test_devices_import_reports_rows_and_fails_when_some_are_bad(tmp_path, database_url):
    env = {"MDMHUB_DATABASE_URL": database_url, "MDMHUB_LOG_FORMAT": "text"}
    hub = Hub(Settings.model_validate({"database": {"url": database_url}}), Database.from_url(database_url))
    seed_catalogue(hub)
    hub.close()
    csv_file = tmp_path / "devices.csv"
    csv_file.write_text("type_id,ld_type_id,mac\n11,101,000000000001\n11,101,bad\n")
    result = run_cli(["devices", "import", str(csv_file)], env)
    report = json.loads(result.stdout)
    assert result.returncode == 1  # some rows failed
    assert report["stored"] == 1 and report["errors"][0]["line"] == 3


def test_configuration_errors_stop_the_command_with_a_clear_message(tmp_path):
    result = CliRunner().invoke(main, ["db", "current"], env={"MDMHUB_HTTP_PORT": "-1"})
    assert result.exit_code != 0
    assert "[http] port" in result.output and "MDMHUB_HTTP_PORT" in result.output


def test_demo_starts_a_hub_that_answers_health_and_lists_its_meters(tmp_path):
    env = {**os.environ, "MDMHUB_DATA_DIR": str(tmp_path / "var"), "MDMHUB_LOG_FORMAT": "text",
           "MDMHUB_DEMO_METERS": "120"}
    proc = subprocess.Popen([sys.executable, "-m", "hub.cli", "demo", "--port", "0"], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, env=env)
    try:
        url = None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and url is None:
            line = proc.stdout.readline()
            if match := re.search(r"listening on (http://\S+)", line):
                url = match.group(1)
        assert url, "the demo never said where it listens"
        health = json.load(urllib.request.urlopen(f"{url}/health", timeout=10))
        assert health["status"] == "ok" and health["database"]["backend"] == "sqlite"
        meters = json.load(urllib.request.urlopen(f"{url}/api/v1/logical-devices?installed=true&limit=5", timeout=10))
        assert meters["total"] == 120 and meters["items"][0]["ld_id"].startswith("DEMO-LD-")
        active = json.load(urllib.request.urlopen(f"{url}/api/v1/logical-devices?use_state=A&limit=1", timeout=10))
        assert active["total"] == 120
        assert Path(tmp_path / "var" / "mdmhub.db").exists()
        policies = json.load(urllib.request.urlopen(f"{url}/api/v1/adr/policies?limit=1", timeout=10))
        assert policies["total"] == 24  # every fifth meter answers DR events
        runs: dict = {"items": []}
        while time.monotonic() < deadline and {r["kind"] for r in runs["items"]} != {"backfill", "scheduled"}:
            runs = json.load(urllib.request.urlopen(f"{url}/api/v1/collection/runs?he_id=1", timeout=10))
            time.sleep(0.2)
        assert {r["kind"] for r in runs["items"]} == {"backfill", "scheduled"}  # the last day is there at once
        backfill = next(r for r in runs["items"] if r["kind"] == "backfill")
        assert backfill["state"] == "done" and backfill["expected"] == 60 * 2 * 48
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    assert proc.returncode == 0


def test_access_create_client_prints_a_key_once_that_the_hub_then_accepts(tmp_path):
    url = f"sqlite:///{tmp_path / 'access.db'}"
    env = {"MDMHUB_DATABASE_URL": url, "MDMHUB_LOG_FORMAT": "text"}
    created = run_cli(["access", "create-client", "signage", "--scope", "public:read", "--name", "lobby signage"], env)
    assert created.returncode == 0, created.stderr
    key = json.loads(created.stdout)["key"]
    hub = Hub(Settings.model_validate({"database": {"url": url}}), Database.from_url(url))
    try:
        caller = hub.access.resolve(key, "127.0.0.1")
        assert caller.has("public:read") and not caller.has("access:admin")
        assert "key" not in hub.access.list_clients()[0]  # stored as a hash only
    finally:
        hub.close()
    again = run_cli(["access", "create-client", "signage", "--scope", "public:read"], env)
    assert again.returncode != 0 and "already exists" in again.stderr
    unknown = run_cli(["access", "create-client", "x", "--scope", "everything"], env)
    assert unknown.returncode != 0 and "unknown scopes: everything" in unknown.stderr
