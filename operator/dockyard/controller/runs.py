"""`dockyard replicate --policy NS/NAME`: one run inside a cluster Job, reported in the policy's status.

The Job the operator renders runs this with the policy's own ServiceAccount, whose Role
allows exactly three things: read the policy, patch its status, read the Secrets it
references. So everything goes through the API adapter (`controller.kube.Kube`): the spec,
the credentials (a `kubernetes.io/dockerconfigjson` or `kubernetes.io/basic-auth` Secret),
a CA bundle, and last run's `status.failedItems`, which the engine tries first. The result
is written with one merge patch of `/status`: `lastRun`, `failedItems` (bounded) and, for a
run without failures, `lastSuccessfulTime`. Conditions stay the operator's business.

The URLs of `registryRef` sides come from the operator (`--source-url`/`--dest-url`), so the
run never needs to read Registries.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import os
import tempfile
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aiohttp

from dockyard.api import API_VERSION, SpecError
from dockyard.api.replication import Endpoint, FailedItem, ReplicationPolicySpec
from dockyard.api.schema import dump, parse
from dockyard.controller.kube import ApiError, Kube
from dockyard.oci.backoff import Attempts, retry
from dockyard.oci.client import Credentials, registry_url
from dockyard.replication.copy import Access, EngineOptions, RunAccess, run_policy
from dockyard.replication.result import MAX_FAILED_ITEMS, RunResult, last_run
from dockyard.replication.state import MemoryState

KIND = "ReplicationPolicy"
STATUS_ATTEMPTS = 5

log = logging.getLogger("dockyard.replicate")


class RunError(Exception):
    """The run could not start: the policy is missing or unreadable (nothing to report into)."""


class AccessError(Exception):
    """A side cannot be reached as configured (Secret missing or unusable); reported as a Failed run."""


def parse_policy_ref(text: str) -> tuple[str, str]:
    """`NS/NAME` -> (namespace, name)."""
    namespace, sep, name = text.partition("/")
    if not sep or not namespace or not name or "/" in name:
        raise ValueError(f"--policy must be NAMESPACE/NAME, got {text!r}")
    return namespace, name


def _decode(data: Mapping[str, Any], key: str) -> str | None:
    value = data.get(key)
    if value is None:
        return None
    try:
        return base64.b64decode(str(value), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        raise AccessError(f"key {key!r} is not valid base64 text") from None


def credentials_from_secret(data: Mapping[str, Any], url: str, secret: str) -> Credentials | None:
    """Credentials for `url` from a Secret's `data`: a docker config or basic-auth keys."""
    config = _decode(data, ".dockerconfigjson")
    if config is not None:
        try:
            return Credentials.from_docker_config(json.loads(config), url)
        except (ValueError, AttributeError, TypeError) as e:
            raise AccessError(f"Secret {secret!r}: .dockerconfigjson is not a docker config: {e}") from None
    username, password = _decode(data, "username"), _decode(data, "password")
    if username is not None and password is not None:
        return Credentials(username, password)
    raise AccessError(f"Secret {secret!r} holds neither .dockerconfigjson nor username and password")


@dataclass
class _Side:
    access: Access
    ca_path: str | None = None


def _write_ca(pem: str) -> str:
    fd, path = tempfile.mkstemp(prefix="dockyard-ca-", suffix=".crt")
    with os.fdopen(fd, "w") as f:
        f.write(pem)
    return path


async def _secret_data(kube: Kube, namespace: str, name: str) -> Mapping[str, Any]:
    secret = await kube.get("v1", "Secret", namespace, name)
    if secret is None:
        raise AccessError(f"Secret {name!r} not found in namespace {namespace!r}")
    return secret.get("data") or {}


async def _side(kube: Kube, namespace: str, endpoint: Endpoint, url: str) -> _Side:
    credentials = None
    if endpoint.secret_ref is not None:
        data = await _secret_data(kube, namespace, endpoint.secret_ref.name)
        credentials = credentials_from_secret(data, url, endpoint.secret_ref.name)
    ca_path = None
    if endpoint.ca_secret_ref is not None:
        pem = _decode(await _secret_data(kube, namespace, endpoint.ca_secret_ref.name), "ca.crt")
        if pem is None:
            raise AccessError(f"Secret {endpoint.ca_secret_ref.name!r} has no key 'ca.crt'")
        ca_path = await asyncio.to_thread(_write_ca, pem)
    return _Side(Access(url, credentials, insecure=endpoint.insecure, ca_file=ca_path), ca_path)


