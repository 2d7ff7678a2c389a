"""Replication: copy images between registries as a ReplicationPolicy describes.

`run_policy` is the entry point for callers (the CLI and the in-cluster Job); the
modules below it are the OCI client, filters, planning, the copy engine and run state.
"""

from dockyard.replication.copy import Access, EngineOptions, RunAccess, run_policy
from dockyard.replication.result import RunResult

__all__ = ["Access", "EngineOptions", "RunAccess", "RunResult", "run_policy"]
