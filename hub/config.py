"""Settings: one TOML file plus environment overrides, validated at start.

One rule for every setting: key ``k`` of section ``[s]`` is overridden by ``MDMHUB_S_K``
(upper case), e.g. ``MDMHUB_DATABASE_URL``, ``MDMHUB_HTTP_PORT``, ``MDMHUB_DATA_DIR``.
Section names therefore never contain an underscore; keys may.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, TomlConfigSettingsSource

ENV_PREFIX = "MDMHUB_"
CONFIG_FILE_ENV = "MDMHUB_CONFIG"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DataSection(_Section):
    dir: Path = Field(Path("var"), description="Folder for the SQLite database, exports and logs.")


class DatabaseSection(_Section):
    url: str | None = Field(
        None, description="SQLAlchemy URL; empty means SQLite at <data.dir>/mdmhub.db. "
        "PostgreSQL: postgresql+psycopg://user@host:5432/db")
    pool_size: int = Field(5, ge=1, le=200)
    echo: bool = False

    @field_validator("url")
    @classmethod
    def _known_backend(cls, value: str | None) -> str | None:
        if value and not value.startswith(("sqlite", "postgresql")):
            raise ValueError("only sqlite:// and postgresql+psycopg:// URLs are supported")
        return value


class HttpSection(_Section):
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    max_body_bytes: int = Field(64 * 1024 * 1024, ge=1024, description="Largest request body accepted.")


class LogSection(_Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["json", "text"] = "json"


class RegistrySection(_Section):
    assignment: Literal["fill-lowest", "least-loaded"] = Field(
        "fill-lowest", description="How new devices are spread over head-ends.")
    import_batch_size: int = Field(5000, ge=1, le=100_000)


class CollectionSection(_Section):
    """Scheduled collection and gap re-collection (seed 2.3.3, 2.3.4)."""

    enabled: bool = Field(True, description="Run the collection scheduler in serve and demo.")
    interval_minutes: int = Field(30, ge=1, le=1440, description="How often each head-end's due slots are "
                                  "collected; meters keep a snapshot every 30 minutes.")
    recollect_deadline_days: int = Field(45, ge=1, le=366, description="Missing rows older than this are no longer "
                                         "re-read (the meters keep 44-60 days) and stay missing.")
    recollect_every_minutes: int = Field(120, ge=1, le=10080, description="How often gaps are re-read, "
                                         "half-way between collection ticks.")
    backfill_hours: int = Field(24, ge=0, le=1440, description="Slots the hub missed (first start, downtime) "
                                "read from the meters' memory, this far back.")
    batch_size: int = Field(1000, ge=1, le=100_000, description="Meters per head-end request.")
    request_timeout_s: float = Field(60.0, gt=0, le=3600, description="Longest wait for one head-end request, "
                                     "unless the head-end's settings say timeout_s.")
    tick_delay_s: float = Field(5.0, ge=0, le=600, description="Seconds after each interval boundary the cycle "
                                "starts, so meters have taken their snapshot.")


class ThrottleSection(_Section):
    """Limits on head-end requests in flight, shared by controls, collection, re-collection and reboots
    (handed out in that priority order). A head-end row's settings may override any key under
    ``throttle`` (and its ``concurrency`` overrides ``head_end_concurrency``)."""

    head_end_concurrency: int = Field(8, ge=1, le=10_000, description="Requests in flight at once per head-end.")
    concentrator_concurrency: int = Field(2, ge=1, le=1000, description="Single-meter requests (controls, "
                                          "status, reboots) in flight at once per concentrator.")
    recollect_share: float = Field(0.75, gt=0, le=1, description="Part of a limit re-collection may hold at once.")
    reboot_share: float = Field(0.5, gt=0, le=1, description="Part of a limit reboots may hold at once, so "
                                "collection and controls always find a free slot during a mass reboot.")


class ControlsSection(_Section):
    """Meter controls and mass reboot jobs (seed 2.3.8 to 2.3.10)."""

    reboot_workers: int = Field(64, ge=1, le=10_000, description="Reboot requests a mass reboot job keeps "
                                "queued at once (the throttle decides how many run).")
    progress_every: int = Field(100, ge=1, le=100_000, description="Device results per progress write of a job.")
    failures_shown: int = Field(100, ge=0, le=10_000, description="Per-device failures listed in a job's view "
                                "(all are in the controls history).")


class DemoSection(_Section):
    meters: int = Field(300, ge=1, le=200_000)
    failure_rate: float = Field(0.02, ge=0, le=1, description="Share of (meter, slot) reads the simulated "
                                "head-ends miss, so gaps appear and re-collection fills them.")
    head_ends: int = Field(2, ge=1, le=50)
    seed: int = 1


class VtnSection(_Section):
    """One VTN the VEN registers with (``[[openadr.vtns]]``); empty fields take the ``[openadr]`` value."""

    vtn_url: str = Field(min_length=1, description="Base URL, e.g. https://vtn.example/OpenADR2/Simple/2.0b.")
    ven_name: str | None = None
    ven_id: str | None = None
    vtn_id: str | None = Field(None, description="Expected vtnID; events from another are refused.")
    market_context: str | None = Field(None, description="Only events of this market context are acted on; "
                                       "empty accepts any.")
    vtn_fingerprint: str | None = None


class OpenAdrSection(_Section):
    """The OpenADR 2.0b VEN and meter ADR (see docs/openadr.md)."""

    vtn_url: str | None = None
    ven_name: str = "mdmhub"
    ven_id: str | None = Field(None, description="venID to ask for; empty lets the VTN assign one.")
    vtn_id: str | None = Field(None, description="Expected vtnID of vtn_url; empty accepts any.")
    market_context: str | None = Field(None, description="Market context of vtn_url's events; empty accepts any.")
    vtns: list[VtnSection] = Field(default_factory=list, description="Further VTNs, each with its market context.")
    poll_interval_s: float = Field(10.0, ge=0.1, le=86400, description="Shortest time between polls; the "
                                   "VTN's requested frequency is used when it is slower.")
    retry_max_s: float = Field(300.0, ge=0.1, le=86400, description="Back-off cap while the VTN is unreachable.")
    cert_file: Path | None = Field(None, description="PEM client certificate (TLS client auth and signing).")
    key_file: Path | None = Field(None, description="PEM private key of cert_file.")
    key_passphrase: str | None = None
    ca_file: Path | None = Field(None, description="CA bundle that verifies the VTN's TLS certificate.")
    check_hostname: bool = True
    sign_messages: bool = Field(False, description="Sign outgoing payloads (XML DSig) with cert_file/key_file.")
    vtn_fingerprint: str | None = Field(None, description="Fingerprint of the VTN's certificate; when set, "
                                        "unsigned or differently signed payloads are refused.")
    mapping_file: Path | None = Field(None, description="Target and signal mapping; empty means "
                                      "mappings/openadr.toml.")
    policy_timezone: str = Field("Asia/Tokyo", description="Time zone of ADR policies' days and hours.")
    answer_grace_s: float = Field(0.5, ge=0, le=30, description="Longest the opt answer waits for a first "
                                  "reservation outcome; later outcomes go to the action history only.")
    fanout_concurrency: int = Field(512, ge=1, le=100_000, description="Metering points whose reservations "
                                    "are in progress at once (each head-end's own concurrency still applies).")
    answer_inline_max: int = Field(1000, ge=0, le=10_000_000, description="Above this many targeted "
                                   "policies, the opt answer is decided from the distinct policy shapes and "
                                   "per-LD matching runs after answering.")


class MqttSection(_Section):
    enabled: bool = Field(False, description="Subscribe to pushing wireless units at start.")
    host: str = "127.0.0.1"
    port: int = Field(1883, ge=1, le=65535)
    username: str | None = None
    password: str | None = None
    client_id: str = Field("mdmhub-units", min_length=1, max_length=64,
                           description="Fixed so the broker keeps the session and queues QoS 1 readings "
                           "while the hub is down.")
    persistent_session: bool = Field(True, description="Keep the broker session (subscriptions and queued "
                                     "readings) across disconnects; false starts clean each time.")
    topics: list[str] = Field(default_factory=list, description="Subscription filters; empty means "
                              "every topic family of the mapping table.")
    mapping_file: Path | None = Field(None, description="Unit mapping table; empty means mappings/mqtt_units.toml.")
    tls: bool = False
    tls_ca_file: Path | None = Field(None, description="CA bundle for TLS; empty means the system's.")
    batch_size: int = Field(200, ge=1, le=10_000, description="Readings per ingest call.")
    flush_seconds: float = Field(1.0, gt=0, le=60, description="Longest a reading waits for its batch.")
    reconnect_max_seconds: float = Field(60.0, ge=0.1, le=3600, description="Back-off cap between reconnects.")


class BillingSection(_Section):
    export_dir: Path | None = Field(None, description="Folder of billing files; empty means <data.dir>/billing.")
    include_missing: bool = Field(True, description="Usage files list rows still missing (empty value, status "
                                  "missing) so billing knows what is absent; false leaves them out.")
    usage_retention_days: int = Field(60, ge=1, description="Usage rows older than this are purged "
                                      "(the meter register history is kept two months).")
    quote_retention_days: int = Field(1825, ge=1, description="Quote rows older than this are purged (60 months).")
    batch_size: int = Field(5000, ge=1, le=100_000, description="Rows per statement in quote imports.")
    use_estimates: bool = Field(False, description="Usage files carry estimates (docs/quality.md) in place of "
                                "missing rows; by default they carry actual and re-collected values only and "
                                "list what is missing.")


class EstimationSection(_Section):
    """Estimates of missing snapshots for visualisation and the dashboard (docs/quality.md)."""

    max_gap_slots: int = Field(8, ge=0, le=1440, description="Longest gap (missing 30-minute slots between two "
                               "values) estimated by linear interpolation; longer gaps stay missing.")
    max_flat_slots: int = Field(4, ge=0, le=1440, description="How many slots after the last value (or before "
                                "the first) are estimated flat; further ones stay missing.")


class AlertsSection(_Section):
    zero_run_slots: int = Field(12, ge=1, description="A run of zero increments longer than this many slots "
                                "raises reading.zero-run.")
    missing_run_slots: int = Field(6, ge=1, description="A run of missing readings longer than this many slots "
                                   "raises reading.missing-run.")
    spike_tolerance: float = Field(3.0, gt=1, description="A day's highest interval above this many times its "
                                   "third-highest raises reading.spike.")
    spike_min_increment: float = Field(0.5, ge=0, description="Intervals at or below this (kWh) never count as "
                                       "a spike, so near-idle days do not raise alerts.")
    clock_tolerance_seconds: float = Field(0.0, ge=0, le=900, description="How far a read's stamp may be off the "
                                           "30-minute grid before reading.clock-off-grid.")


class NmsSection(_Section):
    enabled: bool = Field(False, description="Send every alert to the NMS as RFC 5424 syslog.")
    host: str = "127.0.0.1"
    port: int = Field(514, ge=1, le=65535)
    transport: Literal["udp", "tcp"] = Field("udp", description="tcp uses octet-counting framing (RFC 6587).")
    app_name: str = Field("mdmhub", min_length=1, max_length=48, pattern=r"^[\x21-\x7e]+$")
    facility: Literal["user", "daemon", "local0", "local1", "local2", "local3", "local4", "local5", "local6",
                      "local7"] = "local0"
    hostname: str | None = Field(None, max_length=255, description="HOSTNAME field; empty means this host's name.")
    timeout_seconds: float = Field(2.0, gt=0, le=60, description="Connect and send timeout (tcp).")
    resend_seconds: float = Field(60.0, ge=1, description="How often alerts the NMS did not get are sent again.")


class CimSubscriber(_Section):
    """An enterprise system that gets 61968-9 EventMessages POSTed to ``url`` for the nouns it names."""

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
                      description="Key of the subscriber (its queue).")
    url: str = Field(pattern=r"^https?://", description="Where EventMessages are POSTed (plain XML).")
    nouns: list[Literal["EndDeviceEvents", "MeterReadings"]] = Field(
        default_factory=lambda: ["EndDeviceEvents", "MeterReadings"], description="Nouns it wants.")
    timeout_s: float = Field(30.0, gt=0, le=600, description="Time allowed for one delivery.")


class CimSection(_Section):
    """The IEC 61968-9 / 61968-100 edge (/cim/messages, /cim/soap)."""

    max_message_bytes: int = Field(16 * 1024 * 1024, ge=1024,
                                   description="Largest 61968-100 message accepted; larger ones are refused unread.")
    reply_addresses: list[str] = Field(default_factory=list,
                                       description="URL prefixes asynchronous replies may be sent to (allow-list).")
    reply_timeout_s: float = Field(30.0, gt=0, description="Time allowed to deliver one asynchronous reply.")
    source: str = Field("mdmhub", description="Header/Source of the messages the hub sends.")
    subscribers: list[CimSubscriber] = Field(default_factory=list,
                                             description="Enterprise systems the hub publishes 61968-9 events to.")
    publish_interval_s: float = Field(5.0, gt=0, description="How often queued events are offered to subscribers.")
    retry_min_s: float = Field(5.0, gt=0, description="First wait after a failed delivery (doubles each time).")
    retry_max_s: float = Field(900.0, gt=0, description="Longest wait between delivery attempts.")
    publish_batch: int = Field(50, ge=1, le=10000, description="Messages sent to one subscriber per round.")
    readings_per_message: int = Field(1000, ge=1, le=100000,
                                      description="Metering points per created MeterReadings message (parts).")
    replay_retention_hours: float = Field(168.0, gt=0, le=24 * 366, description="How long a received message's "
                                          "reply is kept, so a copy resent under the same MessageID gets it again.")
    parse_workers: int | None = Field(None, ge=0, le=16, description="Worker processes that parse and validate "
                                      "large create/created MeterReadings documents while the hub stores them "
                                      "(0: parsed in the hub's own process; unset: one on two cores or more).")


class AccessSection(_Section):
    """API clients, portal logins and the access log (see docs/public-api.md)."""

    lock_after_failures: int = Field(5, ge=1, le=100, description="Failed logins in a row that lock a portal account.")
    temporary_password_hours: float = Field(24.0, gt=0, le=720, description="How long an issued temporary "
                                            "password may be used (only to set a new one).")
    session_hours: float = Field(12.0, gt=0, le=720, description="Lifetime of a portal login.")
    default_rate_per_minute: int = Field(600, ge=1, description="Requests per minute an API client may make "
                                         "unless its own limit says otherwise.")


class PrivacySection(_Section):
    """Privacy before secondary use (seed 002)."""

    k_anonymity: int = Field(5, ge=1, le=10_000, description="Aggregates over fewer distinct customers than this "
                             "are suppressed.")
    timezone: str = Field("Asia/Tokyo", description="Time zone of days and months in aggregates and files.")


class DeliverySection(_Section):
    """Daily CSV files of 30-minute energy, fetched over HTTPS with the client's key (seed 000)."""

    dir: Path | None = Field(None, description="Folder of delivery files; empty means <data.dir>/delivery.")
    retention_days: int = Field(45, ge=1, le=3660, description="Files older than this are deleted.")
    daily_run: bool = Field(True, description="Make the previous day's files and purge old ones daily while the hub serves.")
    run_at_minutes: int = Field(90, ge=0, le=1439, description="Minutes after local midnight ([privacy] timezone) "
                                "of the daily run, leaving time to re-collect the day's last slots.")


