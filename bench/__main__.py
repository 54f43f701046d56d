"""`python -m bench [NAME ...]`: run every benchmark module (or the named ones) in turn."""

from __future__ import annotations

import importlib
import pkgutil
import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    here = Path(__file__).parent
    names = argv or sorted(m.name for m in pkgutil.iter_modules([str(here)]) if m.name.endswith("_bench"))
    for name in names:
        module = importlib.import_module(f"bench.{name if name.endswith('_bench') else name + '_bench'}")
        print(f"\n=== {module.__name__} ===", flush=True)
        module.main([])
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
