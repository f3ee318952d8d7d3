"""What the model cache and the activation store share when they clean up after others: whether a
process is alive (a dead owner's partial conversion or claim is taken over), and the warning that
damage was found and repaired."""

from __future__ import annotations

import os


class CacheRepaired(UserWarning):
    """Damage to a cache was found and repaired; what was lost is recomputed when needed."""


def process_alive(pid: int | str) -> bool:
    """Whether process ``pid`` of this machine may still run: a process of another user counts as
    alive (we may not signal it), a malformed or unknown pid as dead."""
    try:
        os.kill(int(pid), 0)
    except PermissionError:
        return True
    except (ProcessLookupError, ValueError, OverflowError):
        return False
    return True
