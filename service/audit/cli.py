"""`sobot-panel audit tail | export`: read the audit stream from a terminal.

`tail` follows the stream through a consumer group (default `cli`), so several terminals with the same
group share the work and nothing is missed between runs: every entry is printed, then acked. Entries
that `--kind` filters out are acked too (the group has "seen" them; use another `--group` to read
them again). `--from-start` only matters when the group is created: it then starts at the first entry
instead of at new ones. Ctrl-C or SIGTERM stops it cleanly within a second.

`export` pages through the stream by ID (no group, nothing acked) as JSON lines or CSV, optionally only
some kinds, agents or customers (`--kind`, `--agent`, `--partner`, each repeatable). The CSV is UTF-8
with a byte-order mark, so Excel opens Chinese text correctly; values are written verbatim (an audit
copy) except `at`, which is ISO 8601 in China time; the header is
`entry_id,kind,id,at,surface,agent,partner_id,uid,cid,payload,v,sysnum,request_id`. A closed pipe
(`export ... | head`) ends it quietly with status 0. `--since -1h` works as well as `--since=-1h`.

`schema` prints the JSON Schema of a record.

Both read `PANEL_REDIS_URL`; when it is unset they use the embedded redis-server of a running
`sobot-panel serve` (its unix socket under `PANEL_DATA_DIR/redis/`).

This module does not import the web application, so it runs wherever the settings do; it is also
runnable on its own: `python -m sobot_panel.audit.cli audit tail ...`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import json
import os
import signal
import socket
import sys
from collections.abc import Callable, Coroutine, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

from pydantic import ValidationError

from ..clock import CHINA_TZ
from ..redis import REDIS_DOWN, RedisClient, connect_any, keys_for
from ..redis.keys import Keys
from ..settings import Settings, describe_error, load_settings
from ..tenants.config import NAME
from .reader import AuditReader, Entry, iter_range, parse_time_bound
from .record import FIELD_ORDER, schema_text

KINDS = ("ticket", "order_card", "goods_card")
CSV_HEADER = ("entry_id", *FIELD_ORDER)
# Keep a blocking read below the client's 2 s socket timeout, and Ctrl-C answered within a second.
TAIL_BLOCK_MS = 1000
_DESCRIPTION = (__doc__ or "").split("\n\nThis module")[0]


class CliError(Exception):
    """One line for the operator, then exit status `code`."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register the `audit` sub-commands on the CLI's sub-parser collection."""
    audit = commands.add_parser("audit", help="read the audit stream (tail, export)", description=_DESCRIPTION,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    actions = audit.add_subparsers(dest="audit_command", required=True)

    tail = actions.add_parser("tail", help="follow the stream through a consumer group, acking what it prints")
    tail.add_argument("--group", default="cli", help="consumer group (default: cli)")
    tail.add_argument("--consumer", help="consumer name (default: hostname-pid)")
    tail.add_argument("--kind", action="append", choices=KINDS, help="print only this kind (repeatable); "
                      "the others are acked without printing")  # fmt: skip
    _add_filters(tail, kinds=False)
    tail.add_argument("--json", action="store_true", help="print each record as one JSON object")
    tail.add_argument(
        "--from-start", action="store_true", help="a new group starts at the first entry, not at new ones"
    )
    tail.add_argument("--count", type=int, help="exit after printing this many entries")
    tail.set_defaults(run=cmd_tail)

    export = actions.add_parser("export", help="write a range of the stream as JSON lines or CSV")
    export.add_argument(
        "--since",
        default="-",
        help="2026-11-24, 2026-11-24T10:00 (China time unless an offset is given), -1h, -2d, "
        "a ms timestamp or a stream ID (default: the first entry)",
    )
    export.add_argument("--until", default="+", help="same forms; a date alone includes that whole day (default: now)")
    export.add_argument("--format", choices=("jsonl", "csv"), default="jsonl",
                        help="default: jsonl; CSV times (`at`) are ISO 8601 in China time")  # fmt: skip
    _add_filters(export, kinds=True)
    export.add_argument("--output", type=Path, help="file to write (default: standard output)")
    export.set_defaults(run=cmd_export)

    schema = actions.add_parser("schema", help="print the JSON Schema of an audit record")
    schema.set_defaults(run=cmd_schema)


def _add_filters(parser: argparse.ArgumentParser, *, kinds: bool) -> None:
    tenant_help = "a company of PANEL_TENANTS (its own stream, panel:NAME:audit); default: the single company"
    parser.add_argument("--tenant", default="", metavar="NAME", help=tenant_help)
    if kinds:
        parser.add_argument("--kind", action="append", choices=KINDS, help="only this kind (repeatable)")
    parser.add_argument("--agent", action="append", help="only this agent (repeatable)")
    parser.add_argument("--partner", action="append", help="only this customer's partnerId (repeatable)")


def matches(fields: dict[str, str], args: argparse.Namespace) -> bool:
    """Whether an entry passes `--kind`, `--agent` and `--partner` (each repeatable: any of its values)."""
    for option, field in (("kind", "kind"), ("agent", "agent"), ("partner", "partner_id")):
        wanted = getattr(args, option, None)
        if wanted and fields.get(field) not in wanted:
            return False
    return True


def join_negative_values(argv: Sequence[str]) -> list[str]:
    """`--since -1h` as `--since=-1h`: argparse takes a value starting with `-` for an option otherwise."""
    joined: list[str] = []
    items = list(argv)
    index = 0
    while index < len(items):
        item = items[index]
        following = items[index + 1] if index + 1 < len(items) else ""
        if item in ("--since", "--until") and following.startswith("-") and following != "-":
            joined.append(f"{item}={following}")
            index += 2
            continue
        joined.append(item)
        index += 1
    return joined


# --- commands --------------------------------------------------------------------------------------


def cmd_tail(args: argparse.Namespace) -> int:
    return _run(_tail_main, args)


def cmd_export(args: argparse.Namespace) -> int:
    return _run(_export_main, args)


def cmd_schema(args: argparse.Namespace) -> int:
    """The record's JSON Schema as shipped in the package (no Redis, no settings needed)."""
    sys.stdout.write(schema_text())
    return 0


def _run(main: Callable[[argparse.Namespace], Coroutine[Any, Any, int]], args: argparse.Namespace) -> int:
    try:
        return int(asyncio.run(main(args)))
    except CliError as error:
        print(f"sobot-panel: {error}", file=sys.stderr)
        return error.code
    except KeyboardInterrupt:  # Ctrl-C before the signal handlers were in place
        return 130


async def _tail_main(args: argparse.Namespace) -> int:
    if args.count is not None and args.count < 1:
        raise CliError("--count must be at least 1", 2)
    settings = _load_settings()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    redis, keys = _connect(settings, args.tenant)
    try:
        reader = AuditReader(
            redis, keys, args.group, args.consumer or f"{socket.gethostname()}-{os.getpid()}",
            claim_idle_ms=settings.audit_claim_idle_ms, dead_after=settings.audit_dead_after,
        )  # fmt: skip
        await tail(reader, sys.stdout, stop, kinds=args.kind, as_json=args.json, count=args.count,
                   from_start=args.from_start, accept=lambda fields: matches(fields, args))  # fmt: skip
    except BrokenPipeError:  # before REDIS_DOWN: it is an OSError too, but it is our reader that left
        _quiet_stdout()
    except REDIS_DOWN as error:
        raise CliError(f"Redis unavailable: {error}") from None
    finally:
        await redis.aclose()
    return 0


def _connect(settings: Settings, tenant: str = "") -> tuple[RedisClient, Keys]:
    """The client and key names the service itself uses for these settings (Cluster keys hash-tagged), for
    the single company or, with `tenant`, for that company of PANEL_TENANTS."""
    url = redis_url(settings)
    keys = keys_for(settings.redis_prefix, url, cluster=settings.redis_cluster)
    if tenant:
        if not NAME.match(tenant):
            raise CliError(f"--tenant {tenant!r}: a tenant name is lower-case letters, digits and '-'", 2)
        try:
            keys = keys.for_tenant(tenant)
        except ValueError as error:
            raise CliError(f"--tenant: {error}", 2) from None
    client = connect_any(url, cluster=settings.redis_cluster, tls_ca=settings.redis_tls_ca)
    return client, keys


async def tail(
    reader: AuditReader,
    out: TextIO,
    stop: asyncio.Event,
    *,
    kinds: Sequence[str] | None = None,
    as_json: bool = False,
    count: int | None = None,
    from_start: bool = False,
    accept: Callable[[dict[str, str]], bool] | None = None,
) -> int:
    """Print entries as they arrive and ack each batch once printed; returns how many were printed."""
    await reader.ensure_group("0" if from_start else "$")
    printed = 0
    while not stop.is_set() and (count is None or printed < count):
        # Never take more than is left to print, so nothing is acked that was not shown.
        entries = await reader.read(count=100 if count is None else min(100, count - printed), block_ms=TAIL_BLOCK_MS)
        for entry in entries:
            if kinds and entry.fields.get("kind") not in kinds:
                continue
            if accept is not None and not accept(entry.fields):
                continue
            out.write((json.dumps(entry_json(entry), ensure_ascii=False) if as_json else human_line(entry)) + "\n")
            printed += 1
        out.flush()
        await reader.ack(entry.entry_id for entry in entries)
    await reader.leave()
    return printed


async def _export_main(args: argparse.Namespace) -> int:
    try:
        start = parse_time_bound(args.since)
        end = parse_time_bound(args.until, end=True)
    except ValueError as error:
        raise CliError(str(error), 2) from None
    settings = _load_settings()
    redis, keys = _connect(settings, args.tenant)
    encoding = "utf-8-sig" if args.format == "csv" else "utf-8"
    accept: Callable[[dict[str, str]], bool] = lambda fields: matches(fields, args)  # noqa: E731
    try:
        if args.output is None:
            sys.stdout.reconfigure(encoding=encoding, newline="")  # type: ignore[union-attr]
            await export(redis, keys, start, end, args.format, sys.stdout, accept=accept)
            sys.stdout.flush()
        else:
            # Written aside and renamed when complete: a file under the final name is never half an export.
            partial = args.output.with_name(args.output.name + ".part")
            with partial.open("w", encoding=encoding, newline="") as out:
                written = await export(redis, keys, start, end, args.format, out, accept=accept)
            partial.replace(args.output)
            print(f"exported {written} entries to {args.output}", file=sys.stderr)
    except BrokenPipeError:  # before REDIS_DOWN: `export ... | head` closed our output; that is not an error
        _quiet_stdout()
    except REDIS_DOWN as error:
        raise CliError(f"Redis unavailable: {error}") from None
    finally:
        await redis.aclose()
    return 0


def _quiet_stdout() -> None:
    """Our reader left (`| head`): send what is still buffered to /dev/null, so exiting says nothing."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


async def export(
    redis: RedisClient,
    keys: Keys,
    start: str,
    end: str,
    fmt: str,
    out: TextIO,
    *,
    accept: Callable[[dict[str, str]], bool] | None = None,
) -> int:
    """Write every entry with a stream ID in [start, end] (that `accept` takes) to `out`; returns how many."""
    writer = csv.writer(out) if fmt == "csv" else None
    if writer is not None:
        writer.writerow(CSV_HEADER)
    written = 0
    async for entry in iter_range(redis, keys, start, end):
        if accept is not None and not accept(entry.fields):
            continue
        if writer is not None:
            writer.writerow([entry.entry_id, *(csv_value(name, entry.fields.get(name, "")) for name in FIELD_ORDER)])
        else:
            out.write(json.dumps(entry_json(entry), ensure_ascii=False) + "\n")
        written += 1
    return written


# --- formatting ------------------------------------------------------------------------------------


def entry_json(entry: Entry) -> dict[str, Any]:
    """The record as JSON (`at` a number), with its `entry_id`; raw fields for an entry of another writer."""
    try:
        return {"entry_id": entry.entry_id, **entry.record.model_dump()}
    except ValidationError:
        return {"entry_id": entry.entry_id, **entry.fields}


def iso_time(ms: str) -> str:
    """`1764000000123` -> `2026-11-25T00:00:00.123+08:00` (ISO 8601, China time, as every CLI time is)."""
    if not ms.isdigit():
        return ms
    return datetime.fromtimestamp(int(ms) / 1000, CHINA_TZ).isoformat(timespec="milliseconds")


def csv_value(name: str, value: str) -> str:
    return iso_time(value) if name == "at" else value


def human_line(entry: Entry) -> str:
    """`2026-11-24 10:00:01  order_card  agent@acme.com  partner=P1001  order A123 ¥10.00 ×2` (China time)."""
    fields = entry.fields
    at = fields.get("at", "")
    when = datetime.fromtimestamp(int(at) / 1000, CHINA_TZ).strftime("%Y-%m-%d %H:%M:%S") if at.isdigit() else "?"
    parts = [when, fields.get("kind", "?"), fields.get("agent", "") or "-"]
    if fields.get("partner_id"):
        parts.append(f"partner={fields['partner_id']}")
    parts.append(summarize(fields.get("kind", ""), fields.get("payload", "")))
    return "  ".join(parts)


def summarize(kind: str, payload: str, width: int = 80) -> str:
    """A few words about what was sent (SPEC §5): the ticket title, the order number and amount, the goods."""
    try:
        message = json.loads(payload)
        text = _summary(message) if isinstance(message, dict) else None
    except (ValueError, TypeError, KeyError, AttributeError):
        text = None
    text = " ".join((text or payload).split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _summary(message: dict[str, Any]) -> str | None:
    if message.get("type") == "createOrder":  # SPEC §5.1
        params = message.get("params") or {}
        title = params.get("card_title") or ", ".join(f"{k}={v}" for k, v in list(params.items())[:3])
        return f"ticket {title}"
    page = message.get("miniPage")
    card = json.loads(page) if isinstance(page, str) else page
    if not isinstance(card, dict):
        return None
    msg_type = message.get("msgType")
    if msg_type == 25:  # SPEC §5.2: totalFee in fen
        fee = str(card.get("totalFee", ""))
        amount = f" ¥{int(fee) / 100:.2f}" if fee.isdigit() else ""
        count = f" ×{card['goodsCount']}" if card.get("goodsCount") not in (None, "") else ""
        return f"order {card.get('orderCode', '')}{amount}{count}"
    if msg_type == 24:  # SPEC §5.3
        return f"goods {card.get('title', '')} {card.get('label', '')}".rstrip()
    if msg_type == 28:  # SPEC §5.4
        small = (card.get("customCards") or [{}])[0]
        name = small.get("customCardName", "") or card.get("cardDesc", "")
        code = small.get("customCardCode", "")
        return f"{'order' if card.get('cardType') == 0 else 'goods'} card {code} {name}".replace("  ", " ").strip()
    return None


# --- connection ------------------------------------------------------------------------------------


def _load_settings() -> Settings:
    try:
        return load_settings()
    except ValidationError as error:
        raise CliError(f"bad setting: {describe_error(error)}", 2) from None


def embedded_socket(settings: Settings) -> Path:
    """Where `sobot-panel serve` puts its embedded redis-server's socket (see `sobot_panel.redis.EmbeddedRedis`)."""
    return settings.data_dir.resolve() / "redis" / "redis.sock"


def redis_url(settings: Settings) -> str:
    """`PANEL_REDIS_URL`, else the embedded server's socket if a server answers there, else a clear error."""
    if settings.redis_url:
        return settings.redis_url
    path = embedded_socket(settings)
    if _answers(path):
        return f"unix://{path}"
    raise CliError(
        f"no Redis: PANEL_REDIS_URL is not set and no embedded redis-server answers at {path} "
        "(start `sobot-panel serve` with the same PANEL_DATA_DIR, or set PANEL_REDIS_URL)"
    )


def _answers(path: Path) -> bool:
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(1.0)
            conn.connect(str(path))
            conn.sendall(b"PING\r\n")
            return conn.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m sobot_panel.audit.cli audit ...`: the same commands without the rest of the CLI."""
    parser = argparse.ArgumentParser(prog="sobot-panel")
    add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(join_negative_values(sys.argv[1:] if argv is None else argv))
    return int(args.run(args))


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        raise SystemExit(main())
