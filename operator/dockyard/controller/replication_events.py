"""Events about ReplicationPolicies (and Registries, from `controller.push`), posted through the API adapter."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

import aiohttp

from dockyard.api import API_VERSION
from dockyard.controller.kube import ApiError, Kube
from dockyard.controller.reconcile import now

KIND = "ReplicationPolicy"

log = logging.getLogger("dockyard.replication")


def event_object(body: Mapping[str, Any], type_: str, reason: str, message: str, at: str) -> dict[str, Any]:
    """A core/v1 Event about a policy (or the object of another kind BODY is), as `kubectl describe` and
    `kubectl events` show it."""
    meta = body["metadata"]
    return {
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
        "involvedObject": {"apiVersion": API_VERSION, "kind": body.get("kind") or KIND, "name": meta["name"],
                           "namespace": meta["namespace"], "uid": meta.get("uid")},
        "type": type_, "reason": reason, "message": message[:1024],
        "source": {"component": "dockyard"}, "reportingComponent": "dockyard", "reportingInstance": "dockyard",
        "firstTimestamp": at, "lastTimestamp": at, "count": 1,
    }


class ApiEvents:
    """Posts Events through the API adapter, from any task.

    Kopf's `kopf.event` works only inside Kopf's handlers; policies are also reconciled from
    push events (see `controller.push`), so their Events take this path. Posting never blocks
    or fails a reconcile: it runs in the background and a refused Event is only logged.
    """

    def __init__(self, kube: Kube) -> None:
        self.kube = kube
        self.tasks: set[asyncio.Task[None]] = set()

    def __call__(self, body: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
        task = asyncio.get_running_loop().create_task(self.post(event_object(body, type_, reason, message, now())))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def post(self, event: dict[str, Any]) -> None:
        try:
            await self.kube.create(event)
        except (ApiError, aiohttp.ClientError, OSError, TimeoutError) as e:
            log.warning("could not post the Event %s about %s: %s", event["reason"],
                        event["involvedObject"]["name"], e)
