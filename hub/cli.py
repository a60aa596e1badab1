"""The ``mdmhub`` command: serve, demo, database upgrades, device import, conformance."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import click

from hub.config import ConfigError, Settings, load_settings
from hub.logs import setup_logging


def _settings(ctx: click.Context, **overrides: Any) -> Settings:
    try:
        settings = load_settings(ctx.obj.get("config"), **overrides)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    setup_logging(settings.log.level, settings.log.format)
    return settings


def _sections(**values: Any) -> dict[str, dict[str, Any]]:
    """CLI flags as settings overrides, e.g. http_port=9000 -> {"http": {"port": 9000}}."""
    out: dict[str, dict[str, Any]] = {}
    for key, value in values.items():
        if value is not None:
            section, name = key.split("_", 1)
            out.setdefault(section, {})[name] = value
    return out


def _merge(settings_cls_kwargs: dict[str, dict[str, Any]], ctx: click.Context) -> Settings:
    base = _settings(ctx)
    merged = {name: getattr(base, name).model_dump() for name in Settings.model_fields}
    for section, values in settings_cls_kwargs.items():
        merged[section].update(values)
    try:
        return Settings.model_validate(merged)
    except Exception as exc:  # pydantic.ValidationError
        raise click.ClickException(f"invalid option: {exc}") from None


@click.group()
@click.option("--config", "config", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="TOML configuration file (default: $MDMHUB_CONFIG).")
@click.version_option(package_name="mdmhub")
@click.pass_context
def main(ctx: click.Context, config: Path | None) -> None:
    """mdmhub: a standards-oriented integration hub for smart-meter and energy data."""
    ctx.ensure_object(dict)
    ctx.obj["config"] = config


@main.command()
@click.option("--host", default=None, help="Address to bind (default from [http] host).")
@click.option("--port", type=int, default=None, help="Port to bind (default from [http] port).")
@click.pass_context
def serve(ctx: click.Context, host: str | None, port: int | None) -> None:
    """Run the hub (migrating the database first)."""
    from hub.migrate import upgrade
    from hub.app import make_hub
    from hub.server import serve as run_server

    settings = _merge(_sections(http_host=host, http_port=port), ctx)
    hub = make_hub(settings)
    upgrade(hub.db.engine)
    try:
        asyncio.run(run_server(hub, settings.http.host, settings.http.port))
    finally:
        hub.close()


@main.command()
@click.option("--port", type=int, default=None, help="Port to bind (default 8080).")
@click.option("--meters", type=int, default=None, help="How many demo meters to register (default 300).")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Data folder (default $MDMHUB_DATA_DIR or ./var).")
@click.pass_context
def demo(ctx: click.Context, port: int | None, meters: int | None, data_dir: Path | None) -> None:
    """Start the hub on SQLite with demo head-ends and meters."""
    from hub.demo import seed_demo
    from hub.migrate import upgrade
    from hub.app import make_hub
    from hub.server import serve as run_server

    settings = _merge(_sections(http_port=port, demo_meters=meters, data_dir=data_dir), ctx)
    hub = make_hub(settings)
    upgrade(hub.db.engine)
    summary = seed_demo(hub)
    click.echo(f"demo data in {settings.database_url}: {summary}")
    from hub.demo import seed_ieee1888_site

    click.echo(seed_ieee1888_site(hub))
    try:
        asyncio.run(run_server(hub, settings.http.host, settings.http.port, on_started=_start_demo_gateway))
    finally:
        hub.close()


_DEMO_TASKS: list[asyncio.Task[None]] = []


def _start_demo_gateway(url: str) -> None:
    """Feed the demo site's IEEE 1888 points from a simulated gateway through the hub's own client."""
    from adapters.ieee1888.demo_gateway import run_demo_gateway

    _DEMO_TASKS.append(asyncio.get_running_loop().create_task(run_demo_gateway(f"{url}/fiap", asyncio.Event())))


@main.group()
def db() -> None:
    """Database schema management."""


@db.command("upgrade")
@click.option("--revision", default="head", show_default=True)
@click.pass_context
def db_upgrade(ctx: click.Context, revision: str) -> None:
    """Apply schema migrations (never drops data)."""
    from hub.db import make_engine
    from hub.migrate import current_revision, upgrade

    settings = _settings(ctx.find_root())
    engine = make_engine(settings.database_url)
    before = current_revision(engine)
    upgrade(engine, revision)
    click.echo(f"database {engine.url.render_as_string(hide_password=True)}: {before or 'empty'} -> "
               f"{current_revision(engine)}")


@db.command("current")
@click.pass_context
def db_current(ctx: click.Context) -> None:
    """Show the schema revision of the database."""
    from hub.db import make_engine
    from hub.migrate import current_revision, head_revision

    engine = make_engine(_settings(ctx.find_root()).database_url)
    click.echo(f"current {current_revision(engine) or 'none'}, head {head_revision(engine)}")


@main.group()
def devices() -> None:
    """Device registration."""


@devices.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--atomic", is_flag=True, help="Store every row or none.")
@click.option("--format", "fmt", type=click.Choice(["auto", "csv", "json"]), default="auto", show_default=True)
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.pass_context
def devices_import(ctx: click.Context, file: Path, atomic: bool, fmt: str, quiet: bool) -> None:
    """Register devices from a CSV or JSON FILE; prints the report as JSON."""
    from tqdm import tqdm

    from hub.migrate import upgrade
    from hub.runtime import Hub
    from hub.services.errors import ServiceError

    settings = _settings(ctx.find_root())
    hub = Hub(settings)
    upgrade(hub.db.engine)
    kind = fmt if fmt != "auto" else ("json" if file.suffix.lower() == ".json" else "csv")
    try:
        with tqdm(desc="rows", unit=" rows", disable=quiet, file=sys.stderr) as bar:
            if kind == "csv":
                with file.open(encoding="utf-8-sig", newline="") as fh:
                    report = hub.registry.import_csv(fh, atomic=atomic, progress=bar.update)
            else:
                report = hub.registry.import_json(file.read_text(encoding="utf-8"), atomic=atomic,
                                                  progress=bar.update)
    except ServiceError as exc:
        raise click.ClickException(f"{exc.message}") from None
    finally:
        hub.close()
    click.echo(json.dumps(report.as_dict(), indent=2))
    if report.failed:
        sys.exit(1)


@main.group()
def billing() -> None:
    """Billing files and quotes (usage export, quote import, pseudo-billing, correction, purge)."""


def _billing_call(ctx: click.Context, fn_name: str, *args: Any, **kwargs: Any) -> Any:
    """Run one BillingService method on a migrated store; service errors become CLI errors."""
    from hub.migrate import upgrade
    from hub.runtime import Hub
    from hub.services.errors import ServiceError

    hub = Hub(_settings(ctx.find_root()))
    try:
        upgrade(hub.db.engine)
        return getattr(hub.billing, fn_name)(*args, **kwargs)
    except ServiceError as exc:
        details = "; ".join(f"{e.field}: {e.message}" for e in getattr(exc, "errors", []) or [])
        raise click.ClickException(f"{exc.message}{': ' + details if details else ''}") from None
    finally:
        hub.close()


def _period(start: str, end: str) -> tuple[Any, Any]:
    from hub.services.billing import period_bound
    from hub.services.errors import ServiceError

    try:
        return period_bound(start), period_bound(end, end=True)
    except ServiceError as exc:
        raise click.BadParameter("; ".join(f"--{e.field}: {e.message}" for e in exc.errors)) from None


@billing.command("export")
@click.option("--kind", type=click.Choice(["ONTIME", "PAST"], case_sensitive=False), required=True)
@click.option("--from", "start", required=True, help="First UTC day (YYYY-MM-DD) or an aware ISO datetime.")
@click.option("--to", "end", required=True, help="Last UTC day, included (or an aware ISO datetime, excluded).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="File to write (default <billing.export_dir>/usage_KIND_FROM_TO.csv).")
@click.option("--without-missing", is_flag=True, help="Leave rows still missing out of the file.")
@click.pass_context
def billing_export(ctx: click.Context, kind: str, start: str, end: str, out: Path | None,
                   without_missing: bool) -> None:
    """Write the ONTIME or PAST usage file of a period (EXPORT_USAGE); prints a JSON summary."""
    lo, hi = _period(start, end)
    result = _billing_call(ctx, "export_usage", kind.upper(), lo, hi, out,
                           include_missing=False if without_missing else None)
    click.echo(json.dumps(result.as_dict()))


@billing.command("import-quotes")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.pass_context
def billing_import_quotes(ctx: click.Context, file: Path) -> None:
    """Update quote rows from a billing reply FILE (IMPORT_BILL); exit 1 when rows were refused."""
    with file.open(encoding="utf-8-sig", newline="") as fh:
        report = _billing_call(ctx, "import_quotes", fh)
    click.echo(json.dumps(report.as_dict(), indent=2))
    if report.unknown_count or report.error_count:
        sys.exit(1)


@billing.command("simulate")
@click.option("--from", "start", required=True, help="First UTC day (YYYY-MM-DD) or an aware ISO datetime.")
@click.option("--to", "end", required=True, help="Last UTC day, included (or an aware ISO datetime, excluded).")
@click.pass_context
def billing_simulate(ctx: click.Context, start: str, end: str) -> None:
    """Price the quote rows of a period from correction parameters (SIMULATE_BILL)."""
    lo, hi = _period(start, end)
    click.echo(json.dumps(_billing_call(ctx, "simulate", lo, hi)))


@billing.command("correct")
@click.argument("ld_id")
@click.argument("sub_number", type=int)
@click.argument("measured_time")
@click.argument("increment", type=float)
@click.option("--charge", type=float, default=None, help="Corrected charge (default: priced from parameters).")
@click.pass_context
def billing_correct(ctx: click.Context, ld_id: str, sub_number: int, measured_time: str, increment: float,
                    charge: float | None) -> None:
    """Correct one quote row's increment by hand (CORRECT_QUOTE); MEASURED_TIME is an aware ISO datetime."""
    from datetime import datetime

    try:
        when = datetime.fromisoformat(measured_time)
    except ValueError:
        raise click.BadParameter(f"not an ISO datetime: {measured_time!r}", param_hint="MEASURED_TIME") from None
    click.echo(json.dumps(_billing_call(ctx, "correct", ld_id, sub_number, when, increment, charge)))


