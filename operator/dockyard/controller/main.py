"""Process entry of the operator: `dockyard operator run`."""

from __future__ import annotations

import socket
from collections.abc import Sequence
from typing import Any, cast


def run(*, namespaces: Sequence[str], all_namespaces: bool, liveness: str | None, verbose: bool) -> int:
    import kopf

    import dockyard.controller.handlers  # registers the handlers of Registries
    import dockyard.controller.push  # push events behind `trigger.onPush`
    import dockyard.controller.replication_handlers  # noqa: F401 - ReplicationPolicies

    kopf.configure(verbose=verbose)  # one handler on the root logger: every line is logged once
    # An identity of our own: Kopf's default asks the password database for the user's name,
    # and the image's numeric user (65532) has no entry there.
    kopf.run(standalone=True, clusterwide=all_namespaces or not namespaces,
             namespaces=list(namespaces), liveness_endpoint=liveness,
             identity=cast(Any, f"dockyard@{socket.gethostname()}"))  # kopf.Identity is a str
    return 0
