"""Benchmark only: on PYTHONPATH, makes os.fsync a no-op in the process (see registry.py).

`bench/registry.py` starts a second `dockyard registry serve` with this directory on its
PYTHONPATH to measure what the fsync before each blob's 201 costs. Never used outside the
benchmark: without fsync an acknowledged blob can be lost on power loss.
"""

import os


def _no_fsync(fd: object) -> None:
    return None


os.fsync = _no_fsync
