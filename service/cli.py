"""`sobot-panel serve | sign | audit ...`: a thin layer that parses arguments and calls the library."""

from __future__ import annotations

import argparse
import asyncio
import functools
import gc
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from pydantic import ValidationError

if TYPE_CHECKING:
    from aiohttp import web

from . import __version__, assets
from .clock import now_ms
from .lifecycle import die_with_parent
from .protocol.signing import sign_fields
from .protocol.surfaces import Surface, View, build_query_string, zc_encode_blob
from .settings import Settings, describe_error
from .tenants.config import CompanyConfig, TenantsError, load_tenants

log = logging.getLogger("sobot_panel")


def _settings() -> Settings:
    try:
        return Settings()
    except ValidationError as error:
        print(f"sobot-panel: bad setting: {describe_error(error)}", file=sys.stderr)
        raise SystemExit(2) from None


def startup_warnings(settings: Settings, tenants: dict[str, CompanyConfig] | None = None) -> list[str]:
    warnings = []
    for name, config in (tenants or {}).items():
        if config.secret is None:
            warnings.append(
                f"tenant {name}: no secret: Sobot's legacy sign md5(sysNum+email) is accepted at /t/{name}/; it "
                "signs nothing about the customer, so its panels mark every customer as unverified. Set the "
                "tenant's secret (Sobot's security key)."
            )
        if config.trust_unsigned:
            warnings.append(f"tenant {name}: trust_unsigned={config.trust_unsigned}: unsigned keys choose customers.")
    if settings.demo:
        warnings.append(
            "DEMO MODE: sysNum 'demo', secret 'demo-secret', sample customers and the host simulator at "
            f"{settings.base_url}/dev/host. Never expose this to a network."
        )
    if settings.sysnum and settings.secret is None:
        warnings.append(
            "PANEL_SECRET is not set: Sobot's legacy sign md5(sysNum+email) is accepted. It signs nothing about "
            "the customer: whatever partnerId, phone, email or uid a URL carries chooses the customer, and every "
            "panel marks its customer as unverified. It never changes for an agent, so anyone who has seen one "
            "panel URL can open any customer's panel forever. Turn on Sobot's security key (安全密钥) and set "
            "PANEL_SECRET."
        )
    if settings.sysnum and settings.wecom_secret is None and not (settings.wecom_gateway and settings.wecom_temp_id):
        warnings.append(
            "PANEL_WECOM_SECRET is not set: a WeCom sign without the secret can be computed by anyone, so WeCom "
            "sidebar panels mark their customer as unverified. Turn on the WeCom secret in Sobot and set it."
        )
    if settings.trusted_unsigned:
        names = ", ".join(sorted(settings.trusted_unsigned))
        warnings.append(
            f"PANEL_TRUST_UNSIGNED={names}: these keys are not signed by Sobot, yet choose the customer when no "
            "signed key does; anyone who can edit a panel URL can choose them. Such customers show as unverified."
        )
    if settings.secret_previous is not None:
        warnings.append(
            "PANEL_SECRET_PREVIOUS is set: signs made with Sobot's previous security key are still accepted. "
            "Remove it once panel_sign_previous_secret_total stops growing."
        )
    if settings.session_key_generated:
        warnings.append(
            "PANEL_SESSION_KEY is not set: a random key was generated, so panel sessions only work with a "
            "single replica and end at restart. Set the same PANEL_SESSION_KEY on every replica."
        )
    if settings.api_token is None:
        warnings.append("PANEL_API_TOKEN is not set: POST /api/partners/{id}/invalidate is off.")
    return warnings


def _use_uvloop() -> bool:
    try:
        import uvloop
    except ImportError:
        return False
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return True


