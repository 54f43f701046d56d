"""Where this replica is in its life: serving, or draining after SIGTERM (read by /readyz)."""

from __future__ import annotations

import ctypes
import os
import signal
from dataclasses import dataclass


@dataclass(slots=True)
class Lifecycle:
    """`draining` turns on at SIGTERM, before the listener closes: /readyz answers 503 from then on."""

    draining: bool = False


_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """In a child process, before exec: SIGTERM when its parent goes (Linux), so a SIGKILLed service
    leaves no worker or redis-server behind; elsewhere nothing."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        return
    if os.getppid() == 1:  # the parent died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)
