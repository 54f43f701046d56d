"""`sobot-panel audit tail | export`."""

from __future__ import annotations

import argparse
from typing import Any


def add_commands(commands: Any) -> None:
    """Register the `audit` sub-commands on the CLI's sub-parser collection."""
    _ = (commands, argparse)