@billing.command("purge")
@click.pass_context
def billing_purge(ctx: click.Context) -> None:
    """Delete usage and quote rows older than [billing] usage_retention_days / quote_retention_days."""
    click.echo(json.dumps(_billing_call(ctx, "purge")))


@main.group()
def access() -> None:
    """API clients of the secondary-use, delivery and administration APIs."""


@access.command("create-client")
@click.argument("client_id")
@click.option("--scope", "scopes", multiple=True, required=True,
              help="A scope to grant (repeat): public:read, customer:read, delivery:read, portal:admin, access:admin.")
@click.option("--name", default=None, help="Who the client is, for the access log.")
@click.option("--ip-allow", "ip_allow", multiple=True, help="An address or CIDR the client may call from (repeat).")
@click.pass_context
def access_create_client(ctx: click.Context, client_id: str, scopes: tuple[str, ...], name: str | None,
                         ip_allow: tuple[str, ...]) -> None:
    """Create an API client and print its key (shown this once only): the first access:admin client
    is made here, the rest can be managed over /api/v1/access/clients."""
    from pydantic import ValidationError

    from hub.migrate import upgrade
    from hub.runtime import Hub
    from hub.services.access import ClientIn
    from hub.services.errors import ServiceError

    try:
        data = ClientIn(client_id=client_id, name=name, scopes=list(scopes), ip_allow=list(ip_allow))
    except ValidationError as exc:
        raise click.ClickException("; ".join(e["msg"] for e in exc.errors())) from None
    hub = Hub(_settings(ctx.find_root()))
    try:
        upgrade(hub.db.engine)
        created = hub.access.create_client(data)
    except ServiceError as exc:
        raise click.ClickException(exc.message) from None
    finally:
        hub.close()
    click.echo(json.dumps(created, indent=2, default=str))


