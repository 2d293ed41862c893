"""Configuration: one TOML file plus AGENTPOST_* environment overrides, loaded once by the CLI."""

from __future__ import annotations

import ipaddress
import json
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class HttpConfig(Section):
    listen: str = "127.0.0.1:8080"
    # The URL clients use to reach this server; signed download URLs are built on it.
    public_url: str = ""


class MxConfig(Section):
    listen: str = "127.0.0.1:2525"
    # Processes serving SMTP here and HTTP on [http] listen (SO_REUSEPORT); 0 = one per CPU, at
    # most 4. Each also delivers what is sent through it ([outbound] limits apply per process).
    # SMTP sessions, parsing and the API are CPU-bound Python: a second core roughly doubles them.
    processes: int = 0
    max_message_size: int = 25 * 1024 * 1024
    max_recipients: int = 100
    # Per remote IP: simultaneous connections, and messages accepted per minute.
    max_connections_per_ip: int = 50
    max_messages_per_ip_per_minute: int = 6000
    # Seconds an idle SMTP session may wait for the next command.
    command_timeout: float = 300.0
    tls_cert: str = ""
    tls_key: str = ""
    # Sender authentication before the 250 (SPF, DKIM, DMARC; docs/configuration.md#mx).
    authenticate: bool = True
    # Clients whose mail is not checked (local processes, by default); "" or [] = none.
    trusted_networks: list[str] = Field(default_factory=lambda: ["127.0.0.0/8", "::1/128"])
    # ARC sealers (RFC 8617 §7.2) whose passing chain may override a DMARC failure, when the
    # sealer recorded dmarc=pass: forwarders and mailing lists you trust. Empty = ARC is recorded only.
    arc_trusted_sealers: list[str] = Field(default_factory=list)

    @field_validator("trusted_networks", "arc_trusted_sealers", mode="before")
    @classmethod
    def _split_networks(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [s.strip() for s in value.split(",") if s.strip()]
        return value

    @field_validator("arc_trusted_sealers")
    @classmethod
    def _check_sealers(cls, value: list[str]) -> list[str]:
        sealers = [domain.strip().lower().rstrip(".") for domain in value]
        for domain in sealers:
            if "." not in domain or any(c in domain for c in " @/;,"):
                raise ValueError(f"not a domain: {domain!r}")
        return sealers

    @field_validator("trusted_networks")
    @classmethod
    def _check_networks(cls, value: list[str]) -> list[str]:
        for network in value:
            try:
                ipaddress.ip_network(network, strict=False)
            except ValueError as exc:
                raise ValueError(f"not an IP network: {network!r}") from exc
        return value


class DnsConfig(Section):
    # host:port entries; when set, no other resolver is asked.
    servers: list[str] = Field(default_factory=list)
    timeout: float = 5.0

    @field_validator("servers", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [s.strip() for s in value.split(",") if s.strip()]
        return value


class OutboundConfig(Section):
    # Source address of outbound connections (bind before connect).
    source: str = ""
    # Per sending domain (the inbox's domain), a source address of its own: its IP's
    # reputation and PTR then belong to that domain alone. Domains not listed use `source`.
    source_by_domain: dict[str, str] = Field(default_factory=dict)
    # Port of remote MX hosts: 25 on the Internet; tests and smarthost-less labs may differ.
    port: int = 25
    # Seconds between attempts of a deferred message (the last value repeats), with jitter.
    retry_schedule: list[float] = Field(
        default_factory=lambda: [60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0, 14400.0, 28800.0]
    )
    # Seconds after which a message still deferred bounces (Transient).
    lifetime: float = 5 * 24 * 3600.0
    timeout: float = 60.0
    # opportunistic (STARTTLS when offered) | require | none
    tls: str = "opportunistic"
    # Deliveries in flight at once, and sessions open to one receiving host at once.
    concurrency: int = 50
    per_host: int = 20
    # Ages (seconds since queued) at which another message.delayed event is sent; the first
    # deferral always sends one.
    delay_notices: list[float] = Field(default_factory=lambda: [14400.0, 86400.0, 172800.0])
    # Seconds a claimed queue item stays leased: a process that dies leaves its items to the
    # others after this.
    lease: float = 600.0
    # Smarthost ("host" or "host:port"): relay all outbound mail through it instead of the MX.
    smarthost: str = ""
    # require (STARTTLS, never clear) | implicit (TLS from the first byte, port 465) | none
    smarthost_tls: str = "require"
    smarthost_username: str = ""
    smarthost_password: str = ""
    # List-Unsubscribe (RFC 2369) + one-click (RFC 8058) on every message sent through the API;
    # a caller-supplied List-Unsubscribe header always wins.
    list_unsubscribe: bool = True
    # MTA-STS (RFC 8461): honour recipient domains' policies. Under "enforce" mail goes only to a
    # listed MX over STARTTLS with a verified certificate, else it is deferred (4.7.5), never sent
    # in clear. Not applied through a smarthost.
    mta_sts: bool = True
    # PEM file of CA certificates trusted besides the system store for MTA-STS: the policy hosts
    # (https://mta-sts.<domain>) and the MX certificates under a policy. "" = system store only.
    mta_sts_ca_file: str = ""
    # For tests only: the port of policy hosts (RFC 8461 §3.3 fixes 443). Not in the default file.
    mta_sts_port: int = Field(default=443, ge=1, le=65535)

    @field_validator("tls")
    @classmethod
    def _tls_mode(cls, value: str) -> str:
        if value not in ("opportunistic", "require", "none"):
            raise ValueError("must be opportunistic, require or none")
        return value

    @field_validator("smarthost_tls")
    @classmethod
    def _smarthost_tls_mode(cls, value: str) -> str:
        if value not in ("require", "implicit", "none"):
            raise ValueError("must be require, implicit or none")
        return value


class DomainsConfig(Section):
    # How the generated SPF record ends: "-all" (fail what is not listed) or "~all" (softfail).
    spf_all: str = "-all"
    # MTA-STS policy mode served at https://mta-sts.<domain>/.well-known/mta-sts.txt (RFC 8461).
    mta_sts_mode: str = "testing"
    # HTTPS URL of an SVG Tiny PS logo: when set, every domain gets a BIMI record for it.
    bimi_logo: str = ""
    # Seconds between DNS re-checks of each domain's records (0: never).
    recheck_interval: float = 6 * 3600.0
    # Seconds between automatic DKIM key rotations of each domain (0: only on request).
    dkim_rotation_interval: float = 182 * 86400.0
    # Seconds a replaced DKIM key stays published after signing switched away from it.
    dkim_grace_period: float = 7 * 86400.0

    @field_validator("spf_all")
    @classmethod
    def _spf_all(cls, value: str) -> str:
        if value not in ("-all", "~all"):
            raise ValueError("must be -all or ~all")
        return value

    @field_validator("dkim_rotation_interval", "dkim_grace_period")
    @classmethod
    def _not_negative(cls, value: float) -> float:
        if value < 0:
            raise ValueError("must not be negative")
        return value

    @field_validator("mta_sts_mode")
    @classmethod
    def _mta_sts_mode(cls, value: str) -> str:
        if value not in ("testing", "enforce", "none"):
            raise ValueError("must be testing, enforce or none")
        return value


class DatabaseConfig(Section):
    # Empty: embedded SQLite at <data_dir>/agentpost.db.
    url: str = ""
    # Received messages are committed in groups of at most this many (one fsync each group).
    commit_batch: int = 256
    # Seconds the group committer waits for more messages before committing a group; a little
    # latency buys larger groups (each commit has a fixed cost).
    commit_linger: float = 0.002
    # SQLite: `serve` runs every process's write transactions in one process of its own
    # (store/write_process.py); off, each process writes itself, taking turns on a file lock.
    write_process: bool = True


class ParseConfig(Section):
    max_headers: int = 1000
    max_header_length: int = 64 * 1024
    max_depth: int = 20
    max_parts: int = 500
    time_budget: float = 2.0


class WebhookConfig(Section):
    # Seconds between attempts; the last value repeats until max_age is reached.
    retry_schedule: list[float] = Field(
        default_factory=lambda: [5.0, 30.0, 120.0, 600.0, 1800.0, 3600.0, 7200.0, 14400.0, 28800.0],
    )
    max_age: float = 3 * 24 * 3600.0
    timeout: float = 10.0
    concurrency: int = 8
    # Failed attempts in a row (across events) after which a webhook is disabled, with a
    # webhook.disabled event; a success resets the run. 0 never disables.
    disable_after_failures: int = Field(default=50, ge=0)


class Config(Section):
    hostname: str = "localhost"
    data_dir: str = "./data"
    # Key for encrypting secrets at rest and signing download URLs; generated by `agentpost init`.
    secret_key: str = ""
    log_level: str = "INFO"
    http: HttpConfig = Field(default_factory=HttpConfig)
    mx: MxConfig = Field(default_factory=MxConfig)
    dns: DnsConfig = Field(default_factory=DnsConfig)
    outbound: OutboundConfig = Field(default_factory=OutboundConfig)
    domains: DomainsConfig = Field(default_factory=DomainsConfig)
    database: DatabaseConfig = Field(default_factory=DatabaseConfig)
    parse: ParseConfig = Field(default_factory=ParseConfig)
    webhooks: WebhookConfig = Field(default_factory=WebhookConfig)

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir)

    @property
    def database_url(self) -> str:
        return self.database.url or f"sqlite:///{self.data_path / 'agentpost.db'}"

    @property
    def public_url(self) -> str:
        if self.http.public_url:
            return self.http.public_url.rstrip("/")
        return f"http://{self.http.listen}"


class ConfigError(Exception):
    """The configuration file or an override is invalid; the message says which setting."""


ENV_PREFIX = "AGENTPOST_"
SECTIONS = {name for name, f in Config.model_fields.items() if isinstance(f.default_factory, type)}


def default_data_dir(environ: Mapping[str, str]) -> Path:
    return Path(environ.get("AGENTPOST_DATA_DIR", "./data"))


def config_path(environ: Mapping[str, str]) -> Path:
    if "AGENTPOST_CONFIG" in environ:
        return Path(environ["AGENTPOST_CONFIG"])
    return default_data_dir(environ) / "agentpost.toml"


def _env_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    """AGENTPOST_<SECTION>_<KEY> sets [section] key; AGENTPOST_<KEY> sets a top-level key."""
    out: dict[str, Any] = {}
    for name, value in environ.items():
        if not name.startswith(ENV_PREFIX) or name in ("AGENTPOST_CONFIG",):
            continue
        key = name[len(ENV_PREFIX) :].lower()
        section, _, rest = key.partition("_")
        parsed: Any = value
        if (value.startswith("[") and value.endswith("]")) or (value.startswith("{") and value.endswith("}")):
            try:
                # lists such as AGENTPOST_WEBHOOKS_RETRY_SCHEDULE=[1,2,4], tables as JSON objects
                parsed = json.loads(value)
            except ValueError:
                parsed = value
        if section in SECTIONS and rest:
            out.setdefault(section, {})[rest] = parsed
        elif key in Config.model_fields and key not in SECTIONS:
            out[key] = parsed
    return out


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def load(environ: Mapping[str, str] | None = None, path: Path | None = None) -> Config:
    """Read the config file (if it exists) and apply environment overrides."""
    env = os.environ if environ is None else environ
    file = path or config_path(env)
    data: dict[str, Any] = {}
    if file.exists():
        try:
            data = tomllib.loads(file.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{file}: {exc}") from None
    if "data_dir" not in data:
        data["data_dir"] = str(default_data_dir(env))
    data = _merge(data, _env_overrides(env))
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors())
        raise ConfigError(f"invalid configuration: {problems}") from None


def split_hostport(value: str, default_port: int) -> tuple[str, int]:
    """'127.0.0.1:8080' -> ('127.0.0.1', 8080); '[::1]:25' -> ('::1', 25)."""
    value = value.strip()
    if value.startswith("["):
        host, _, rest = value[1:].partition("]")
        port = rest.lstrip(":")
        return host, int(port) if port else default_port
    if value.count(":") == 1:
        host, port = value.split(":")
        return host, int(port)
    return value, default_port


TEMPLATE = """# agentpost configuration. Every setting can be overridden by an environment variable:
# AGENTPOST_<SECTION>_<KEY> (e.g. AGENTPOST_HTTP_LISTEN) or AGENTPOST_<KEY> for top-level keys.

# Name this server uses in SMTP greetings (EHLO/banner) and Message-IDs.
hostname = "{hostname}"
data_dir = "{data_dir}"
# Encrypts secrets at rest (webhook secrets) and signs download URLs. Keep it private.
secret_key = "{secret_key}"
log_level = "INFO"

[http]
listen = "127.0.0.1:8080"
# public_url = "https://mail.example.com"   # how clients reach this server

[mx]
# Port 25 in production; 2525 needs no privileges for development.
listen = "127.0.0.1:2525"
max_message_size = 26214400
max_recipients = 100
# Seconds an idle SMTP session may wait for its next command.
command_timeout = 300.0
max_connections_per_ip = 50
max_messages_per_ip_per_minute = 6000
# SMTP worker processes sharing the listen address; 0 = one per CPU (at most 4).
processes = 0
# STARTTLS certificate; empty = the self-signed one generated in the data dir.
tls_cert = ""
tls_key = ""
# SPF, DKIM and DMARC on every message before the 250 (p=reject failures get 550 5.7.1).
authenticate = true
# Clients whose mail is not checked: local processes.
trusted_networks = ["127.0.0.0/8", "::1/128"]
# ARC sealers (forwarders, mailing lists) whose passing chain may override a DMARC failure
# when they recorded dmarc=pass (RFC 8617 §7.2); empty = ARC is recorded, never acted on.
# arc_trusted_sealers = ["lists.example.org"]

[dns]
# servers = ["127.0.0.1:53"]   # when set, nothing else is asked
timeout = 5.0

[outbound]
# source = "192.0.2.10"   # source address for outbound connections
# source_by_domain = {{ "agents.example.com" = "192.0.2.11" }}   # per sending domain
port = 25
retry_schedule = [60, 300, 900, 1800, 3600, 7200, 14400, 28800]
lifetime = 432000.0
timeout = 60.0
tls = "opportunistic"
concurrency = 50
per_host = 20
delay_notices = [14400, 86400, 172800]
lease = 600.0
# smarthost = "smtp.relay.example:587"   # relay everything through it (port 25 blocked)
smarthost_tls = "require"
# smarthost_username = ""
# smarthost_password = ""                # or AGENTPOST_OUTBOUND_SMARTHOST_PASSWORD
list_unsubscribe = true                  # List-Unsubscribe + one-click on sent mail
mta_sts = true                           # honour recipient domains' MTA-STS policies (RFC 8461)
# mta_sts_ca_file = ""                   # extra CAs (PEM) for MTA-STS policy hosts and MX certificates

[domains]
# DNS records recommended for each hosted domain (`agentpost domain records NAME`, docs/dns.md).
spf_all = "-all"            # or "~all"
mta_sts_mode = "testing"    # testing | enforce | none, once TLS-RPT reports look clean
# bimi_logo = "https://example.com/logo.svg"   # adds a BIMI record (SVG Tiny PS)
recheck_interval = 21600.0  # seconds between DNS re-checks of every domain; 0 = never
dkim_rotation_interval = 15724800.0  # seconds between DKIM key rotations (182 days); 0 = on request
dkim_grace_period = 604800.0         # seconds a replaced DKIM key stays published (7 days)

[database]
# url = "postgresql://agentpost@127.0.0.1/agentpost"   # empty: SQLite in data_dir
commit_batch = 256
commit_linger = 0.002
write_process = true        # SQLite: one process does every write (faster under load)

[parse]
max_headers = 1000
max_header_length = 65536
max_depth = 20
max_parts = 500
time_budget = 2.0

[webhooks]
retry_schedule = [5, 30, 120, 600, 1800, 3600, 7200, 14400, 28800]
max_age = 259200.0
timeout = 10.0
concurrency = 8
disable_after_failures = 50
"""
