"""Pure helpers of the ops dashboard: rolling counters, windows, chart geometry, filters, feed items. No I/O.

Counters live in Redis as small hashes, one per minute and one per hour of acceptance time, each with the
fields `total`, `kind:<kind>`, `surface:<surface>` and `agent:<agent>`. The last hour is the sum of the
60 newest minute buckets; the last day (exactly 1,440 minutes) is the sum of the 23 full hours inside it
plus the minute buckets of the two partial hours at its ends. A page view therefore reads at most
60 + 59 minute hashes and 24 hour hashes, however long the stream is.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from ..clock import CHINA_TZ, china_time

MINUTE_MS = 60_000
HOUR_MINUTES = 60
DAY_MINUTES = 1_440
# A bucket outlives the longest window that reads it (a day) by two hours, then Redis drops it.
BUCKET_LIFETIME_S = 26 * 3_600
TOP_AGENTS = 10
SUMMARY_MAX = 80
DIMENSIONS = ("kind", "surface", "agent")
STREAM_ID = re.compile(r"^[0-9]{1,20}-[0-9]{1,20}$")
# Asia/Shanghai has been UTC+8 all year since 1991; a fixed offset needs no tz database.


# --- buckets ---------------------------------------------------------------------------------------


def stream_id_ms(entry_id: str) -> int:
    """The milliseconds part of a stream ID (the time the entry reached the stream)."""
    head = entry_id.partition("-")[0]
    return int(head) if head.isdigit() else 0


def id_order(entry_id: str) -> tuple[int, int]:
    """A stream ID as a sortable pair; (-1, -1) for anything that is not one."""
    if not STREAM_ID.match(entry_id):
        return (-1, -1)
    ms, _, seq = entry_id.partition("-")
    return (int(ms), int(seq))


def entry_minute(entry_id: str, fields: Mapping[str, str]) -> int:
    """The minute an entry counts in: when the agent sent it (`at`), never later than its stream ID.

    A record replayed from the spool keeps its `at` (minutes before its stream ID); a clock running ahead
    on one replica cannot push an entry into the future.
    """
    id_ms = stream_id_ms(entry_id)
    at = fields.get("at", "")
    at_ms = int(at) if at.isdigit() else id_ms
    return min(at_ms, id_ms) // MINUTE_MS if id_ms else at_ms // MINUTE_MS


def bucket_fields(fields: Mapping[str, str]) -> list[str]:
    """The hash fields one entry increments in its minute and hour buckets (empty dimensions are skipped)."""
    out = ["total"]
    out.extend(f"{name}:{fields[name]}" for name in DIMENSIONS if fields.get(name))
    return out


def expires_at_s(start_minute: int) -> int:
    """Unix seconds at which a bucket starting at `start_minute` is no longer read by any window."""
    return start_minute * 60 + BUCKET_LIFETIME_S


@dataclass(frozen=True, slots=True)
class Windows:
    """Which buckets make up the last hour and the last day at minute `now`."""

    now: int
    hour_minutes: range  # the 60 minutes of the last hour, oldest first
    day_lead_minutes: range  # the partial hour at the start of the day window (may be empty)
    day_full_hours: range  # the full hours inside the day window
    day_tail_minutes: range  # the current, partial hour
    chart_hours: range  # the 24 hours of the per-hour chart, the current one last

    @property
    def minutes(self) -> list[int]:
        """Every minute bucket to read, without repeats."""
        return sorted(set(self.hour_minutes) | set(self.day_lead_minutes) | set(self.day_tail_minutes))

    @property
    def hours(self) -> list[int]:
        return sorted(set(self.day_full_hours) | set(self.chart_hours))


def windows(now_minute: int) -> Windows:
    day_start = now_minute - DAY_MINUTES + 1
    current_hour = now_minute // HOUR_MINUTES
    first_full = -(-day_start // HOUR_MINUTES)  # ceil
    lead = range(day_start, first_full * HOUR_MINUTES) if day_start % HOUR_MINUTES else range(0)
    return Windows(
        now=now_minute,
        hour_minutes=range(now_minute - HOUR_MINUTES + 1, now_minute + 1),
        day_lead_minutes=lead,
        day_full_hours=range(first_full, current_hour),
        day_tail_minutes=range(current_hour * HOUR_MINUTES, now_minute + 1),
        chart_hours=range(current_hour - 23, current_hour + 1),
    )


Bucket = Mapping[str, str | int]


def sum_buckets(buckets: Iterable[Bucket]) -> Counter[str]:
    total: Counter[str] = Counter()
    for bucket in buckets:
        for name, value in bucket.items():
            total[name] += int(value)
    return total


@dataclass(frozen=True, slots=True)
class Breakdown:
    """Counts of one window: the total and each dimension's values, busiest first."""

    total: int = 0
    kind: dict[str, int] = field(default_factory=dict)
    surface: dict[str, int] = field(default_factory=dict)
    agent: dict[str, int] = field(default_factory=dict)

    def top_agents(self, n: int = TOP_AGENTS) -> list[tuple[str, int]]:
        return list(self.agent.items())[:n]

    def flat(self, window: str, *, top: int = TOP_AGENTS) -> dict[str, int]:
        """`{"hour:total": n, "hour:kind:ticket": n, ...}` (agents: the top `top`), for the page script."""
        out = {f"{window}:total": self.total}
        for name in ("kind", "surface"):
            out.update({f"{window}:{name}:{value}": count for value, count in getattr(self, name).items()})
        out.update({f"{window}:agent:{value}": count for value, count in self.top_agents(top)})
        return out