class FiapUpstreamSection(_Section):
    """An IEEE 1888 storage the hub forwards selected points to (``[[ieee1888.upstreams]]``)."""

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._-]+$")
    url: str = Field(min_length=1, description="The storage's endpoint, e.g. http://host/axis2/services/FIAPStorage.")
    points: list[str] = Field(default_factory=lambda: ["*"], description="Point ID patterns (fnmatch) forwarded.")
    batch_values: int = Field(500, ge=1, le=5000, description="Values per WRITE (keep requests under 256 KiB).")
    retry_min_s: float = Field(5.0, gt=0, description="First back-off after a failed WRITE.")
    retry_max_s: float = Field(3600.0, gt=0, description="Longest back-off between attempts.")
    poll_s: float = Field(2.0, gt=0, description="How often the queue is looked at.")
    timeout_s: float = Field(30.0, gt=0)


class FiapFetchSection(_Section):
    """A remote IEEE 1888 storage the hub fetches points from periodically (``[[ieee1888.fetches]]``)."""

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._-]+$")
    url: str = Field(min_length=1)
    points: list[str] = Field(min_length=1, description="Point IDs fetched (each must be registered here).")
    every_s: float = Field(300.0, gt=0)
    acceptable_size: int = Field(1000, ge=1, le=100_000)
    timeout_s: float = Field(30.0, gt=0)


