"""Latency over time as a PNG: matplotlib when installed (`pip install -e '.[bench]'`), else a small
built-in line plotter (no text but digits; the legend is the colour list in `LEGEND`)."""

from __future__ import annotations

import math
import struct
import zlib
from collections.abc import Sequence
from pathlib import Path

SERIES = (  # key in the timeline, label, colour
    ("relay_p50", "relay→push p50", (31, 119, 180)),
    ("relay_p99", "relay→push p99", (140, 190, 230)),
    ("page_p50", "page load p50", (44, 160, 44)),
    ("page_p99", "page load p99", (150, 220, 140)),
    ("send_p50", "send p50", (214, 39, 40)),
    ("send_p99", "send p99", (250, 150, 150)),
)
LEGEND = ", ".join(f"{label}: rgb{colour}" for _, label, colour in SERIES)


def plot(path: Path, timeline: dict[str, list[float]], phases: Sequence[dict[str, object]], title: str) -> str:
    """Write the PNG; returns which renderer drew it."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        _tiny_png(path, timeline, phases)
        return "built-in"
    t = timeline["t"]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(12, 7), sharex=True, height_ratios=(3, 1))
    for key, label, colour in SERIES:
        values = [v if v == v and v > 0 else float("nan") for v in timeline.get(key, [])]
        top.plot(t, values, label=label, color=[c / 255 for c in colour], linewidth=1.2)
    top.set_yscale("log")
    top.set_ylabel("ms (per second: p50 / p99)")
    top.set_title(title)
    top.grid(True, which="major", alpha=0.3)
    bottom.bar(t, timeline.get("errors", []), width=1.0, color="tab:red", label="errors/s")
    bottom.set_ylabel("errors/s")
    twin = bottom.twinx()
    twin.plot(t, timeline.get("connected", []), color="black", linewidth=1, label="panels connected")
    twin.set_ylabel("connected")
    bottom.set_xlabel("seconds since start")
    for n, phase in enumerate(phases):
        start, end = float(phase["start_s"]), float(phase["end_s"])  # type: ignore[arg-type]
        if phase["kind"] == "fault":
            injected, lifted = float(phase["injected_s"]), float(phase["lifted_s"])  # type: ignore[arg-type]
            for axis in (top, bottom):
                axis.axvspan(start, end, color="orange", alpha=0.08)
                axis.axvspan(injected, max(lifted, injected + 0.3), color="red", alpha=0.15)
        top.axvline(start, color="grey", linewidth=0.5)
        top.text(start, 0.98 - 0.05 * (n % 3), f" {phase['name']}", transform=top.get_xaxis_transform(), fontsize=7,
                 va="top")  # fmt: skip
    top.legend(loc="lower left", fontsize=7, ncol=3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return "matplotlib"


# --- the no-dependency fallback ----------------------------------------------------------------------

_DIGITS = {  # 3x5 bitmaps, rows top to bottom
    "0": "111101101101111", "1": "010110010010111", "2": "111001111100111", "3": "111001111001111",
    "4": "101101111001001", "5": "111100111001111", "6": "111100111101111", "7": "111001001001001",
    "8": "111101111101111", "9": "111101111001111", ".": "000000000000010",
}  # fmt: skip


def _tiny_png(path: Path, timeline: dict[str, list[float]], phases: Sequence[dict[str, object]]) -> None:
    width, height, left, bottom_margin, top_margin = 1000, 420, 50, 30, 10
    pixels = bytearray(b"\xff" * (width * height * 3))
    t = timeline["t"] or [0.0]
    t_max = max(t[-1], 1.0)
    lo, hi = -1.0, 4.0  # log10 ms: 0.1 ms .. 10 s

    def x_of(seconds: float) -> int:
        return left + int((width - left - 10) * seconds / t_max)

    def y_of(ms: float) -> int:
        value = min(max(math.log10(ms), lo), hi)
        return top_margin + int((height - top_margin - bottom_margin) * (hi - value) / (hi - lo))

    def put(x: int, y: int, colour: tuple[int, int, int]) -> None:
        if 0 <= x < width and 0 <= y < height:
            pixels[(y * width + x) * 3 : (y * width + x) * 3 + 3] = bytes(colour)

    def line(x0: int, y0: int, x1: int, y1: int, colour: tuple[int, int, int]) -> None:
        steps = max(abs(x1 - x0), abs(y1 - y0), 1)
        for i in range(steps + 1):
            put(x0 + (x1 - x0) * i // steps, y0 + (y1 - y0) * i // steps, colour)

    def text(x: int, y: int, value: str) -> None:
        for n, ch in enumerate(value):
            for i, bit in enumerate(_DIGITS.get(ch, "0" * 15)):
                if bit == "1":
                    for dx in range(2):
                        for dy in range(2):
                            put(x + n * 8 + (i % 3) * 2 + dx, y + (i // 3) * 2 + dy, (0, 0, 0))

    for n, phase in enumerate(phases):
        if phase["kind"] == "fault":
            shade = (255, 240, 214) if n % 2 else (236, 236, 250)
            injected, lifted = float(phase["injected_s"]), float(phase["lifted_s"])  # type: ignore[arg-type]
            for x in range(x_of(float(phase["start_s"])), x_of(float(phase["end_s"]))):  # type: ignore[arg-type]
                dark = x_of(injected) <= x <= max(x_of(lifted), x_of(injected) + 2)
                for y in range(top_margin, height - bottom_margin):
                    put(x, y, (255, 200, 200) if dark else shade)
    for decade in range(int(lo), int(hi) + 1):
        y = y_of(10.0**decade)
        line(left, y, width - 10, y, (220, 220, 220))
        text(2, y - 5, f"{10.0**decade:g}")
    for second in range(0, int(t_max) + 1, 10):
        line(x_of(second), height - bottom_margin, x_of(second), height - bottom_margin + 4, (0, 0, 0))
        text(x_of(second) - 6, height - bottom_margin + 8, str(second))
    line(left, top_margin, left, height - bottom_margin, (0, 0, 0))
    line(left, height - bottom_margin, width - 10, height - bottom_margin, (0, 0, 0))
    for key, _, colour in SERIES:
        previous: tuple[int, int] | None = None
        for seconds, value in zip(t, timeline.get(key, []), strict=False):
            if value != value or value <= 0:
                previous = None
                continue
            point = (x_of(seconds), y_of(value))
            if previous is not None:
                line(*previous, *point, colour)
            previous = point
    for seconds, errors in zip(t, timeline.get("errors", []), strict=False):
        if errors:
            line(x_of(seconds), height - bottom_margin - 1, x_of(seconds), height - bottom_margin - 8, (200, 0, 0))
    raw = b"".join(b"\x00" + bytes(pixels[y * width * 3 : (y + 1) * width * 3]) for y in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 6))
                     + chunk(b"IEND", b""))  # fmt: skip