async def _url(kube: Kube, namespace: str, endpoint: Endpoint, override: str | None) -> str:
    if override:
        try:
            return registry_url(override)
        except ValueError as e:
            raise AccessError(str(e)) from e
    if endpoint.url is not None:
        return endpoint.url
    assert endpoint.registry_ref is not None
    from dockyard.render.replication import registry_endpoint  # only without the operator's --*-url

    ref_ns = endpoint.registry_ref.namespace or namespace
    registry = await kube.get(API_VERSION, "Registry", ref_ns, endpoint.registry_ref.name)
    if registry is None:
        raise AccessError(f"Registry {endpoint.registry_ref.name!r} not found in namespace {ref_ns!r}")
    return registry_endpoint(registry)


def status_of(result: RunResult) -> dict[str, Any]:
    """The merge patch of `/status` that reports a finished run."""
    run = last_run(result)
    failed = [dump(item) for item in result.failed_items[:MAX_FAILED_ITEMS]]
    patch: dict[str, Any] = {"lastRun": dump(run), "failedItems": failed or None}
    if run.result == "Succeeded":
        patch["lastSuccessfulTime"] = run.completion_time
    return patch


def _report_delay(attempt: int, error: Exception) -> float | None:
    """Seconds before reporting again after `attempt` failed, None when the error is final."""
    if isinstance(error, ApiError):
        transient = error.status >= 500 or error.status == 429
    else:
        transient = isinstance(error, aiohttp.ClientError | OSError | TimeoutError)
    return min(30.0, 2.0 ** attempt) if transient and attempt < STATUS_ATTEMPTS else None


async def _report(kube: Kube, namespace: str, name: str, result: RunResult,
                  sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
    """Write the result; transient API trouble is retried (a lost report would hide the run)."""
    patch = status_of(result)

    async def attempt(_attempts: Attempts) -> None:
        await kube.patch_status(API_VERSION, KIND, namespace, name, patch)

    await retry(attempt, _report_delay, sleep=sleep)


async def run_in_cluster(namespace: str, name: str, *, source_url: str | None = None,
                         dest_url: str | None = None, kube: Kube | None = None,
                         options: EngineOptions | None = None) -> RunResult:
    """One run of the policy NAMESPACE/NAME, its result written into the policy's status.

    Raises RunError when the policy cannot be read (there is no status to write into).
    """
    own = kube is None
    if kube is None:
        kube = await Kube.from_environment()
    ca_paths: list[str] = []
    try:
        body = await kube.get(API_VERSION, KIND, namespace, name)
        if body is None:
            raise RunError(f"ReplicationPolicy {namespace}/{name} not found")
        try:
            spec = parse(ReplicationPolicySpec, body.get("spec"), "spec")
        except SpecError as e:
            raise RunError(f"ReplicationPolicy {namespace}/{name} is invalid: {e}") from None
        status = body.get("status") or {}
        try:
            failed_before = [parse(FailedItem, item, "status.failedItems") for item in status.get("failedItems") or []]
        except SpecError:
            failed_before = []  # an unreadable memory only costs the retry order
        started = datetime.now(UTC)
        try:
            sides = []
            for endpoint, override in ((spec.source, source_url), (spec.destination, dest_url)):
                side = await _side(kube, namespace, endpoint, await _url(kube, namespace, endpoint, override))
                sides.append(side)
                if side.ca_path:
                    ca_paths.append(side.ca_path)
        except AccessError as e:
            result = RunResult(started=started, finished=datetime.now(UTC), fatal=str(e),
                               failed_items=list(failed_before))
        else:
            state = MemoryState(failed_before)
            result = await run_policy(spec, RunAccess(sides[0].access, sides[1].access), state, options)
        await _report(kube, namespace, name, result)
        return result
    finally:
        for path in ca_paths:
            await asyncio.to_thread(_remove, path)
        if own:
            await kube.close()


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def exit_code(result: RunResult) -> int:
    """0 once the outcome is reported, unless the run could do nothing at all.

    A run with some failed artifacts has recorded them in status and the next run retries them
    first, so the Job succeeds; a run that could not reach a registry fails the Job so that
    Kubernetes retries it (`backoffLimit`) and the failure shows on the Job as well.
    """
    return 1 if result.result == "Failed" else 0


def main(policy: str, *, source_url: str | None, dest_url: str | None, options: EngineOptions) -> int:
    """The body of `dockyard replicate --policy NS/NAME`: run, report, print the summary line."""
    import sys

    from dockyard.replication.result import summary_line

    prog = "dockyard replicate"
    try:
        namespace, name = parse_policy_ref(policy)
    except ValueError as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return 2
    try:
        result = asyncio.run(run_in_cluster(namespace, name, source_url=source_url, dest_url=dest_url,
                                            options=options))
    except RunError as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return 1
    for item in result.failed_items:
        print(f"failed {item.repository}:{item.tag}: {item.error}", file=sys.stderr)
    if result.fatal:
        print(f"{prog}: {result.fatal}", file=sys.stderr)
    print(summary_line(result))
    return exit_code(result)