def _run_one(
    settings: Settings, host: str, port: int, grace: float, *, reuse_port: bool, drain_delay: float = 0.0
) -> int:
    from .app import create_app, unready_on_sigterm

    fast = _use_uvloop()
    log.info("sobot-panel worker %d listening on http://%s:%s%s", os.getpid(), host, port, " (uvloop)" if fast else "")
    app = create_app(settings)
    app.on_startup.append(_freeze_heap)
    app.on_startup.append(functools.partial(unready_on_sigterm, delay=drain_delay))
    from .redis import DataDirBusy

    try:
        _serve_app(app, host, port, grace, reuse_port=reuse_port)
    except DataDirBusy as error:
        print(f"sobot-panel: {error}", file=sys.stderr)
        return 2
    return 0


def _serve_app(app: web.Application, host: str, port: int, grace: float, *, reuse_port: bool) -> None:
    from aiohttp import web

    from .observability import AccessLogger

    web.run_app(
        app,
        host=host,
        port=port,
        access_log_class=AccessLogger,
        print=None,
        shutdown_timeout=grace,
        handle_signals=True,
        reuse_port=reuse_port or None,
    )


async def _freeze_heap(_app: object) -> None:
    """Move everything built at start-up (modules, templates, the catalog) out of the collector's sight:
    full collections then walk only what requests create. The call-center bench saw ~150 ms gen-2 pauses
    per worker every ~20 s without it."""
    gc.collect()
    gc.freeze()