class Ieee1888Section(_Section):
    """The IEEE 1888 (FIAP) storage at /fiap and the hub's client (see docs/ieee1888.md)."""

    enabled: bool = True
    points_file: Path | None = Field(None, description="Point registry and writers (TOML) loaded at start.")
    max_request_bytes: int = Field(4 * 1024 * 1024, ge=4096, description="Larger requests are refused unread.")
    max_write_values: int = Field(5000, ge=1, description="More values in one WRITE gives TOO_MANY_VALUES.")
    max_keys: int = Field(6000, ge=1, description="More keys in one query gives TOO_MANY_KEYS.")
    default_acceptable_size: int = Field(100, ge=1)
    max_acceptable_size: int = Field(10_000, ge=1, description="A larger acceptableSize is capped silently.")
    cursor_idle_s: float = Field(60.0, gt=0, description="A cursor unused this long expires.")
    max_cursors_per_client: int = Field(10, ge=1)
    max_traps_per_client: int = Field(20, ge=1)
    max_trap_ttl_s: int = Field(86_400, ge=1)
    trap_timeout_s: float = Field(5.0, gt=0, description="Time allowed to a TRAP callback.")
    upstreams: list[FiapUpstreamSection] = Field(default_factory=list)
    fetches: list[FiapFetchSection] = Field(default_factory=list)


