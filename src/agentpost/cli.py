"""The command line: init, serve, mcp, keys, domains, inboxes, status."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import socket
import sys
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from agentpost import config as config_module
from agentpost import log as logsetup
from agentpost import schemas
from agentpost.config import Config, ConfigError, split_hostport
from agentpost.errors import AgentpostError, Unauthorized
from agentpost.proto.address import AddressError, parse_address
from agentpost.serve import build_context, ensure_tls, standalone_context
from agentpost.service import domains as domain_service
from agentpost.service import inboxes as inbox_service
from agentpost.service import keys as key_service
from agentpost.service.context import Context
from agentpost.store.db import Database

app = typer.Typer(help="agentpost: email inboxes for AI agents.", no_args_is_help=True, add_completion=False)
key_app = typer.Typer(help="API keys.", no_args_is_help=True)
domain_app = typer.Typer(help="Hosted domains.", no_args_is_help=True)
inbox_app = typer.Typer(help="Inboxes.", no_args_is_help=True)
app.add_typer(key_app, name="key")
app.add_typer(domain_app, name="domain")
app.add_typer(inbox_app, name="inbox")

# When piped (scripts, tests), do not squeeze tables to 80 columns and cut addresses.
out = Console(width=None if sys.stdout.isatty() else 200)
err = Console(stderr=True, width=None if sys.stderr.isatty() else 200)
T = TypeVar("T")


def run_loop(main: Coroutine[Any, Any, None]) -> None:
    """Run the server on uvloop (libuv) when it is installed: it halves the event loop's own
    cost per SMTP command and socket write; plain asyncio otherwise."""
    # The group-commit writer thread needs the GIL back after every SQLite call; with CPython's
    # 5 ms default switch interval a busy event loop makes each of those waits up to 5 ms.
    sys.setswitchinterval(0.0005)
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
        return
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main)


def _config() -> Config:
    try:
        return config_module.load()
    except ConfigError as exc:
        err.print(f"[red]configuration error:[/red] {exc}")
        raise typer.Exit(2) from None


def _with_context(config: Config, action: Callable[[Context], Awaitable[T]]) -> T:
    if not config.secret_key:
        err.print("[red]no secret_key configured:[/red] run `agentpost init` first (or set AGENTPOST_SECRET_KEY)")
        raise typer.Exit(2)

    async def main() -> T:
        db = Database(config.database_url)
        try:
            await db.migrate()
            return await action(build_context(config, db))
        finally:
            await db.close()

    try:
        return asyncio.run(main())
    except AgentpostError as exc:
        err.print(f"[red]error:[/red] {exc.message}")
        if getattr(exc, "errors", None):
            for item in exc.errors:  # type: ignore[attr-defined]
                err.print(f"  {item.get('path')}: {item.get('message')}")
        raise typer.Exit(1) from None
    except OSError as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from None


@app.command()
def init(hostname: str = typer.Option("", help="Name used in SMTP greetings and Message-IDs.")) -> None:
    """Write a commented config file and create the data directory (keeps an existing config)."""
    env = os.environ
    path = config_module.config_path(env)
    data_dir = config_module.default_data_dir(env).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    if path.exists():
        err.print(f"config {path} exists; keeping it")
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        text = config_module.TEMPLATE.format(
            hostname=hostname or env.get("AGENTPOST_HOSTNAME") or "localhost",
            data_dir=str(data_dir),
            secret_key=secrets.token_urlsafe(32),
        )
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # holds the secret key
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        err.print(f"wrote {path}")
    config = _config()
    try:
        cert, _ = ensure_tls(config)
    except (ConfigError, FileNotFoundError) as exc:
        err.print(f"[red]configuration error:[/red] {exc}")
        raise typer.Exit(2) from None
    err.print(f"TLS certificate: {cert}")

    async def migrate(ctx: Context) -> None:
        return None

    _with_context(config, migrate)
    err.print(f"data directory ready: {data_dir}")


@app.command()
def serve() -> None:
    """Run the HTTP API, the MX listener and the workers in one process."""
    from agentpost.serve import run

    config = _config()
    logsetup.setup(config.log_level)
    if not config.secret_key:
        err.print("[red]no secret_key configured:[/red] run `agentpost init` first (or set AGENTPOST_SECRET_KEY)")
        raise typer.Exit(2)
    try:
        run_loop(run(config))
    except (ConfigError, FileNotFoundError) as exc:
        err.print(f"[red]configuration error:[/red] {exc}")
        raise typer.Exit(2) from None
    except OSError as exc:
        err.print(f"[red]cannot start:[/red] {exc}")
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        pass


@app.command("mx-worker", hidden=True)
def mx_worker(
    parent_pid: int = typer.Option(0, help="pid of the serve process"),
    ready_fd: int = typer.Option(-1, help="pipe to write one byte to once listening"),
    writer_fd: int = typer.Option(-1, help="socket to the write process"),
    handover_fd: int = typer.Option(-1, help="socket the serve process hands HTTP connections over"),
) -> None:
    """An extra process on the MX port and for HTTP connections (started by `serve`; not for direct use)."""
    from agentpost.serve import run_mx_worker

    config = _config()
    logsetup.setup(config.log_level)
    with contextlib.suppress(KeyboardInterrupt):
        run_loop(
            run_mx_worker(
                config,
                parent_pid or None,
                ready_fd if ready_fd >= 0 else None,
                writer_fd if writer_fd >= 0 else None,
                handover_fd if handover_fd >= 0 else None,
            )
        )


@app.command("mcp")
def mcp_stdio(
    api_key: str = typer.Option(
        "", "--api-key", envvar="AGENTPOST_API_KEY", show_default=False, help="API key (or AGENTPOST_API_KEY)."
    ),
) -> None:
    """Serve the MCP tools on stdin/stdout (for Claude Desktop and other MCP clients)."""
    # In-process on the service layer, not a client of the HTTP API: the store is built for several
    # processes (SQLite writers take a cross-process lock, as `serve`'s own MX workers and every CLI
    # command do; PostgreSQL is shared anyway), the same scope checks apply, and mail to hosted
    # inboxes is delivered here (serve.standalone_context). Remote mail is queued for a running
    # `serve`; agents on another machine use the /mcp endpoint of the API instead.
    if not api_key.strip():
        err.print("[red]no API key:[/red] set AGENTPOST_API_KEY or pass --api-key (create one: `agentpost key create`)")
        raise typer.Exit(2)
    config = _config()
    # stdout carries the protocol: every log line goes to stderr, and only warnings and worse.
    logsetup.setup("WARNING")
    if not config.secret_key:
        err.print("[red]no secret_key configured:[/red] run `agentpost init` first (or set AGENTPOST_SECRET_KEY)")
        raise typer.Exit(2)

    async def main() -> None:
        async with standalone_context(config) as ctx:
            # Imported here: the MCP SDK costs every serve process ~25 MB it does not use.
            from agentpost.mcp.stdio import serve_stdio

            await serve_stdio(ctx, api_key)

    try:
        asyncio.run(main())
    except Unauthorized as exc:
        err.print(f"[red]API key refused:[/red] {exc.message}")
        raise typer.Exit(2) from None
    except (ConfigError, OSError) as exc:
        err.print(f"[red]cannot start:[/red] {exc}")
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        pass


@key_app.command("create")
def key_create(name: str = typer.Option("cli", help="A label for the key.")) -> None:
    """Create an organisation API key and print it (only the key, on stdout)."""
    created = _with_context(_config(), lambda ctx: key_service.bootstrap_key(ctx, name))
    sys.stdout.write(created.api_key + "\n")


@domain_app.command("add")
def domain_add(name: str) -> None:
    """Host a domain: mail to its inboxes is accepted by the MX."""

    async def action(ctx: Context) -> schemas.Domain:
        who = await key_service.operator(ctx)
        domain, _ = await domain_service.add(ctx, who, schemas.CreateDomain(domain=name))
        return domain

    domain = _with_context(_config(), action)
    out.print(f"domain [bold]{domain.domain}[/bold] ({domain.domain_id})")
    _print_records(domain)
    if domain.domain.count(".") < 2:
        out.print(
            "[yellow]tip:[/yellow] use a dedicated subdomain for agent mail (e.g. agents."
            f"{domain.domain}) so the agents' sending reputation stays apart from your people's."
        )


def _print_records(domain: schemas.Domain) -> None:
    table = Table(title="DNS records to publish")
    for column in ("type", "name", "value", "priority", "status"):
        table.add_column(column)
    for r in domain.records:
        table.add_row(r.type, r.name, r.value, str(r.priority or ""), r.status)
    out.print(table)


def _domain_key(name: str) -> str:
    # A domain id (dom_...) or a name, normalised like `domain add` does (case, IDN, final dot).
    return domain_service.normalise_domain(name) if "." in name else name


@domain_app.command("records")
def domain_records(
    name: str,
    zone_file: bool = typer.Option(False, "--zone-file", help="Print the records in BIND zone file format."),
) -> None:
    """The DNS records NAME should publish, with the status of the last check."""

    async def action(ctx: Context) -> schemas.Domain:
        who = await key_service.operator(ctx)
        return await domain_service.get(ctx, who, _domain_key(name))

    domain = _with_context(_config(), action)
    if zone_file:
        sys.stdout.write(domain_service.zone_file(domain))
        return
    out.print(f"domain [bold]{domain.domain}[/bold] ({domain.domain_id}): {domain.status}")
    _print_records(domain)
    out.print("BIND format: `agentpost domain records --zone-file NAME`; check: `agentpost domain verify NAME`.")


@domain_app.command("verify")
def domain_verify(name: str) -> None:
    """Look NAME's records up through the [dns] resolver and print each one's status and why.

    Exits 0 when the domain is VERIFIED (MX, SPF, DKIM and DMARC right), 1 otherwise.
    """

    async def action(ctx: Context) -> schemas.Domain:
        who = await key_service.operator(ctx)
        return await domain_service.verify(ctx, who, _domain_key(name))

    domain = _with_context(_config(), action)
    out.print(f"domain {domain.domain}: {domain.status}", markup=False, highlight=False, soft_wrap=True)
    width = max(len(r.name) for r in domain.records)
    for r in domain.records:
        line = f"  {r.status:<8} {r.type:<5} {r.name:<{width}}  {r.reason or ''}"
        out.print(line, markup=False, highlight=False, soft_wrap=True)
    if domain.status != "VERIFIED":
        if domain.reason:
            out.print(f"not verified: {domain.reason}", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(1)


@domain_app.command("rotate-dkim")
def domain_rotate_dkim(name: str) -> None:
    """Start a DKIM key rotation: publish the new selectors; signing switches once they are seen in DNS."""

    async def action(ctx: Context) -> schemas.Domain:
        who = await key_service.operator(ctx)
        return await domain_service.rotate(ctx, who, _domain_key(name))

    domain = _with_context(_config(), action)
    out.print(f"domain {domain.domain}: DKIM rotation", markup=False, highlight=False, soft_wrap=True)
    for r in domain.records:
        if "._domainkey." in r.name:
            out.print(f"  {r.status:<8} {r.name}  {r.reason or ''}", markup=False, highlight=False, soft_wrap=True)
    out.print("Publish the new selectors' TXT records (`agentpost domain records NAME`); signing switches to them")
    out.print("once the periodic re-check (or `agentpost domain verify NAME`) sees them.")


@inbox_app.command("create")
def inbox_create(address: str, display_name: str = typer.Option("", help="Display name.")) -> None:
    """Create an inbox at ADDRESS (its domain is added if it is not hosted yet)."""
    try:
        parsed = parse_address(address)
    except AddressError as exc:
        err.print(f"[red]invalid address:[/red] {exc}")
        raise typer.Exit(2) from None

    async def action(ctx: Context) -> schemas.Inbox:
        who = await key_service.operator(ctx)
        await domain_service.add(ctx, who, schemas.CreateDomain(domain=parsed.domain))
        inbox, _ = await inbox_service.create(
            ctx,
            who,
            schemas.CreateInbox(username=parsed.local_part, domain=parsed.domain, display_name=display_name or None),
        )
        return inbox

    inbox = _with_context(_config(), action)
    out.print(f"inbox [bold]{inbox.inbox_id}[/bold] created")


@inbox_app.command("list")
def inbox_list() -> None:
    """List inboxes."""

    async def action(ctx: Context) -> list[schemas.Inbox]:
        who = await key_service.operator(ctx)
        found: list[schemas.Inbox] = []
        token = None
        while True:
            page = await inbox_service.list_(ctx, who, 1000, token)
            found.extend(page.inboxes)
            token = page.next_page_token
            if not token:
                return found

    inboxes = _with_context(_config(), action)
    table = Table(title=f"{len(inboxes)} inboxes")
    for column in ("inbox_id", "display name", "status", "created"):
        table.add_column(column)
    for i in inboxes:
        table.add_row(
            i.inbox_id, i.display_name or "", i.status or "active", i.created_at.isoformat(timespec="seconds")
        )
    out.print(table)


@app.command()
def status() -> None:
    """Configuration, listeners and store counts."""
    config = _config()

    async def action(ctx: Context) -> dict[str, int]:
        from agentpost.store import stats

        async with ctx.db.read() as conn:
            return await stats.counts(conn)

    counts = _with_context(config, action)
    table = Table(title="agentpost status", show_header=False)
    table.add_row("config", str(config_module.config_path(os.environ)))
    table.add_row("data dir", str(Path(config.data_dir).resolve()))
    table.add_row("database", "postgresql" if config.database.url.startswith("postgres") else "sqlite")
    table.add_row("hostname", config.hostname)
    for label, listen, default in (("http", config.http.listen, 8080), ("mx", config.mx.listen, 25)):
        host, port = split_hostport(listen, default)
        table.add_row(f"{label} {listen}", "listening" if _listening(host, port) else "not running")
    for name, value in counts.items():
        table.add_row(name, str(value))
    out.print(table)


def _listening(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def main() -> None:
    app()
