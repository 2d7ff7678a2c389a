"""Process entry of the operator: `dockyard operator run`."""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence


def run(*, namespaces: Sequence[str], all_namespaces: bool, liveness: str | None, verbose: bool) -> int:
    import kopf

    import dockyard.controller.handlers  # registers the handlers of Registries
    import dockyard.controller.push  # push events behind `trigger.onPush`
    import dockyard.controller.replication  # noqa: F401 - ReplicationPolicies

    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s", stream=sys.stderr)
    kopf.configure(verbose=verbose)
    kopf.run(standalone=True, clusterwide=all_namespaces or not namespaces,
             namespaces=list(namespaces), liveness_endpoint=liveness)
    return 0
