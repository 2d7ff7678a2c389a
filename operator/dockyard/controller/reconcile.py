"""The one idempotent reconcile of a Registry: observe, apply what differs, report status.

Every trigger (create, spec update, resume, a child's drift, a referenced Secret's change)
lands in `Reconciler.request`, which serialises work per Registry and coalesces bursts: a
request that arrives while a reconcile runs causes exactly one more pass afterwards.

Each child carries the hash of what Dockyard last applied (`dockyard.dev/applied`); a
child is re-applied only when that hash differs from the newly rendered one (spec change,
operator upgrade) or the live object no longer contains the rendered fields (drift). In
steady state a reconcile is reads only, and status is patched only when it changes.

An object being deleted, or whose namespace is, is let go: nothing is applied and no status or
Event is written. A terminating namespace refuses new objects (403), and the children its
deletion removes are meant to go; the operator must not fight it nor report it as a failure.

When the operator receives push events (`DOCKYARD_EVENTS_URL` set), every Registry gets a
Secret `<registry>-events` with a random token, before its Deployment. The Secret is created
once and never re-applied: a token that changed on every pass would break the registry's
notifications and the receiver's authentication (see `controller.push`).
"""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import json
import logging
import os
import secrets
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

from dockyard.api import API_VERSION, SpecError
from dockyard.api.registry import quantity_value
from dockyard.controller import conditions
from dockyard.controller.kube import ApiError, Kube
from dockyard.controller.reviewers import Reviewers
from dockyard.render.registry import (
    OPTIONAL_KINDS,
    RenderInput,
    claim_name,
    endpoint,
    events_secret,
    events_secret_name,
    external_url,
    referenced_secrets,
    render_registry,
    selector_string,
    signing_secret,
    signing_secret_name,
    uses_service_accounts,
)

APPLIED_ANNOTATION = "dockyard.dev/applied"
EVENTS_URL_ENV = "DOCKYARD_EVENTS_URL"
EventPoster = Callable[[Mapping[str, Any], str, str, str], None]
"""(registry body, type Normal|Warning, reason, message) -> None"""

log = logging.getLogger("dockyard.reconcile")


def now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def events_url_from_environment() -> str | None:
    """Where registries post push events (`DOCKYARD_EVENTS_URL`), or None: no events at all."""
    url = os.environ.get(EVENTS_URL_ENV, "").strip()
    if not url:
        return None
    scheme, sep, rest = url.partition("://")
    if scheme not in ("http", "https") or not sep or not rest.split("/")[0]:
        log.error("%s=%r is not an http(s) URL: registries will not post push events", EVENTS_URL_ENV, url)
        return None
    return url.rstrip("/")


def holds_quantity(path: tuple[str, ...]) -> bool:
    """Whether the field at `path` (its keys, list indexes left out) is a Kubernetes quantity.

    Container, pod and claim `resources.requests.*` / `resources.limits.*` and emptyDir
    `sizeLimit`: the API server stores these in canonical form (`1.5Gi` as `1536Mi`).
    """
    return path[-1:] == ("sizeLimit",) or (len(path) >= 3 and path[-3] == "resources"
                                           and path[-2] in ("requests", "limits"))


def same_quantity(live: Any, desired: Any) -> bool:
    """Whether two quantities (strings, or numbers as in a raw `resources`) have the same value."""
    if isinstance(live, bool) or isinstance(desired, bool) \
            or not isinstance(live, str | int | float) or not isinstance(desired, str | int | float):
        return False
    try:
        return quantity_value(str(live)) == quantity_value(str(desired))
    except ValueError:
        return False


def contains(live: Any, desired: Any, path: tuple[str, ...] = ()) -> bool:
    """Whether every field of `desired` is present with the same value in `live`.

    Quantities compare by value, as the API server rewrites them (see `holds_quantity`).
    """
    if isinstance(desired, Mapping):
        return isinstance(live, Mapping) and all(
            k in live and contains(live[k], v, (*path, k)) for k, v in desired.items())
    if isinstance(desired, list):
        return (isinstance(live, list) and len(live) == len(desired)
                and all(contains(a, b, path) for a, b in zip(live, desired, strict=True)))
    return bool(live == desired) or (holds_quantity(path) and same_quantity(live, desired))


def stamp(obj: dict[str, Any]) -> dict[str, Any]:
    """The object with the hash of its own content in the `applied` annotation."""
    digest = hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]
    meta = obj["metadata"]
    annotations = {**meta.get("annotations", {}), APPLIED_ANNOTATION: digest}
    return {**obj, "metadata": {**meta, "annotations": annotations}}