@main.group()
def adr() -> None:
    """Meter ADR records (the action history for billing incentives)."""


@adr.command("actions")
@click.option("--from", "start", required=True, help="First UTC day (YYYY-MM-DD) or an aware ISO datetime.")
@click.option("--to", "end", required=True, help="Last UTC day, included (or an aware ISO datetime, excluded).")
@click.option("--state", type=click.Choice(["planned", "reserved", "failed", "released", "cancelled"]), default=None,
              help="Only actions in this state (reserved: the reductions that took place).")
@click.option("--event-id", default=None, help="Only the actions of this DR event.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="CSV file to write (default: standard output).")
@click.pass_context
def adr_actions(ctx: click.Context, start: str, end: str, state: str | None, event_id: str | None,
                out: Path | None) -> None:
    """Write the ADR actions whose reduction starts in a period as CSV (billing incentives)."""
    import csv

    from hub.migrate import upgrade
    from hub.runtime import Hub
    from hub.services.adr import ACTION_EXPORT_COLUMNS

    lo, hi = _period(start, end)
    hub = Hub(_settings(ctx.find_root()))
    stream = out.open("w", encoding="utf-8", newline="") if out else sys.stdout
    try:
        upgrade(hub.db.engine)
        writer = csv.DictWriter(stream, fieldnames=ACTION_EXPORT_COLUMNS, extrasaction="ignore", lineterminator="\r\n")
        writer.writeheader()
        offset, written = 0, 0
        while True:
            got = hub.adr.list_actions(event_id=event_id, state=state, starts_from=lo, starts_before=hi,
                                       limit=EXPORT_PAGE, offset=offset)
            writer.writerows(got["items"])
            written += len(got["items"])
            offset += EXPORT_PAGE
            if len(got["items"]) < EXPORT_PAGE:
                break
    finally:
        if out:
            stream.close()
        hub.close()
    if out:
        click.echo(json.dumps({"file": str(out), "rows": written}))


EXPORT_PAGE = 5000


@main.command()
@click.argument("suite", required=False)
@click.option("--target", help="URL of the endpoint under test (openadr-ven: the host its test VTN binds).")
@click.option("--vtn-port", type=int, help="openadr-ven: port of the test VTN the VEN under test registers with.")
@click.option("--hub-ven", is_flag=True, help="openadr-ven: also start this hub's own VEN against the test VTN.")
@click.pass_context
def conformance(ctx: click.Context, suite: str | None, target: str | None, vtn_port: int | None,
                hub_ven: bool) -> None:
    """Run a conformance suite against an endpoint (lists the suites without arguments)."""
    from conformance import SUITES, run_suite
    import conformance.ieee1888  # noqa: F401 - registers the IEEE 1888 suite

    if suite is None:
        click.echo("conformance suites: " + (", ".join(sorted(SUITES)) or "none yet"))
        return
    options = {"vtn_port": vtn_port, "hub_ven": hub_ven, "config": ctx.find_root().obj.get("config")}
    sys.exit(run_suite(suite, target, **options) if suite == "openadr-ven" else run_suite(suite, target))


if __name__ == "__main__":  # pragma: no cover
    main()