def _supervise(settings: Settings, args: argparse.Namespace, host: str, port: int) -> int:
    """N worker processes on one port (SO_REUSEPORT); SIGTERM/SIGINT are passed on to every worker."""
    from prometheus_client.multiprocess import mark_process_dead

    from .redis import DataDirBusy, EmbeddedRedis

    env = dict(os.environ)
    embedded: EmbeddedRedis | None = None
    if settings.redis_url is None:
        # One embedded Redis for all workers: they must share cache, pub/sub and the audit stream.
        embedded = EmbeddedRedis(settings.data_dir / "redis")
        try:
            embedded.start()
        except DataDirBusy as error:
            print(f"sobot-panel: {error}", file=sys.stderr)
            return 2
        env["PANEL_REDIS_URL"] = embedded.url
        log.info("embedded redis-server started for %d workers at %s", args.workers, embedded.url)
    if settings.session_key_generated:
        env["PANEL_SESSION_KEY"] = settings.session_key.get_secret_value() if settings.session_key else ""
    # prometheus_client's multiprocess mode: every worker writes its metrics here, any worker serves them all.
    metrics_dir = settings.data_dir / f"metrics-{os.getpid()}"
    shutil.rmtree(metrics_dir, ignore_errors=True)
    metrics_dir.mkdir(parents=True)
    env["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
    command = [sys.executable, "-m", "sobot_panel", "serve", "--worker", "--host", host, "--port", str(port),
               "--grace", str(args.grace), "--drain-delay", str(args.drain_delay)]  # fmt: skip
    # A SIGKILLed supervisor takes its workers with it (they would go on serving the port otherwise).
    spawn = functools.partial(subprocess.Popen, command, env=env, preexec_fn=die_with_parent)
    workers = [spawn() for _ in range(args.workers)]
    stopping = False

    def forward(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        for worker in workers:
            if worker.poll() is None:
                worker.send_signal(signum)

    def forward_reload(signum: int, _frame: object) -> None:
        for worker in workers:  # each worker re-reads PANEL_TENANTS itself
            if worker.poll() is None:
                worker.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGHUP, forward_reload)
    try:
        while not stopping:
            for index, worker in enumerate(workers):
                if worker.poll() is not None and not stopping:
                    log.error("worker %d exited with %s; starting a new one", worker.pid, worker.returncode)
                    mark_process_dead(worker.pid, str(metrics_dir))  # type: ignore[no-untyped-call]
                    workers[index] = spawn()
            time.sleep(0.5)
        deadline = time.monotonic() + args.drain_delay + args.grace + 5
        for worker in workers:
            try:
                worker.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                worker.kill()
    finally:
        if embedded is not None:
            embedded.stop()
        shutil.rmtree(metrics_dir, ignore_errors=True)
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from .observability import configure_logging

    settings = _settings()
    try:
        assets.check()
    except assets.AssetError as error:
        print(f"sobot-panel: {error}", file=sys.stderr)
        return 2
    tenants = None
    if settings.tenants is not None:
        try:
            tenants = load_tenants(settings.tenants)
        except TenantsError as error:
            for problem in error.problems:  # one line per problem, each naming the tenant and the key
                print(f"sobot-panel: bad tenants file: {problem}", file=sys.stderr)
            return 2
    configure_logging(settings.log_format, settings.log_level)
    host = args.host or settings.host
    port = args.port if args.port is not None else settings.port
    if args.worker:
        return _run_one(settings, host, port, args.grace, reuse_port=True, drain_delay=args.drain_delay)
    for warning in startup_warnings(settings, tenants):
        log.warning(warning)
    if settings.demo:
        log.info("open the Sobot host simulator: %s/dev/host", settings.base_url)
        if settings.demo_key_path is not None:
            log.info("demo: panel sessions use the key kept in %s, so they survive a restart",
                     settings.demo_key_path)  # fmt: skip
    if args.workers > 1:
        return _supervise(settings, args, host, port)
    return _run_one(settings, host, port, args.grace, reuse_port=False, drain_delay=args.drain_delay)


def _parse_fields(pairs: Sequence[str]) -> dict[str, str]:
    fields: dict[str, str] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise SystemExit(f"sobot-panel: --field expects k=v, got {pair!r}")
        fields[name] = value
    return fields


def signed_url(
    settings: Settings, surface: Surface, view: View | None, fields: dict[str, str], *, zc_encode: bool = False
) -> str:
    """A URL Sobot could have opened: the configured secret, the current timestamp, a valid sign."""
    signed = sign_fields(surface, fields, settings.sign_policy(), now_ms())
    query = zc_encode_blob(signed) if zc_encode else build_query_string(signed)
    path = f"/embed/{surface.value}" + (f"/{view.value}" if view else "")
    return f"{settings.base_url}{path}?{query}"


def cmd_sign(args: argparse.Namespace) -> int:
    settings = _settings()
    try:
        surface = Surface(args.surface)
        view = View(args.view) if args.view else None
    except ValueError as error:
        print(f"sobot-panel: {error}", file=sys.stderr)
        return 2
    print(signed_url(settings, surface, view, _parse_fields(args.field), zc_encode=args.zc_encode))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sobot-panel", description=__doc__)
    parser.add_argument("--version", action="version", version=f"sobot-panel {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the service")
    serve.add_argument("--host", help="listen address (default PANEL_HOST)")
    serve.add_argument("--port", type=int, help="listen port (default PANEL_PORT)")
    serve.add_argument("--grace", type=float, default=10.0, help="seconds to drain on SIGTERM (default 10)")
    serve.add_argument("--drain-delay", type=float, default=0.0,
                       help="seconds between SIGTERM (readiness turns 503) and the drain (default 0)")  # fmt: skip
    serve.add_argument("--workers", type=int, default=1, help="worker processes sharing the port (SO_REUSEPORT)")
    serve.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    serve.set_defaults(run=cmd_serve)

    sign = commands.add_parser("sign", help="print a correctly signed panel URL")
    sign.add_argument("surface", choices=[s.value for s in Surface])
    sign.add_argument("--view", choices=[v.value for v in View])
    sign.add_argument("--field", action="append", default=[], metavar="K=V", help="a query field, repeatable")
    sign.add_argument("--zc-encode", action="store_true", help="encode the query as one zc_encode=1 blob")
    sign.set_defaults(run=cmd_sign)

    from .audit.cli import add_commands

    add_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from .audit.cli import join_negative_values

    args = build_parser().parse_args(join_negative_values(sys.argv[1:] if argv is None else argv))
    return int(args.run(args))