def status_patch(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any] | None:
    """A merge patch turning `old` status into `new`, or None when they are equal."""
    if dict(old) == dict(new):
        return None
    patch: dict[str, Any] = {k: v for k, v in new.items() if old.get(k) != v}
    patch.update({k: None for k in old if k not in new})
    return patch


class Reconciler:
    """Serialised, coalesced reconciles of Registries through one API adapter."""

    def __init__(self, kube: Kube, post_event: EventPoster, *, events_url: str | None = None) -> None:
        self.kube = kube
        self.reviewers = Reviewers(kube)
        self.post_event = post_event
        self.events_url = events_url
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}
        self._pending: set[tuple[str, str]] = set()

    async def request(self, namespace: str, name: str) -> None:
        key = (namespace, name)
        lock = self._locks.setdefault(key, asyncio.Lock())
        if lock.locked() and key in self._pending:
            return  # a pass is already queued behind the running one; it will see our change
        self._pending.add(key)
        async with lock:
            self._pending.discard(key)
            try:
                await self.reconcile(namespace, name)
            except ApiError as e:  # the namespace began to terminate during the pass
                if not e.namespace_terminating:
                    raise
                log.info("namespace %s is being deleted: leaving %s alone", namespace, name)
                self.forget(namespace, name)

    async def reconcile(self, namespace: str, name: str) -> None:
        body = await self.current("Registry", namespace, name)
        if body is not None:
            await Pass(self, body).run()
        elif error := await self.reviewers.set(namespace, name, False):
            log.warning("%s", error)

    async def current(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        """The object to reconcile; None when it, or its namespace, is being deleted (or is gone)."""
        body = await self.kube.get(API_VERSION, kind, namespace, name)
        if body is None or body["metadata"].get("deletionTimestamp") \
                or await self.kube.namespace_terminating(namespace):
            self.forget(namespace, name)
            return None
        return body

    def forget(self, namespace: str, name: str) -> None:
        self._locks.pop((namespace, name), None)


class ObjectPass:
    """What every one-object reconcile shares: its identity, owned deletes, status writes."""

    KIND = ""

    def __init__(self, reconciler: Reconciler, body: Mapping[str, Any]) -> None:
        self.kube = reconciler.kube
        self.post_event = reconciler.post_event
        self.body = body
        meta = body["metadata"]
        self.name: str = meta["name"]
        self.namespace: str = meta["namespace"]
        self.uid: str = meta["uid"]
        self.generation: int = meta.get("generation") or 1
        self.status: dict[str, Any] = dict(body.get("status") or {})

    async def delete_if_owned(self, api_version: str, kind: str, name: str) -> None:
        obj = await self.kube.get(api_version, kind, self.namespace, name)
        owners = ((obj or {}).get("metadata") or {}).get("ownerReferences") or []
        if obj and any(ref.get("uid") == self.uid for ref in owners):
            await self.kube.delete(api_version, kind, self.namespace, name, uid=obj["metadata"].get("uid"))

    def status_patch(self, old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any] | None:
        return status_patch(old, new)

    async def write_status(self, status: dict[str, Any], new_conditions: list[dict[str, Any]]
                           ) -> list[dict[str, Any]]:
        """Patch the status when it differs; the conditions that transitioned."""
        merged, changed = conditions.merge(self.status.get("conditions") or [], new_conditions, now())
        new = {**status, "conditions": merged}
        patch = self.status_patch(self.status, new)
        if patch is None:
            return []
        try:
            await self.kube.patch_status(API_VERSION, self.KIND, self.namespace, self.name, patch)
        except ApiError as e:
            if e.status != 404:
                raise
            log.info("%s %s/%s was deleted during the reconcile: its status is not written",
                     self.KIND, self.namespace, self.name)
            return []
        self.status = new
        return changed


class Pass(ObjectPass):
    """One reconcile of one Registry body."""

    KIND = "Registry"

    def __init__(self, reconciler: Reconciler, body: Mapping[str, Any]) -> None:
        super().__init__(reconciler, body)
        self.events_url = reconciler.events_url
        self.reviewers = reconciler.reviewers

    def status_patch(self, old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any] | None:
        """The status patch, in which `storage` names only the keys of the pass and those it removes.

        The storage keys the push receiver writes from the registry's reports (`conditions.USAGE_KEYS`)
        are never in it: the pass carries them over from the status it read, so writing them could only
        put back what a report changed meanwhile (an error the registry has just cleared). A merge patch
        leaves keys it does not name alone, and those it sets to null go: a claim's name and capacity
        leave with the claim.
        """
        patch = status_patch(old, new)
        if patch is None or "storage" not in patch:
            return patch
        before, after = old.get("storage") or {}, new.get("storage") or {}
        storage = {k: v for k, v in after.items() if k not in conditions.USAGE_KEYS and before.get(k) != v}
        storage.update({k: None for k in before if k not in after and k not in conditions.USAGE_KEYS})
        if storage:
            patch["storage"] = storage
        else:
            del patch["storage"]
        return patch or None

    @property
    def storage_error(self) -> str | None:
        """What the registry last reported about its storage (`status.storage.error`, from the receiver)."""
        error = (self.status.get("storage") or {}).get("error")
        return error if isinstance(error, str) and error else None

    async def run(self) -> None:
        try:
            inp = RenderInput.from_body(self.body, events_url=self.events_url)
        except SpecError as e:
            await self.report(conditions.Observed(self.generation, 0, spec_error=str(e)), None)
            return
        if self.status.get("observedGeneration") != self.generation:
            await self.write({**self.status, "observedGeneration": self.generation},
                             conditions.reconciling_now(self.generation))
        secret_data, missing = await self.read_secrets(inp)
        if missing:  # leave running pods alone; report what they do
            dep = await self.kube.get("apps/v1", "Deployment", self.namespace, self.name)
            await self.report(conditions.Observed(self.generation, inp.spec.replicas,
                                                  missing_secrets=tuple(missing), storage_error=self.storage_error),
                              inp, {"Deployment": dep})
            return
        claim = await self.kube.get("v1", "PersistentVolumeClaim", self.namespace, claim_name(self.name)) \
            if inp.spec.storage.pvc else None
        inp = replace(inp, secrets=secret_data, claim_size=self.kept_claim_size(inp, claim))
        live, apply_error = await self.apply(inp, claim)
        await self.report(conditions.Observed(
            self.generation, inp.spec.replicas, apply_error=apply_error,
            deployment=live.get("Deployment"),
            claim_phase=((live.get("PersistentVolumeClaim") or {}).get("status") or {}).get("phase"),
            storage_error=self.storage_error,
        ), inp, live)

    async def read_secrets(self, inp: RenderInput) -> tuple[dict[str, dict[str, str]], list[str]]:
        found: dict[str, dict[str, str]] = {}
        missing: list[str] = []
        for secret, keys in referenced_secrets(inp.spec).items():
            obj = await self.kube.get("v1", "Secret", self.namespace, secret)
            data = (obj or {}).get("data") or {}
            absent = [key for key in keys if key not in data]
            if obj is None:
                missing.append(f"Secret {secret!r} not found in namespace {self.namespace!r}")
            elif absent:
                missing.append(f"Secret {secret!r} has no key {absent[0]!r}")
            else:
                found[secret] = data
        return found, missing

    @staticmethod
    def kept_claim_size(inp: RenderInput, claim: Mapping[str, Any] | None) -> str | None:
        """A re-attached claim larger than the spec keeps its size: volumes never shrink."""
        pvc = inp.spec.storage.pvc
        live = (((claim or {}).get("spec") or {}).get("resources") or {}).get("requests", {}).get("storage")
        if pvc and live and quantity_value(str(live)) > quantity_value(pvc.size):
            return str(live)
        return None

    async def apply(self, inp: RenderInput, claim: Mapping[str, Any] | None
                    ) -> tuple[dict[str, Any], str | None]:
        live: dict[str, Any] = {}
        desired = [stamp(obj) for obj in render_registry(inp)]
        errors = await self.generated_secrets(inp)
        errors.append(await self.reviewers.set(self.namespace, self.name, uses_service_accounts(inp.spec)))
        for obj in desired:  # a refused child (say, a PVC expansion) never holds back the others
            kind, meta = obj["kind"], obj["metadata"]
            current = claim if kind == "PersistentVolumeClaim" else \
                await self.kube.get(obj["apiVersion"], kind, self.namespace, meta["name"])
            if current is None or not contains(current, obj):
                try:
                    current = await self.kube.apply(obj)
                except ApiError as e:
                    if e.status not in (400, 403, 409, 422) or e.namespace_terminating:
                        raise
                    errors.append(f"{kind} {meta['name']!r} was refused: {e.message}")
            live[kind] = current
        rendered = {obj["kind"] for obj in desired}
        for api_version, kind in OPTIONAL_KINDS:
            if kind not in rendered:
                await self.delete_if_owned(api_version, kind, self.name)
        return live, "; ".join(e for e in errors if e) or None

    async def ensure_secret_once(self, name: str, make: Callable[[], dict[str, Any]], what: str) -> str | None:
        """Create a Secret of generated content unless it exists; an error to report, or None."""
        current = await self.kube.get("v1", "Secret", self.namespace, name)
        if current is None:
            try:
                current = await self.kube.create(make())
                log.info("created Secret %s/%s with the registry's %s", self.namespace, name, what)
            except ApiError as e:
                if e.namespace_terminating:
                    raise
                if e.status != 409:  # 409: created meanwhile, which is as good
                    return f"Secret {name!r} ({what}) was refused: {e.message}"
                return None
        owners = (current.get("metadata") or {}).get("ownerReferences") or []
        if not any(ref.get("uid") == self.uid and ref.get("controller") for ref in owners):
            return (f"Secret {name!r} exists but does not belong to this Registry; delete it and Dockyard "
                    f"creates the {what} anew")
        return None

    async def generated_secrets(self, inp: RenderInput) -> list[str | None]:
        """The Secrets of random content the pods mount: the push events token, the token signing key."""
        errors: list[str | None] = []
        if inp.events_url:
            errors.append(await self.ensure_secret_once(
                events_secret_name(self.name), lambda: events_secret(inp, secrets.token_urlsafe(32)),
                "push events token"))
        if inp.spec.auth and inp.spec.auth.token:
            errors.append(await self.ensure_secret_once(
                signing_secret_name(self.name), lambda: signing_secret(inp, secrets.token_urlsafe(48)),
                "token signing key"))
        return errors

    async def report(self, obs: conditions.Observed, inp: RenderInput | None,
                     live: Mapping[str, Any] | None = None) -> None:
        status: dict[str, Any] = {"observedGeneration": self.generation}
        if inp is not None:
            dep_status = ((live or {}).get("Deployment") or {}).get("status") or {}
            status.update({
                "replicas": dep_status.get("replicas") or 0,
                "readyReplicas": dep_status.get("readyReplicas") or 0,
                "selector": selector_string(self.name),
                "endpoint": endpoint(inp),
            })
            url = external_url(inp.spec)
            if url:
                status["url"] = url
            claim = (live or {}).get("PersistentVolumeClaim")
            # Usage the push receiver wrote from the registry's reports stays (see controller.push).
            reported = self.status.get("storage") or {}
            storage = {k: reported[k] for k in conditions.USAGE_KEYS if k in reported}
            if claim:
                capacity = ((claim.get("status") or {}).get("capacity") or {}).get("storage")
                storage.update({"claimName": claim["metadata"]["name"], **({"capacity": capacity} if capacity else {})})
            if storage:
                status["storage"] = storage
            if inp.spec.quotas and self.status.get("quotas"):
                status["quotas"] = self.status["quotas"]
        new_conditions = conditions.registry_conditions(obs)
        if inp is not None:
            new_conditions += conditions.storage_conditions(status.get("storage"), self.generation)
        await self.write(status, new_conditions)

    async def write(self, status: dict[str, Any], new_conditions: list[dict[str, Any]]) -> None:
        for cond in await self.write_status(status, new_conditions):
            self.announce(cond)

    def announce(self, cond: Mapping[str, Any]) -> None:
        """One Event per transition of Ready, Stalled or the storage conditions (Reconciling churns on every
        change)."""
        if cond["type"] == conditions.STALLED:
            if cond["status"] == "True":
                self.post_event(self.body, "Warning", cond["reason"], cond["message"])
            else:
                self.post_event(self.body, "Normal", "Recovered", "the registry is no longer stalled")
        elif cond["type"] == conditions.READY:
            kind = "Normal" if cond["status"] == "True" else "Warning"
            reason = "Ready" if cond["status"] == "True" else "NotReady"
            self.post_event(self.body, kind, reason, cond["message"])
        elif cond["type"] in conditions.STORAGE_TYPES:
            if cond["status"] == "True":
                self.post_event(self.body, "Warning", cond["type"], cond["message"])
            else:
                self.post_event(self.body, "Normal", f"No{cond['type']}", cond["message"])

