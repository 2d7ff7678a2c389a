"""Process entry of the operator: `dockyard operator run`."""

from __future__ import annotations

import socket
from collections.abc import Sequence
from typing import Any, cast


def run(*, namespaces: Sequence[str], all_namespaces: bool, liveness: str | None, verbose: bool) -> int:
    import kopf

    from dockyard.controller import handlers, push, replication_handlers

    # Startup handlers run in the order registered: Registries first (their startup puts the API
    # adapter into the memo), then ReplicationPolicies (the policy reconciler), then push events.
    registry = kopf.OperatorRegistry()
    # A registry of our own has none of the login handlers Kopf puts into its default one.
    kopf.on.login(registry=registry)(kopf.login_via_client)
    handlers.register(registry)
    replication_handlers.register(registry)
    push.register(registry)

    kopf.configure(verbose=verbose)  # one handler on the root logger: every line is logged once
    # An identity of our own: Kopf's default asks the password database for the user's name,
    # and the image's numeric user (65532) has no entry there.
    kopf.run(standalone=True, clusterwide=all_namespaces or not namespaces,
             namespaces=list(namespaces), liveness_endpoint=liveness,
             identity=cast(Any, f"dockyard@{socket.gethostname()}"),  # kopf.Identity: unexported NewType(str)
             registry=registry)
    return 0