def breakdown(counts: Mapping[str, int]) -> Breakdown:
    groups: dict[str, dict[str, int]] = {name: {} for name in DIMENSIONS}
    for key, value in counts.items():
        name, sep, item = key.partition(":")
        if sep and name in groups and value:
            groups[name][item] = value
    ordered = {name: dict(sorted(items.items(), key=lambda kv: (-kv[1], kv[0]))) for name, items in groups.items()}
    return Breakdown(total=int(counts.get("total", 0)), **ordered)


@dataclass(frozen=True, slots=True)
class Summary:
    now_ms: int
    hour: Breakdown
    day: Breakdown
    minutes: list[tuple[int, int]]  # (minute, sends) for the last hour, oldest first
    hours: list[tuple[int, int]]  # (hour, sends) for the last 24 hours, oldest first

    def as_json(self) -> dict[str, Any]:
        def window(value: Breakdown) -> dict[str, Any]:
            return {"total": value.total, "kind": value.kind, "surface": value.surface,
                    "agent": [[name, count] for name, count in value.top_agents()]}  # fmt: skip

        return {
            "now": self.now_ms,
            "hour": window(self.hour),
            "day": window(self.day),
            "series": {
                "minute": [[minute * MINUTE_MS, count] for minute, count in self.minutes],
                "hour": [[hour * HOUR_MINUTES * MINUTE_MS, count] for hour, count in self.hours],
            },
            "counts": {**self.hour.flat("hour"), **self.day.flat("day")},
            # the agents table: the day's busiest, each with its last-hour count
            "agents": [[name, self.hour.agent.get(name, 0), count] for name, count in self.day.top_agents()],
        }


def summarize(now_ms: int, plan: Windows, minutes: Mapping[int, Bucket], hours: Mapping[int, Bucket]) -> Summary:
    """Hour and day counts and both series from the buckets read for `plan` (missing buckets count 0)."""
    empty: dict[str, int] = {}
    hour = sum_buckets(minutes.get(m, empty) for m in plan.hour_minutes)
    day = sum_buckets(
        [*(minutes.get(m, empty) for m in plan.day_lead_minutes), *(hours.get(h, empty) for h in plan.day_full_hours),
         *(minutes.get(m, empty) for m in plan.day_tail_minutes)]
    )  # fmt: skip
    return Summary(
        now_ms=now_ms,
        hour=breakdown(hour),
        day=breakdown(day),
        minutes=[(m, int(minutes.get(m, empty).get("total", 0))) for m in plan.hour_minutes],
        hours=[(h, int(hours.get(h, empty).get("total", 0))) for h in plan.chart_hours],
    )


# --- the chart -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Bar:
    key: int  # the bucket's start in ms
    value: int
    x: float
    y: float
    width: float
    height: float
    label: str  # its time, China time


@dataclass(frozen=True, slots=True)
class Chart:
    width: int
    height: int
    top: int  # the value of the top grid line
    bars: list[Bar]
    ticks: list[tuple[float, str, int]]  # x, a time label under the axis, and the index of its bar
    peak: Bar | None
    total: int

    @property
    def pad_top(self) -> int:
        return CHART_PAD_TOP

    @property
    def plot_width(self) -> int:
        return self.width - CHART_PAD_RIGHT

    @property
    def plot_height(self) -> int:
        return self.height - CHART_PAD_TOP - CHART_PAD_BOTTOM


CHART_PAD_TOP = 8
CHART_PAD_BOTTOM = 18
CHART_PAD_RIGHT = 24  # room for the scale labels, so they never sit on the newest bars


