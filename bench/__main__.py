"""`python -m bench [all | pages | live | storm | audit | callcenter] [ARGS ...]`

`all` (the default) runs pages, live, storm, audit and callcenter in turn with their defaults (`all --quick`:
each in its quick form). A named benchmark gets the remaining arguments (`python -m bench live -h`).
"""

from __future__ import annotations

import importlib
import sys
import time

BENCHES = {"pages": "pages_bench", "live": "live_bench", "storm": "storm_bench", "audit": "audit_bench",
           "callcenter": "callcenter"}  # fmt: skip


def main(argv: list[str]) -> int:
    name, rest = (argv[0], argv[1:]) if argv and not argv[0].startswith("-") else ("all", argv)
    if name in ("-h", "--help", "help"):
        print(__doc__)
        return 0
    if name != "all":
        module_name = BENCHES.get(name) or BENCHES.get(name.removesuffix("_bench"))
        if module_name is None:
            print(f"unknown benchmark {name!r}; choose from all, {', '.join(BENCHES)}", file=sys.stderr)
            return 2
        return int(importlib.import_module(f"bench.{module_name}").main(rest) or 0)
    failed = 0
    started = time.monotonic()
    for label, module_name in BENCHES.items():
        print(f"\n=== {label} ===", flush=True)
        began = time.monotonic()
        failed += bool(importlib.import_module(f"bench.{module_name}").main(list(rest)))
        print(f"({label}: {time.monotonic() - began:.0f} s)", flush=True)
    print(f"\nall benchmarks: {time.monotonic() - started:.0f} s", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