class Settings(BaseSettings):
    """All of the hub's settings. Build with :func:`load_settings`."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="_",
        env_nested_max_split=1,
        case_sensitive=False,
        extra="forbid",
    )

    data: DataSection = DataSection()
    database: DatabaseSection = DatabaseSection()
    http: HttpSection = HttpSection()
    log: LogSection = LogSection()
    registry: RegistrySection = RegistrySection()
    collection: CollectionSection = CollectionSection()
    throttle: ThrottleSection = ThrottleSection()
    controls: ControlsSection = ControlsSection()
    demo: DemoSection = DemoSection()
    openadr: OpenAdrSection = OpenAdrSection()
    mqtt: MqttSection = MqttSection()
    billing: BillingSection = BillingSection()
    estimation: EstimationSection = EstimationSection()
    alerts: AlertsSection = AlertsSection()
    nms: NmsSection = NmsSection()
    access: AccessSection = AccessSection()
    privacy: PrivacySection = PrivacySection()
    delivery: DeliverySection = DeliverySection()
    cim: CimSection = CimSection()
    ieee1888: Ieee1888Section = Ieee1888Section()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml_path = os.environ.get(CONFIG_FILE_ENV)
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if toml_path:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=Path(toml_path)))
        return tuple(sources)

    @property
    def database_url(self) -> str:
        """The effective database URL (SQLite under the data folder unless one is set)."""
        if self.database.url:
            return self.database.url
        return f"sqlite:///{(self.data.dir / 'mdmhub.db').resolve()}"

    @property
    def billing_dir(self) -> Path:
        """Where billing files go unless a command names a file."""
        return self.billing.export_dir or self.data.dir / "billing"


class ConfigError(Exception):
    """Settings that cannot be used; the message names every bad value and where it came from."""


def load_settings(config_file: Path | str | None = None, **overrides: Any) -> Settings:
    """Load settings from ``config_file`` (or ``$MDMHUB_CONFIG``) and the environment.

    Precedence, highest first: ``overrides`` (CLI flags), environment, TOML file, defaults.
    """
    if config_file is not None:
        path = Path(config_file)
        if not path.is_file():
            raise ConfigError(f"configuration file not found: {path}")
        os.environ[CONFIG_FILE_ENV] = str(path)
    elif (env_path := os.environ.get(CONFIG_FILE_ENV)) and not Path(env_path).is_file():
        raise ConfigError(f"configuration file not found: {env_path} (from {CONFIG_FILE_ENV})")
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise ConfigError(_describe(exc)) from None
    except ValueError as exc:  # TOML syntax errors and the like
        raise ConfigError(f"cannot read configuration: {exc}") from None


def _describe(exc: ValidationError) -> str:
    lines = ["invalid configuration:"]
    for err in exc.errors():
        loc = [str(part) for part in err["loc"]]
        key = ".".join(loc)
        env = ENV_PREFIX + "_".join(loc).upper()
        given = err.get("input")
        shown = "" if isinstance(given, dict) else f" (got {given!r})"
        lines.append(f"  [{loc[0]}] {'.'.join(loc[1:]) or key}: {err['msg']}{shown}; set it in the TOML file or {env}")
    return "\n".join(lines)