def nice_top(peak: int) -> int:
    """A round value at or above `peak` for the top grid line (at least 4)."""
    for step in (4, 5, 10, 20, 25, 50):
        if peak <= step:
            return step
    magnitude = 10 ** (len(str(peak)) - 1)
    return int(-(-peak // magnitude) * magnitude)


def bar_chart(
    series: list[tuple[int, int]], bucket_ms: int, *, width: int = 720, height: int = 120, tick_every: int = 10,
    time_format: str = "%H:%M",
) -> Chart:  # fmt: skip
    """Bar geometry for `series` of (bucket number, value), for a server-rendered SVG (and the page script)."""
    top = nice_top(max((value for _, value in series), default=0))
    plot = height - CHART_PAD_TOP - CHART_PAD_BOTTOM
    slot = (width - CHART_PAD_RIGHT) / max(len(series), 1)
    bars, ticks = [], []
    for index, (bucket, value) in enumerate(series):
        bar_height = round(plot * value / top, 2)
        start = datetime.fromtimestamp(bucket * bucket_ms / 1000, CHINA_TZ)
        label = start.strftime(time_format)
        x, y = round(index * slot + 1, 2), round(CHART_PAD_TOP + plot - bar_height, 2)
        bars.append(Bar(bucket * bucket_ms, value, x, y, round(max(slot - 2, 1), 2), bar_height, label))
        if index % tick_every == 0:
            ticks.append((round(index * slot + slot / 2, 2), label, index))
    peak = max(bars, key=lambda bar: bar.value) if bars and any(bar.value for bar in bars) else None
    return Chart(width, height, top, bars, ticks, peak, sum(value for _, value in series))


# --- entries -----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Filters:
    """What the operator filters the recent sends by: agent and customer contain the text (any case)."""

    agent: str = ""
    customer: str = ""
    kind: str = ""

    @property
    def active(self) -> bool:
        return bool(self.agent or self.customer or self.kind)

    def matches(self, fields: Mapping[str, str]) -> bool:
        if self.kind and fields.get("kind", "") != self.kind:
            return False
        if self.agent and self.agent.casefold() not in fields.get("agent", "").casefold():
            return False
        return not self.customer or self.customer.casefold() in fields.get("partner_id", "").casefold()


def decode_payload(payload: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The message posted to Sobot and, for a card, its decoded `miniPage` ({} when absent or unreadable)."""
    try:
        message = json.loads(payload)
    except ValueError:
        return {}, {}
    if not isinstance(message, dict):
        return {}, {}
    try:
        card = json.loads(message.get("miniPage") or "{}")
    except (TypeError, ValueError):
        card = {}
    return message, card if isinstance(card, dict) else {}


def yuan(fen: object) -> str:
    """`65800` or `"65800"` fen → `¥658.00`; anything else as given."""
    text = str(fen).strip()
    if not text.isdigit():
        return text
    value = int(text)
    return f"¥{value // 100:,}.{value % 100:02d}"


def summary_text(kind: str, payload: str) -> str:
    """One short, language-neutral line for a send: order code and total, goods title and price, ticket values."""
    message, card = decode_payload(payload)
    parts: list[str] = []
    if message.get("type") == "createOrder" and isinstance(message.get("params"), dict):
        parts = [str(value) for value in message["params"].values() if str(value).strip()][:3]
    elif message.get("msgType") == 25:
        parts = [str(card.get("orderCode", "")), yuan(card.get("totalFee", ""))]
    elif message.get("msgType") == 24:
        parts = [str(card.get("title", "")), str(card.get("label", ""))]
    elif message.get("msgType") == 28:
        custom = card.get("customCards") or [{}]
        first = custom[0] if isinstance(custom, list) and custom and isinstance(custom[0], dict) else {}
        amount = f"{first.get('customCardAmountSymbol', '')}{first.get('customCardAmount', '')}"
        parts = [str(first.get("customCardCode") or first.get("customCardName") or card.get("cardGuide", "")), amount]
    text = " · ".join(part for part in parts if part)
    return text if len(text) <= SUMMARY_MAX else text[: SUMMARY_MAX - 1] + "…"


def feed_item(entry_id: str, fields: Mapping[str, str]) -> dict[str, Any]:
    """What the live feed carries for one entry (and what a table row shows)."""
    at = fields.get("at", "")
    at_ms = int(at) if at.isdigit() else stream_id_ms(entry_id)
    return {
        "entryId": entry_id,
        "at": at_ms,
        "time": china_time(at_ms, "%m-%d %H:%M:%S"),
        "kind": fields.get("kind", ""),
        "surface": fields.get("surface", ""),
        "agent": fields.get("agent", ""),
        "partnerId": fields.get("partner_id", ""),
        "summary": summary_text(fields.get("kind", ""), fields.get("payload", "")),
    }
