"""A Kubernetes API server emulator with the semantics Dockyard relies on.

Why this module exists: the integration tier runs the real operator (Kopf) against kmock's
``KubernetesEmulator``, which stores objects as plain dicts and merges every patch into them.
A real kube-apiserver does much more, and the operator's correctness depends on it: server-side
apply, the status and scale subresources, resource versions and generations, optimistic
concurrency, owner-reference garbage collection, and silence on no-op writes. Rather than bending
the operator to the emulator, ``Emulator`` below extends kmock in this one place.

What the emulator does, as the API server does:

* Metadata: ``uid`` (uuid4), ``creationTimestamp``, ``resourceVersion`` (one global, increasing
  counter, as a string) and ``generation`` (1 on create, +1 whenever anything but ``metadata``
  and, for resources with a status subresource, ``status`` changes). ``generateName`` works.
* Discovery: only registered resources exist (``DEFAULT_RESOURCES`` plus the ``dockyard.dev``
  kinds, whose CRDs in ``crds/`` are also served as ``customresourcedefinitions`` objects).
  Any other resource is a 404, as on a real server. Register more with ``emulator.register()``.
* Status subresource: writes to the main resource ignore ``.status`` (create drops it);
  writes to ``/status`` change only ``.status``.
* Patch types by Content-Type: merge patch (RFC 7386), strategic merge patch (a merge patch whose
  lists of containers, ports, env, volumes, volumeMounts, ownerReferences, ... merge by their key;
  no ``$patch`` directives), JSON patch (RFC 6902, all six ops; a failed ``test`` is 422 Invalid,
  which Kopf relies on), and server-side apply (``application/apply-patch+yaml``, JSON or YAML).
* Server-side apply: ``?fieldManager=`` is required, ``force=true`` optional; apply creates a
  missing object (201). Ownership is kept per manager in ``metadata.managedFields`` in the real
  ``FieldsV1`` format. A manager's new apply removes the fields it applied before and no longer
  applies (unless another manager also owns them); a field owned by another manager with a
  different value is a 409 Conflict unless forced (forcing takes the field over). Approximation:
  lists are atomic per apply, except ``metadata.ownerReferences`` (keyed by ``uid``) and
  ``metadata.finalizers`` (a set); maps, including labels and annotations, merge per key.
  Non-apply writes record ``operation: Update`` entries and take over the fields they change.
* No-op writes (apply, patch or update that would not change the object, managedFields included)
  do not bump ``resourceVersion`` and send no watch event.
* Optimistic concurrency: a body whose ``metadata.resourceVersion`` differs from the stored one
  gets 409 Conflict; PUT must carry it (422 Invalid otherwise).
* Deletion: finalizers hold an object with ``deletionTimestamp`` (no new finalizers may be added
  then); when the last finalizer goes, or when there were none, the object is deleted and every
  object whose ``metadata.ownerReferences`` names its uid is deleted too (background propagation,
  recursively; dependents with other live owners only lose the dangling reference). The collection
  runs synchronously inside the deleting request, so the DELETED events arrive in one burst.
  ``propagationPolicy: Orphan`` skips it (``Foreground`` is treated as ``Background``);
  ``preconditions`` are honoured. An object written with owner references none of which names an
  existing object in its own namespace (or a cluster-scoped one) is collected right away, as the
  real collector soon would. The uids are those of objects in this emulator:
  ``Emulator(collect_dangling=False)`` turns this off for tests that reference owners it does not
  hold.
* Scale subresource (registries, deployments): an ``autoscaling/v1`` Scale built from
  ``.spec.replicas``, ``.status.replicas`` and ``.status.selector`` (for deployments, the label
  selector as a string); GET, PUT and PATCH of ``/scale`` set ``.spec.replicas``.
* CRD schemas from ``crds/`` apply their ``default`` values and prune unknown fields, as a
  structural schema does, and writes are validated as admission would (422 Invalid naming the
  fields) with the unit tier's admission harness (``tests/unit/cel.py``: the structural schema
  and the CEL ``x-kubernetes-validations``, transition rules included). The CEL rules run on
  create and whenever anything but metadata and status changes; metadata and status writes are
  checked against the structural schema only. ``Emulator(validate=False)``, or
  ``emulator.validate = False`` inside a test, turns this off: for a test of what the operator
  does when an invalid object gets past admission anyway.
* Errors are ``Status`` objects: NotFound 404, AlreadyExists 409, Conflict 409, Invalid 422,
  BadRequest 400, Forbidden 403, MethodNotAllowed 405, UnsupportedMediaType 415.
* Lists carry ``metadata.resourceVersion`` (the current counter) and honour ``labelSelector``,
  ``fieldSelector`` (equality on any dotted path), ``limit`` and ``continue``.
* Watches stream the events after ``?resourceVersion=`` from the event history; without it,
  ADDED events for the current state come first. The history is complete until a test calls
  ``compact()``; a watch from an older version then gets an ERROR event with a 410 Expired
  Status and ends, as after etcd compaction. ``close_watches()`` ends every open stream, as an
  API server restart would. ``sendInitialEvents=true`` ends the initial ADDED events with a
  BOOKMARK, and ``timeoutSeconds`` closes the stream server-side, as Kopf expects.
  Label-selected watches see objects that start or stop matching as ADDED or DELETED.
* ``?dryRun=All`` validates and answers without storing. Bodies may be JSON or YAML.

Namespaces start ``Active``; deleting one makes it ``Terminating``, deletes everything in it
(finalizers still hold objects, and the namespace waits for them), then the namespace itself;
nothing new can be created in a terminating namespace (403 Forbidden).

Not emulated: validation of built-in kinds, admission webhooks, authentication and RBAC, the need
for a namespace to exist before objects are created in it, the defaults built-in kinds get (a
Deployment's ``strategy``, a container's ``imagePullPolicy``, ...), controllers (nothing makes a
Deployment available: tests write its status through ``/status``, or ``seed()`` an object with its
status), periodic bookmarks, server-side table output, ``$patch`` directives.

kmock's reactions still work and take precedence (``emulator['get /api/v1/...'] << 503`` injects
a failure); while a test has added none, object requests skip kmock's request matching, which
re-filters every request ever received and would make long runs quadratic.

For tests: every write request is recorded with its monotonic arrival time, so
``writes(since)`` lists the ``(method, path)`` of POST/PUT/PATCH/DELETE requests after a
``time.monotonic()`` mark (no-ops and refused writes included: they are requests all the same),
and ``emitted(since)`` the watch events the emulator produced. ``live(resource, namespace, name)``
reads a stored object without a request; kmock's ``emulator.objects[resource, namespace, name]``
keeps each object's full history; ``seed(obj)`` stores one without a request; ``resource_version``
is the current counter (a watch from it sees only what happens next).

The module-level helpers ``create``, ``get``, ``list_objects``, ``patch``, ``apply``, ``delete``
and ``wait_for`` drive the emulator over real HTTP, as any client would; ``ApiError`` carries a
failed request's Status. The fixtures ``emulator`` and ``kubeconfig`` live in ``conftest.py``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import datetime
import inspect
import json
import random
import re
import string
import time
import uuid
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, NamedTuple, TypeVar, overload

import attrs
import jsonschema  # type: ignore[import-untyped]
import kmock
import yaml
from kmock._internal import apps, k8s, rendering

from tests.unit import cel as admission

T = TypeVar('T')
Body = dict[str, Any]
FieldPath = tuple[str, ...]

REPO_ROOT = Path(__file__).resolve().parents[2]
CRD_DIR = REPO_ROOT / 'crds'
WRITE_METHODS = frozenset({'POST', 'PUT', 'PATCH', 'DELETE'})

# Resources the operator and its tests touch (group/version/plural).
# Their discovery data (kind, verbs, namespaced, short names) comes from kmock's bundled list.
DEFAULT_RESOURCES: tuple[str, ...] = (
    'v1/secrets',
    'v1/configmaps',
    'v1/services',
    'v1/serviceaccounts',
    'v1/persistentvolumeclaims',
    'v1/events',
    'v1/pods',
    'v1/namespaces',
    'apps/v1/deployments',
    'policy/v1/poddisruptionbudgets',
    'networking.k8s.io/v1/ingresses',
    'batch/v1/jobs',
    'batch/v1/cronjobs',
    'events.k8s.io/v1/events',
    'coordination.k8s.io/v1/leases',
    'rbac.authorization.k8s.io/v1/roles',
    'rbac.authorization.k8s.io/v1/rolebindings',
    'apiextensions.k8s.io/v1/customresourcedefinitions',
)

# The dockyard.dev kinds, registered even before their CRD files exist in crds/.
DOCKYARD_RESOURCES: dict[str, kmock.ResourceInfo] = {
    'dockyard.dev/v1alpha1/registries': kmock.ResourceInfo(
        kind='Registry', singular='registry', namespaced=True, shortnames={'reg'},
        categories={'dockyard'}, subresources={'status', 'scale'},
        verbs={'create', 'delete', 'deletecollection', 'get', 'list', 'patch', 'update', 'watch'},
    ),
    'dockyard.dev/v1alpha1/replicationpolicies': kmock.ResourceInfo(
        kind='ReplicationPolicy', singular='replicationpolicy', namespaced=True, shortnames={'rpol'},
        categories={'dockyard'}, subresources={'status'},
        verbs={'create', 'delete', 'deletecollection', 'get', 'list', 'patch', 'update', 'watch'},
    ),
}


class ScalePaths(NamedTuple):
    """Where a resource's scale subresource reads and writes (the CRD ``scale`` block)."""
    spec_replicas: FieldPath
    status_replicas: FieldPath
    selector: FieldPath | None  # None: derive the string from .spec.selector (apps/v1 style)


SCALE_PATHS: dict[str, ScalePaths] = {
    'dockyard.dev/v1alpha1/registries': ScalePaths(('spec', 'replicas'), ('status', 'replicas'),
                                                   ('status', 'selector')),
    'apps/v1/deployments': ScalePaths(('spec', 'replicas'), ('status', 'replicas'), None),
}

# Lists that strategic merge patches merge by a key instead of replacing them.
STRATEGIC_KEYS: dict[str, tuple[str, ...]] = {
    'containers': ('name',), 'initContainers': ('name',), 'ephemeralContainers': ('name',),
    'env': ('name',), 'volumes': ('name',), 'volumeMounts': ('mountPath',),
    'ports': ('containerPort', 'port'), 'ownerReferences': ('uid',), 'imagePullSecrets': ('name',),
    'conditions': ('type',), 'finalizers': (),  # () means: a set of scalars
}

# Metadata only the server sets; client bodies cannot change them.
SERVER_METADATA = ('uid', 'creationTimestamp', 'resourceVersion', 'generation', 'managedFields',
                   'deletionTimestamp', 'deletionGracePeriodSeconds', 'selfLink')
# Metadata fields that are identity, not content owned by a field manager.
UNOWNED_METADATA = frozenset(SERVER_METADATA) | {'name', 'namespace', 'generateName'}
OWNER_REFS: FieldPath = ('f:metadata', 'f:ownerReferences')
FINALIZERS: FieldPath = ('f:metadata', 'f:finalizers')
NAMESPACES = kmock.resource('', 'v1', 'namespaces')
NAMESPACES_PATH = re.compile(r'/api/v1/namespaces(?:/(?P<name>[^/]+)(?:/(?P<sub>status|finalize))?)?/?')
NAME_RE = re.compile(r'^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$')


class Write(NamedTuple):
    """A write request as the server saw it."""
    method: str
    path: str


class Emitted(NamedTuple):
    """A watch event the server sent to its subscribers (or would have, had there been any)."""
    type: str
    resource: str
    namespace: str | None
    name: str
    resource_version: str


class ApiError(Exception):
    """A request the emulator answered with a failure Status."""

    def __init__(self, status: int, body: Any) -> None:
        self.status = status
        self.body = body
        self.reason = body.get('reason') if isinstance(body, dict) else None
        message = body.get('message') if isinstance(body, dict) else body
        super().__init__(f'{status} {self.reason}: {message}')


class _Failure(Exception):
    """Raised inside request handling; becomes a Status response."""

    def __init__(self, code: int, reason: str, message: str, details: Body | None = None) -> None:
        super().__init__(message)
        self.status: Body = {
            'kind': 'Status', 'apiVersion': 'v1', 'metadata': {}, 'status': 'Failure',
            'message': message, 'reason': reason, 'details': details or {}, 'code': code,
        }
        self.code = code


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime('%Y-%m-%dT%H:%M:%SZ')


def _res_id(res: kmock.resource) -> str:
    return f'{res.group}/{res.version}/{res.plural}' if res.group else f'{res.version}/{res.plural}'


def _qualified(res: kmock.resource) -> str:
    return f'{res.plural}.{res.group}' if res.group else str(res.plural)


def _flag(params: Mapping[str, str], name: str) -> bool:
    """A boolean query parameter, as Go's strconv.ParseBool reads it (the Python client sends "True")."""
    return params.get(name, '').lower() in ('true', '1', 't')


def _meta(obj: Mapping[str, Any]) -> Body:
    meta = obj.get('metadata')
    return meta if isinstance(meta, dict) else {}


# ----------------------------------------------------------------------------------------------
# Patches.

def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: objects merge recursively, ``null`` deletes, everything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def strategic_merge_patch(target: Any, patch: Any, field: str = '') -> Any:
    """A merge patch whose well-known lists merge by their key (see ``STRATEGIC_KEYS``)."""
    if isinstance(patch, list) and isinstance(target, list) and field in STRATEGIC_KEYS:
        keys = STRATEGIC_KEYS[field]
        if not keys:  # a set of scalars
            return list(target) + [item for item in patch if item not in target]
        merged = list(target)
        for item in patch:
            key = next((k for k in keys if isinstance(item, dict) and k in item), None)
            if key is None:
                merged.append(copy.deepcopy(item))
                continue
            for index, existing in enumerate(merged):
                if isinstance(existing, dict) and existing.get(key) == item[key]:
                    merged[index] = strategic_merge_patch(existing, item)
                    break
            else:
                merged.append(copy.deepcopy(item))
        return merged
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = strategic_merge_patch(result.get(key), value, key)
    return result


def _pointer(path: str) -> list[str]:
    if path == '':
        return []
    if not path.startswith('/'):
        raise _Failure(422, 'Invalid', f'invalid JSON pointer: {path!r}')
    return [part.replace('~1', '/').replace('~0', '~') for part in path[1:].split('/')]


def _resolve(doc: Any, parts: list[str], op: str) -> tuple[Any, str]:
    """Find the container of the last pointer element."""
    cur = doc
    for part in parts[:-1]:
        if isinstance(cur, dict) and part in cur:
            cur = cur[part]
        elif isinstance(cur, list) and part.isdigit() and int(part) < len(cur):
            cur = cur[int(part)]
        else:
            raise _Failure(422, 'Invalid', f'jsonpatch {op} operation does not apply: doc is missing path: '
                                           f'/{"/".join(parts)}')
    return cur, parts[-1]


def json_patch(doc: Any, ops: Any) -> Any:
    """RFC 6902 (add, remove, replace, move, copy, test) on a copy of ``doc``."""
    if not isinstance(ops, list):
        raise _Failure(400, 'BadRequest', 'a JSON patch must be a list of operations')
    doc = copy.deepcopy(doc)
    for op in ops:
        if not isinstance(op, dict) or 'op' not in op or 'path' not in op:
            raise _Failure(400, 'BadRequest', f'invalid JSON patch operation: {op!r}')
        kind, parts = op['op'], _pointer(op['path'])
        if kind == 'test':
            found, value = _get_pointer(doc, parts)
            if not found or value != op.get('value'):
                raise _Failure(422, 'Invalid', f'the server rejected our request due to an error in our '
                                               f'request: testing value {op["path"]} failed')
        elif kind == 'remove':
            doc = _remove_pointer(doc, parts, 'remove')
        elif kind in ('add', 'replace'):
            if 'value' not in op:
                raise _Failure(400, 'BadRequest', f'the {kind} operation needs a value')
            if kind == 'replace':
                _remove_pointer(doc, parts, 'replace')
            doc = _add_pointer(doc, parts, copy.deepcopy(op['value']), kind)
        elif kind in ('move', 'copy'):
            source = _pointer(op.get('from', ''))
            found, value = _get_pointer(doc, source)
            if not found:
                raise _Failure(422, 'Invalid', f'jsonpatch {kind} operation does not apply: '
                                               f'doc is missing from path: {op.get("from")}')
            if kind == 'move':
                doc = _remove_pointer(doc, source, 'move')
            doc = _add_pointer(doc, parts, copy.deepcopy(value), kind)
        else:
            raise _Failure(400, 'BadRequest', f'unknown JSON patch operation: {kind!r}')
    return doc


def _get_pointer(doc: Any, parts: list[str]) -> tuple[bool, Any]:
    cur = doc
    for part in parts:
        if isinstance(cur, dict) and part in cur:
            cur = cur[part]
        elif isinstance(cur, list) and part.isdigit() and int(part) < len(cur):
            cur = cur[int(part)]
        else:
            return False, None
    return True, cur


def _remove_pointer(doc: Any, parts: list[str], op: str) -> Any:
    if not parts:
        return None
    parent, last = _resolve(doc, parts, op)
    if isinstance(parent, dict) and last in parent:
        del parent[last]
    elif isinstance(parent, list) and last.isdigit() and int(last) < len(parent):
        del parent[int(last)]
    else:
        raise _Failure(422, 'Invalid', f'jsonpatch {op} operation does not apply: doc is missing key: '
                                       f'/{"/".join(parts)}')
    return doc


def _add_pointer(doc: Any, parts: list[str], value: Any, op: str) -> Any:
    if not parts:
        return value
    parent, last = _resolve(doc, parts, op)
    if isinstance(parent, dict):
        parent[last] = value
    elif isinstance(parent, list) and last == '-':
        parent.append(value)
    elif isinstance(parent, list) and last.isdigit() and int(last) <= len(parent):
        parent.insert(int(last), value)
    else:
        raise _Failure(422, 'Invalid', f'jsonpatch {op} operation does not apply: /{"/".join(parts)}')
    return doc


# ----------------------------------------------------------------------------------------------
# Field ownership (server-side apply) in the FieldsV1 notation: "f:<field>", "k:<json key>",
# "v:<json value>". A path is a tuple of such elements; a manager owns a set of leaf paths.

def field_paths(obj: Mapping[str, Any], prefix: FieldPath = ()) -> set[FieldPath]:
    """The leaf field paths an object (or an applied configuration) sets."""
    paths: set[FieldPath] = set()
    for key, value in obj.items():
        if not prefix and key in ('apiVersion', 'kind'):
            continue
        if prefix == ('f:metadata',) and key in UNOWNED_METADATA:
            continue
        path = (*prefix, f'f:{key}')
        if path == OWNER_REFS and isinstance(value, list):
            for item in value:
                if isinstance(item, dict) and 'uid' in item:
                    paths.add((*path, 'k:' + json.dumps({'uid': item['uid']})))
        elif path == FINALIZERS and isinstance(value, list):
            paths.update((*path, 'v:' + json.dumps(item)) for item in value)
        elif isinstance(value, dict) and value:
            paths |= field_paths(value, path)
        else:
            paths.add(path)
    return paths


_MISSING = object()


def value_at(obj: Any, path: FieldPath) -> Any:
    """The value at a field path, or ``_MISSING``."""
    cur = obj
    for element in path:
        kind, _, raw = element.partition(':')
        if kind == 'f' and isinstance(cur, dict) and raw in cur:
            cur = cur[raw]
        elif kind == 'k' and isinstance(cur, list):
            key = json.loads(raw)
            cur = next((item for item in cur if isinstance(item, dict)
                        and all(item.get(k) == v for k, v in key.items())), _MISSING)
        elif kind == 'v' and isinstance(cur, list):
            value = json.loads(raw)
            cur = value if value in cur else _MISSING
        else:
            return _MISSING
        if cur is _MISSING:
            return _MISSING
    return cur


def remove_at(obj: Body, path: FieldPath) -> None:
    """Remove the field at a path (in place), then prune the maps its removal left empty."""
    trail: list[Any] = [obj]
    for element in path[:-1]:
        nxt = value_at(trail[-1], (element,))
        if not isinstance(nxt, dict | list):
            return
        trail.append(nxt)
    parent, (kind, _, raw) = trail[-1], path[-1].partition(':')
    if kind == 'f' and isinstance(parent, dict) and raw in parent:
        del parent[raw]
    elif kind in ('k', 'v') and isinstance(parent, list) and (item := value_at(parent, (path[-1],))) is not _MISSING:
        parent.remove(item)
    else:
        return  # nothing was there: nothing to prune either
    # Prune emptied containers below the top level (metadata and spec themselves stay).
    for depth in range(len(trail) - 1, 1, -1):
        if trail[depth] not in ({}, []):
            break
        container, (_, _, raw) = trail[depth - 1], path[depth - 1].partition(':')
        if isinstance(container, dict):
            container.pop(raw, None)


def fields_to_v1(paths: Iterable[FieldPath]) -> Body:
    tree: Body = {}
    for path in sorted(paths):
        node = tree
        for element in path:
            node = node.setdefault(element, {})
    # A node that is owned itself and also has owned children gets the "." marker.
    for path in paths:
        node = tree
        for element in path:
            node = node[element]
        if node:
            node['.'] = {}
    return tree


def fields_from_v1(tree: Mapping[str, Any], prefix: FieldPath = ()) -> set[FieldPath]:
    paths: set[FieldPath] = set()
    for element, sub in tree.items():
        if element == '.':
            paths.add(prefix)
        elif isinstance(sub, dict) and sub:
            paths |= fields_from_v1(sub, (*prefix, element))
        else:
            paths.add((*prefix, element))
    return paths


def _overlaps(a: FieldPath, b: FieldPath) -> bool:
    shorter = min(len(a), len(b))
    return a[:shorter] == b[:shorter]


def _render_path(path: FieldPath) -> str:
    out = ''
    for element in path:
        kind, _, raw = element.partition(':')
        out += f'.{raw}' if kind == 'f' else f'[{raw}]'
    return out


def apply_merge(live: Any, applied: Any, path: FieldPath = ()) -> Any:
    """Merge an applied configuration into the live object (maps per key, lists atomic)."""
    if not isinstance(applied, dict) or not isinstance(live, dict):
        return copy.deepcopy(applied)
    out = dict(live)
    for key, value in applied.items():
        sub = (*path, f'f:{key}')
        current = out.get(key)
        if sub == OWNER_REFS and isinstance(value, list) and isinstance(current, list):
            merged = [ref for ref in current
                      if not any(isinstance(ref, dict) and isinstance(new, dict) and ref.get('uid') == new.get('uid')
                                 for new in value)]
            out[key] = merged + copy.deepcopy(value)
        elif sub == FINALIZERS and isinstance(value, list) and isinstance(current, list):
            out[key] = list(current) + [item for item in value if item not in current]
        elif isinstance(value, dict) and isinstance(current, dict) and value:
            out[key] = apply_merge(current, value, sub)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _drop_nulls(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _drop_nulls(v) for k, v in obj.items() if v is not None}
    if isinstance(obj, list):
        return [_drop_nulls(v) for v in obj]
    return obj


# ----------------------------------------------------------------------------------------------
# Selectors.

def _split_selector(text: str) -> list[str]:
    terms, depth, current = [], 0, ''
    for char in text:
        depth += char == '('
        depth -= char == ')'
        if char == ',' and depth == 0:
            terms.append(current.strip())
            current = ''
        else:
            current += char
    if current.strip():
        terms.append(current.strip())
    return terms


def label_selector(text: str | None) -> Callable[[Mapping[str, str]], bool]:
    """Parse a label selector (``a=b,c!=d,e,!f,g in (x,y),h notin (z)``) into a predicate."""
    checks = [_label_term(term) for term in _split_selector(text or '')]
    return lambda labels: all(check(labels) for check in checks)


def _label_term(term: str) -> Callable[[Mapping[str, str]], bool]:
    if m := re.fullmatch(r'(\S+)\s+(in|notin)\s+\((.*)\)', term):
        key, negate, values = m.group(1), m.group(2) == 'notin', {v.strip() for v in m.group(3).split(',')}
        return lambda labels: (labels.get(key) in values) != negate
    if '!=' in term:
        key, value = (part.strip() for part in term.split('!=', 1))
        return lambda labels: labels.get(key) != value
    if '=' in term:
        key, value = (part.strip() for part in term.replace('==', '=').split('=', 1))
        return lambda labels: labels.get(key) == value
    if term.startswith('!'):
        absent = term[1:].strip()
        return lambda labels: absent not in labels
    return lambda labels: term in labels


def field_selector(text: str | None) -> Callable[[Mapping[str, Any]], bool]:
    """Parse a field selector (``metadata.name=x,status.phase!=Done``) into a predicate."""
    checks: list[Callable[[Mapping[str, Any]], bool]] = []
    for term in _split_selector(text or ''):
        negate = '!=' in term
        key, value = (s.strip() for s in re.split(r'!=|==|=', term, maxsplit=1))
        path = tuple(f'f:{part}' for part in key.split('.'))

        def check(obj: Mapping[str, Any], p: FieldPath = path, v: str = value, neg: bool = negate) -> bool:
            found = value_at(obj, p)
            actual = '' if found is _MISSING else str(found).lower() if isinstance(found, bool) else str(found)
            return (actual != v) if neg else (actual == v)
        checks.append(check)
    return lambda obj: all(check(obj) for check in checks)


# ----------------------------------------------------------------------------------------------
# Structural schemas of the CRDs: defaulting and pruning.

def apply_schema(schema: Mapping[str, Any], value: Any) -> Any:
    """Fill ``default`` values and prune fields the schema does not know (returns a new value)."""
    if isinstance(value, dict) and schema.get('type', 'object') == 'object':
        props: Mapping[str, Any] = schema.get('properties') or {}
        additional = schema.get('additionalProperties')
        preserve = schema.get('x-kubernetes-preserve-unknown-fields', False)
        out: Body = {}
        for key, sub in value.items():
            if key in props:
                out[key] = apply_schema(props[key], sub)
            elif isinstance(additional, dict):
                out[key] = apply_schema(additional, sub)
            elif preserve or additional is True:
                out[key] = copy.deepcopy(sub)
        for key, sub in props.items():
            if key not in out and 'default' in sub:
                out[key] = apply_schema(sub, copy.deepcopy(sub['default']))
        return out
    if isinstance(value, list) and isinstance(schema.get('items'), dict):
        return [apply_schema(schema['items'], item) for item in value]
    return copy.deepcopy(value)


def _apply_crd_schema(schema: Mapping[str, Any], obj: Body) -> Body:
    out: Body = {}
    props: Mapping[str, Any] = schema.get('properties') or {}
    for key, value in obj.items():
        if key in ('apiVersion', 'kind', 'metadata'):
            out[key] = value
        elif key in props:
            out[key] = apply_schema(props[key], value)
        elif schema.get('x-kubernetes-preserve-unknown-fields'):
            out[key] = value
    for key, sub in props.items():
        if key not in out and key not in ('apiVersion', 'kind', 'metadata') and 'default' in sub:
            out[key] = apply_schema(sub, copy.deepcopy(sub['default']))
    return out


# ----------------------------------------------------------------------------------------------
# Watches.

@attrs.define(eq=False)
class _Watch:
    resource: kmock.resource
    namespace: str | None
    name: str | None
    labels: Callable[[Mapping[str, str]], bool]
    fields: Callable[[Mapping[str, Any]], bool]
    queue: asyncio.Queue[Body | None] = attrs.field(factory=asyncio.Queue)

    def sees(self, obj: Body | None) -> bool:
        if obj is None:
            return False
        meta = _meta(obj)
        return bool((self.namespace is None or meta.get('namespace') == self.namespace)
                    and (self.name is None or meta.get('name') == self.name)
                    and self.labels(meta.get('labels') or {}) and self.fields(obj))

    def translate(self, kind: str, old: Body | None, new: Body) -> Body | None:
        """The event this watch sees, given the object's state before and after."""
        if kind == 'MODIFIED':
            was, now = self.sees(old), self.sees(new)
            if was and not now:
                return {'type': 'DELETED', 'object': new}
            if now and not was:
                return {'type': 'ADDED', 'object': new}
            return {'type': 'MODIFIED', 'object': new} if now else None
        return {'type': kind, 'object': new} if self.sees(new) else None


@attrs.define(kw_only=True)
class Emulator(kmock.KubernetesEmulator):
    """kmock's KubernetesEmulator with the API server's semantics (see the module docstring)."""

    crd_dir: Path | None = CRD_DIR
    collect_dangling: bool = True
    validate: bool = True
    _rv: int = attrs.field(default=100, init=False)
    _uids: dict[str, tuple[kmock.resource, str | None, str]] = attrs.field(factory=dict, init=False)
    _scales: dict[kmock.resource, ScalePaths] = attrs.field(factory=dict, init=False)
    _schemas: dict[kmock.resource, Body] = attrs.field(factory=dict, init=False)
    _validators: dict[kmock.resource, Any] = attrs.field(factory=dict, init=False)
    _custom: set[kmock.resource] = attrs.field(factory=set, init=False)
    _builtin_reactions: int = attrs.field(default=0, init=False)
    _owners: dict[tuple[kmock.resource, str | None, str], set[str]] = attrs.field(factory=dict, init=False)
    _dependents: dict[str, set[tuple[kmock.resource, str | None, str]]] = attrs.field(factory=dict, init=False)
    _events: list[tuple[int, kmock.resource, str, Body | None, Body]] = attrs.field(factory=list, init=False)
    _compacted: int = attrs.field(default=0, init=False)
    _watches: set[_Watch] = attrs.field(factory=set, init=False)
    _writes: list[tuple[float, Write]] = attrs.field(factory=list, init=False)
    _emitted: list[tuple[float, Emitted]] = attrs.field(factory=list, init=False)

    def __attrs_post_init__(self) -> None:
        # The scaffold serves discovery; the stock emulator's naive object handlers are replaced.
        k8s.KubernetesScaffold.__attrs_post_init__(self)
        self.fallback[self._is_object_request] << self._serve
        self._builtin_reactions = len(self._payloads)
        bundled = kmock.ResourcesArray()
        with warnings.catch_warnings():  # kmock reads its bundle with a deprecated importlib call
            warnings.simplefilter('ignore', DeprecationWarning)
            bundled.load_bundled()
        for name in DEFAULT_RESOURCES:
            self.register(name, bundled[name])
        for name, info in DOCKYARD_RESOURCES.items():
            self.register(name, info)
            self._custom.add(kmock.resource(name))
        for name, paths in SCALE_PATHS.items():
            self._scales[kmock.resource(name)] = paths
        self._load_crds()
        self.seed({'apiVersion': 'v1', 'kind': 'Namespace', 'metadata': {'name': 'default'}})

    # -- public surface for tests ---------------------------------------------------------------

    def register(self, name: str, info: kmock.ResourceInfo, *, scale: ScalePaths | None = None,
                 schema: Body | None = None) -> None:
        """Serve one more resource (``group/version/plural`` or ``v1/plural``)."""
        res = kmock.resource(name)
        self.resources[res] = copy.deepcopy(info)
        if scale is not None:
            self._scales[res] = scale
        if schema is not None:
            self._schemas[res] = schema

    def seed(self, obj: Body) -> Body:
        """Store an object directly, status included, with full metadata and watch events."""
        res, info = self.resource_for(obj['apiVersion'], obj['kind'])
        created = self._create(res, info, obj, namespace=_meta(obj).get('namespace'), manager='seed',
                               dry_run=False)
        if 'status' in obj and 'status' in info.subresources:
            created = self._commit(res, info, created, {**created, 'status': copy.deepcopy(obj['status'])},
                                   manager='seed', subresource='status', dry_run=False)
        return created

    def resource_for(self, api_version: str, kind: str) -> tuple[kmock.resource, kmock.ResourceInfo]:
        group, _, version = api_version.rpartition('/')
        for res in self.resources:
            info = self.resources[res]
            if res.group == group and res.version == version and info.kind == kind:
                return res, info
        raise LookupError(f'no resource is registered for {api_version} {kind}')

    def writes(self, since: float = 0.0) -> list[Write]:
        """The POST/PUT/PATCH/DELETE requests received after a ``time.monotonic()`` mark."""
        return [write for at, write in self._writes if at > since]

    def emitted(self, since: float = 0.0) -> list[Emitted]:
        """The watch events the server produced after a ``time.monotonic()`` mark."""
        return [event for at, event in self._emitted if at > since]

    @property
    def resource_version(self) -> str:
        return str(self._rv)

    def live(self, resource: str | kmock.resource, namespace: str | None, name: str) -> Body | None:
        """The stored object (read-only by convention), or None."""
        return self._live((kmock.resource(resource), namespace, name))

    def compact(self) -> None:
        """Forget the event history, as etcd compaction does: older watch versions get 410 Gone."""
        self._compacted = self._rv
        self._events.clear()

    def close_watches(self) -> None:
        """End every open watch stream (before the server shuts down)."""
        for watch in list(self._watches):
            watch.queue.put_nowait(None)

    @contextlib.asynccontextmanager
    async def serving(self) -> AsyncIterator[Emulator]:
        """Serve on a free port of 127.0.0.1 until the block ends, then close all streams."""
        async with self, apps.Server(self, host='127.0.0.1'):
            try:
                yield self
            finally:
                self.close_watches()

    # -- plumbing -------------------------------------------------------------------------------

    async def __call__(self, raw_request: Any) -> Any:
        # kmock's path parser cannot read the namespaces resource itself (/api/v1/namespaces[/NAME]):
        # it takes every "namespaces/X" for a namespace prefix. Such requests are parsed here.
        match = NAMESPACES_PATH.fullmatch(raw_request.path)
        if match is None:
            return await super().__call__(raw_request)
        body: bytes = await raw_request.read()
        text = body.decode(errors='replace')
        try:
            data = json.loads(text) if text else None
        except ValueError:
            data = None
        request = rendering.Request(
            id=len(self._requests), raw_request=raw_request, url=raw_request.url, method=raw_request.method,
            params=dict(raw_request.query), headers=dict(raw_request.headers),
            cookies=dict(raw_request.cookies), data=data, body=body, text=text,
            resource=kmock.resource('', 'v1', 'namespaces'), namespace=None,
            name=match.group('name'), subresource=match.group('sub'),
        )
        self._requests.append(request)
        try:
            return await self._handle(request)
        except Exception as exc:
            return await self._render_error(exc)

    async def _handle(self, request: rendering.Request) -> Any:
        if request.method.value in WRITE_METHODS:
            self._writes.append((time.monotonic(), Write(request.method.value, request.url.path)))
        # With no reactions added by the test, object requests skip kmock's matching, which
        # re-filters every request ever received and turns long tests and benchmarks quadratic.
        if len(self._payloads) <= self._builtin_reactions and self._is_object_request(request):
            response = await self._serve(request)
            return await response(request)
        # Bypass KubernetesEmulator._handle: its merge-everything bookkeeping is replaced by _serve.
        return await apps.RawHandler._handle(self, request)

    def _is_object_request(self, request: rendering.Request) -> bool:
        return request.resource is not None and request.resource.plural is not None

    def _load_crds(self) -> None:
        if self.crd_dir is None or not self.crd_dir.is_dir():
            return
        for path in sorted(self.crd_dir.glob('*.yaml')):
            for doc in yaml.safe_load_all(path.read_text()):
                if not isinstance(doc, dict) or doc.get('kind') != 'CustomResourceDefinition':
                    continue
                spec = doc['spec']
                for version in spec.get('versions', []):
                    res = kmock.resource(spec['group'], version['name'], spec['names']['plural'])
                    subresources = version.get('subresources') or {}
                    info = kmock.ResourceInfo(
                        kind=spec['names']['kind'], singular=spec['names'].get('singular'),
                        namespaced=spec.get('scope') == 'Namespaced',
                        shortnames=spec['names'].get('shortNames', []),
                        categories=spec['names'].get('categories', []),
                        subresources=set(subresources),
                        verbs={'create', 'delete', 'deletecollection', 'get', 'list', 'patch', 'update',
                               'watch'},
                    )
                    self.resources[res] = info
                    self._custom.add(res)
                    if 'scale' in subresources:
                        scale = subresources['scale']
                        self._scales[res] = ScalePaths(
                            tuple(scale['specReplicasPath'].lstrip('.').split('.')),
                            tuple(scale['statusReplicasPath'].lstrip('.').split('.')),
                            tuple(scale['labelSelectorPath'].lstrip('.').split('.'))
                            if scale.get('labelSelectorPath') else None,
                        )
                    schema = (version.get('schema') or {}).get('openAPIV3Schema')
                    if schema:
                        self._schemas[res] = schema
                self.seed(doc)

    def _live(self, key: tuple[kmock.resource, str | None, str]) -> Body | None:
        if key not in self.objects:
            return None
        obj = self.objects[key]
        return None if obj.deleted else obj.raw

    def _store(self, key: tuple[kmock.resource, str | None, str], body: Body) -> None:
        self._index_owners(key, {ref.get('uid') for ref in _meta(body).get('ownerReferences') or []})
        if key not in self.objects:
            self.objects[key] = body
        elif self.objects[key].deleted:
            self.objects[key].create(body)
        else:
            self.objects[key].history.append(body)

    def _index_owners(self, key: tuple[kmock.resource, str | None, str], uids: set[str]) -> None:
        """Keep the owner-uid -> dependents index (for garbage collection) in step with the store."""
        previous = self._owners.pop(key, set())
        for uid in previous - uids:
            self._dependents.get(uid, set()).discard(key)
        for uid in uids:
            self._dependents.setdefault(uid, set()).add(key)
        if uids:
            self._owners[key] = uids

    def _next_rv(self) -> str:
        self._rv += 1
        return str(self._rv)

    def _emit(self, res: kmock.resource, kind: str, old: Body | None, new: Body) -> None:
        meta = _meta(new)
        self._events.append((int(meta['resourceVersion']), res, kind, old, new))
        self._emitted.append((time.monotonic(), Emitted(kind, _res_id(res), meta.get('namespace'),
                                                        meta['name'], meta['resourceVersion'])))
        for watch in self._watches:
            if watch.resource == res and (event := watch.translate(kind, old, new)) is not None:
                watch.queue.put_nowait(event)

    # -- request dispatch -----------------------------------------------------------------------

    async def _serve(self, request: rendering.Request) -> rendering.Response:
        try:
            status, payload = self._dispatch(request)
        except _Failure as failure:
            return rendering.Response(status=failure.code, payload=failure.status)
        if isinstance(payload, AsyncIterator):  # a watch stream: JSON lines
            return rendering.Response(status=status, payload=payload, headers={'Content-Type': 'application/json'})
        return rendering.Response(status=status, payload=payload)

    def _dispatch(self, request: rendering.Request) -> tuple[int, Any]:
        res = request.resource
        assert res is not None
        if res not in self.resources:
            raise _Failure(404, 'NotFound', 'the server could not find the requested resource')
        info = self.resources[res]
        ns, name, sub = request.namespace, request.name, request.subresource
        if info.namespaced is False and ns is not None:
            raise _Failure(404, 'NotFound', f'{_qualified(res)} is not namespaced')
        if sub is not None and sub not in info.subresources:
            raise _Failure(404, 'NotFound', 'the server could not find the requested resource')
        method = request.method.value
        params = request.params
        dry_run = params.get('dryRun') == 'All'
        manager = params.get('fieldManager') or request.headers.get('User-Agent', 'unknown').split('/')[0]
        verb = ('watch' if method == 'GET' and _flag(params, 'watch') else
                {'GET': 'get', 'POST': 'create', 'PUT': 'update', 'PATCH': 'patch', 'DELETE': 'delete'}.get(method))
        verb = {'get': 'list', 'delete': 'deletecollection'}.get(verb or '', verb) if name is None else verb
        if sub is None and info.verbs and verb not in info.verbs:
            raise _Failure(405, 'MethodNotAllowed', f'the server does not allow this method on the requested '
                                                    f'resource: {method} {request.url.path}')

        if method == 'GET' and _flag(params, 'watch'):
            return 200, self._watch(res, info, ns, name, params, request)
        if method == 'GET' and name is None:
            return 200, self._list(res, info, ns, params)
        if method == 'GET' and name is not None:
            obj = self._require(res, ns, name)
            return 200, self._scale_of(res, obj) if sub == 'scale' else obj
        if method == 'POST' and name is None:
            body = self._body(request)
            return 201, self._create(res, info, body, namespace=ns, manager=manager, dry_run=dry_run)
        if method == 'PUT' and name is not None:
            return 200, self._update(res, info, ns, name, sub, self._body(request),
                                     manager=manager, dry_run=dry_run)
        if method == 'PATCH' and name is not None:
            return self._patch(request, res, info, ns, name, sub, manager=manager, dry_run=dry_run)
        if method == 'DELETE' and name is not None and sub is None:
            options = self._options(request)
            return 200, self._delete(res, ns, name, options, dry_run=dry_run)
        if method == 'DELETE' and name is None:
            return 200, self._delete_collection(res, info, ns, request, dry_run=dry_run)
        raise _Failure(405, 'MethodNotAllowed', f'the server does not allow this method on the requested '
                                                f'resource: {method} {request.url.path}')

    def _body(self, request: rendering.Request, *, yaml_ok: bool = False) -> Any:
        yaml_ok = yaml_ok or 'yaml' in request.headers.get('Content-Type', '')
        text = request.body.decode() or 'null'
        try:
            try:
                return json.loads(text)  # JSON is YAML too, and much faster to parse
            except ValueError:
                if not yaml_ok:
                    raise
            return yaml.load(text, Loader=getattr(yaml, 'CSafeLoader', yaml.SafeLoader))
        except (ValueError, yaml.YAMLError) as exc:
            raise _Failure(400, 'BadRequest', f'the body of the request could not be decoded: {exc}') from None

    def _options(self, request: rendering.Request) -> Body:
        options = self._body(request) if request.body.strip() else {}
        options = options if isinstance(options, dict) else {}
        if 'propagationPolicy' in request.params:
            options['propagationPolicy'] = request.params['propagationPolicy']
        return options

    def _require(self, res: kmock.resource, ns: str | None, name: str) -> Body:
        obj = self._live((res, ns, name))
        if obj is None:
            raise _Failure(404, 'NotFound', f'{_qualified(res)} "{name}" not found',
                           {'name': name, 'group': res.group, 'kind': res.plural})
        return obj

    # -- reads ----------------------------------------------------------------------------------

    def _select(self, res: kmock.resource, ns: str | None, params: Mapping[str, str]) -> list[Body]:
        labels, fields = label_selector(params.get('labelSelector')), field_selector(params.get('fieldSelector'))
        found = []
        for (r, obj_ns, _), obj in self.objects.items():
            if r == res and not obj.deleted and (ns is None or obj_ns == ns):
                body = obj.raw
                if labels(_meta(body).get('labels') or {}) and fields(body):
                    found.append(body)
        return sorted(found, key=lambda b: (_meta(b).get('namespace') or '', _meta(b)['name']))

    def _list(self, res: kmock.resource, info: kmock.ResourceInfo, ns: str | None,
              params: Mapping[str, str]) -> Body:
        items, rv, token = self._select(res, ns, params), str(self._rv), params.get('continue')
        if token:
            rv, after = json.loads(base64.urlsafe_b64decode(token))
            items = [item for item in items if [_meta(item).get('namespace') or '', _meta(item)['name']] > after]
        meta: Body = {'resourceVersion': rv}
        limit = int(params.get('limit') or 0)
        if limit and len(items) > limit:
            last = items[limit - 1]
            after = [_meta(last).get('namespace') or '', _meta(last)['name']]
            meta['continue'] = base64.urlsafe_b64encode(json.dumps([rv, after]).encode()).decode()
            meta['remainingItemCount'] = len(items) - limit
            items = items[:limit]
        api_version = f'{res.group}/{res.version}' if res.group else str(res.version)
        return {'apiVersion': api_version, 'kind': f'{info.kind}List', 'metadata': meta, 'items': items}

    def _watch(self, res: kmock.resource, info: kmock.ResourceInfo, ns: str | None, name: str | None,
               params: Mapping[str, str], request: rendering.Request) -> AsyncIterator[Any]:
        # Snapshot and subscription happen together, so no event falls between them.
        watch = _Watch(res, ns, name, label_selector(params.get('labelSelector')),
                       field_selector(params.get('fieldSelector')))
        since = params.get('resourceVersion') or ''
        initial: list[Body] = []
        if since in ('', '0') or _flag(params, 'sendInitialEvents'):
            initial = [{'type': 'ADDED', 'object': obj} for obj in self._select(res, ns, {}) if watch.sees(obj)]
            if _flag(params, 'sendInitialEvents'):
                api_version = f'{res.group}/{res.version}' if res.group else str(res.version)
                initial.append({'type': 'BOOKMARK', 'object': {
                    'apiVersion': api_version, 'kind': info.kind,
                    'metadata': {'resourceVersion': str(self._rv),
                                 'annotations': {'k8s.io/initial-events-end': 'true'}}}})
        elif not since.isdigit():
            raise _Failure(400, 'BadRequest', f'invalid resource version: {since!r}')
        elif int(since) < self._compacted:
            expired = _Failure(410, 'Expired', f'too old resource version: {since} ({self._compacted})')
            return self._stream(watch, [{'type': 'ERROR', 'object': expired.status}], request, 0.0)
        else:
            for rv, r, kind, old, new in self._events:
                if rv > int(since) and r == res and (event := watch.translate(kind, old, new)) is not None:
                    initial.append(event)
        self._watches.add(watch)
        timeout = float(params['timeoutSeconds']) if params.get('timeoutSeconds') else None
        return self._stream(watch, initial, request, timeout)

    async def _stream(self, watch: _Watch, initial: list[Body], request: rendering.Request,
                      seconds: float | None) -> AsyncIterator[Any]:
        loop = asyncio.get_running_loop()
        deadline = None if seconds is None else loop.time() + seconds
        try:
            yield b''  # send the headers now: clients wait for them before anything happens
            for event in initial:
                yield event
            while True:
                wait = 1.0 if deadline is None else min(1.0, deadline - loop.time())
                if wait <= 0:
                    return
                try:
                    live_event = await asyncio.wait_for(watch.queue.get(), wait)
                except TimeoutError:
                    transport = request._raw_request.transport if request._raw_request else None
                    if transport is None or transport.is_closing():
                        return  # the client went away
                    continue
                if live_event is None:
                    return
                yield live_event
        finally:
            self._watches.discard(watch)

    def _scale_of(self, res: kmock.resource, obj: Body) -> Body:
        paths = self._scales.get(res)
        if paths is None:
            raise _Failure(404, 'NotFound', 'the server could not find the requested resource')
        meta = _meta(obj)
        replicas = value_at(obj, tuple(f'f:{p}' for p in paths.spec_replicas))
        current = value_at(obj, tuple(f'f:{p}' for p in paths.status_replicas))
        if paths.selector is None:
            labels = value_at(obj, ('f:spec', 'f:selector', 'f:matchLabels'))
            selector = ','.join(f'{k}={v}' for k, v in sorted(labels.items())) if isinstance(labels, dict) else ''
        else:
            found = value_at(obj, tuple(f'f:{p}' for p in paths.selector))
            selector = '' if found is _MISSING else found
        status: Body = {'replicas': 0 if current is _MISSING else current}
        if selector:
            status['selector'] = selector
        return {
            'apiVersion': 'autoscaling/v1', 'kind': 'Scale',
            'metadata': {key: meta[key] for key in ('name', 'namespace', 'uid', 'resourceVersion',
                                                    'creationTimestamp') if key in meta},
            'spec': {'replicas': 0 if replicas is _MISSING else replicas},
            'status': status,
        }

    # -- writes ---------------------------------------------------------------------------------

    def _create(self, res: kmock.resource, info: kmock.ResourceInfo, obj: Any, *, namespace: str | None,
                manager: str, dry_run: bool, managed: list[Body] | None = None) -> Body:
        if not isinstance(obj, dict):
            raise _Failure(400, 'BadRequest', 'the body must be an object')
        body: Body = copy.deepcopy(obj)
        api_version = f'{res.group}/{res.version}' if res.group else str(res.version)
        if body.get('kind', info.kind) != info.kind or body.get('apiVersion', api_version) != api_version:
            raise _Failure(400, 'BadRequest', f'the API version in the data ({body.get("apiVersion")}) and the '
                                              f'kind ({body.get("kind")}) do not match {api_version} {info.kind}')
        body['apiVersion'], body['kind'] = api_version, info.kind
        meta = body['metadata'] = dict(_meta(body))
        if info.namespaced:
            if namespace is not None and meta.get('namespace', namespace) != namespace:
                raise _Failure(400, 'BadRequest', 'the namespace of the provided object does not match the '
                                                  'namespace sent on the request')
            meta['namespace'] = namespace or meta.get('namespace') or 'default'
        else:
            meta.pop('namespace', None)
        if not meta.get('name') and meta.get('generateName'):
            suffix = ''.join(random.choices(string.ascii_lowercase + string.digits, k=5))
            meta['name'] = f'{meta["generateName"]}{suffix}'
        name = meta.get('name')
        if not name:
            raise _Failure(422, 'Invalid', f'{info.kind} "" is invalid: metadata.name: Required value: name or '
                                           f'generateName is required')
        if len(name) > 253 or not NAME_RE.match(name):
            raise _Failure(422, 'Invalid', f'{info.kind} "{name}" is invalid: metadata.name: Invalid value: '
                                           f'"{name}": a lowercase RFC 1123 subdomain must consist of lower case '
                                           f'alphanumeric characters, \'-\' or \'.\'',
                           {'name': name, 'kind': info.kind, 'causes': [{'field': 'metadata.name'}]})
        key = (res, meta.get('namespace'), name)
        home = self._live((NAMESPACES, None, meta['namespace'])) if info.namespaced else None
        if home is not None and _meta(home).get('deletionTimestamp'):
            raise _Failure(403, 'Forbidden', f'{_qualified(res)} "{name}" is forbidden: unable to create new '
                                             f'content in namespace {meta["namespace"]} because it is being '
                                             f'terminated', {'name': name, 'group': res.group, 'kind': res.plural})
        if self._live(key) is not None:
            raise _Failure(409, 'AlreadyExists', f'{_qualified(res)} "{name}" already exists',
                           {'name': name, 'group': res.group, 'kind': res.plural})
        for field in SERVER_METADATA:
            meta.pop(field, None)
        if 'status' in info.subresources:
            body.pop('status', None)
        if res == NAMESPACES:
            body['spec'] = {'finalizers': ['kubernetes'], **(body.get('spec') or {})}
            body['status'] = {'phase': 'Active'}
        if res in self._schemas:
            body = _apply_crd_schema(self._schemas[res], body)
            self._admit(res, info, name, body, None)
        meta = body['metadata']
        meta['uid'] = str(uuid.uuid4())
        meta['creationTimestamp'] = _now()
        meta['generation'] = 1
        if managed is None:
            paths = self._owned_paths(info, body, None)
            managed = [self._entry(manager, 'Update', api_version, paths, None)] if paths else []
        if managed:
            meta['managedFields'] = managed
        meta['resourceVersion'] = str(self._rv + 1) if dry_run else self._next_rv()
        if dry_run:
            return body
        self._store(key, body)
        self._uids[meta['uid']] = key
        self._emit(res, 'ADDED', None, body)
        self._collect_if_dangling(res, key, body)
        return body

    def _update(self, res: kmock.resource, info: kmock.ResourceInfo, ns: str | None, name: str,
                sub: str | None, body: Any, *, manager: str, dry_run: bool) -> Body:
        live = self._require(res, ns, name)
        if not isinstance(body, dict):
            raise _Failure(400, 'BadRequest', 'the body must be an object')
        rv = _meta(body).get('resourceVersion')
        if not rv:
            raise _Failure(422, 'Invalid', f'{info.kind} "{name}" is invalid: metadata.resourceVersion: Invalid '
                                           f'value: 0x0: must be specified for an update')
        if sub == 'scale':
            return self._write_scale(res, info, live, body, manager=manager, dry_run=dry_run)
        self._check_version(res, live, body)
        if _meta(body).get('name', name) != name:
            raise _Failure(400, 'BadRequest', 'the name of the object does not match the name on the URL')
        return self._commit(res, info, live, self._compose(info, live, body, sub), manager=manager,
                            subresource=sub, dry_run=dry_run)

    def _patch(self, request: rendering.Request, res: kmock.resource, info: kmock.ResourceInfo,
               ns: str | None, name: str, sub: str | None, *, manager: str, dry_run: bool) -> tuple[int, Body]:
        ctype = request.headers.get('Content-Type', '').split(';')[0].strip().lower()
        if ctype == 'application/apply-patch+yaml':
            return self._apply(request, res, info, ns, name, sub, dry_run=dry_run)
        live = self._require(res, ns, name)
        target = self._scale_of(res, live) if sub == 'scale' else live
        body = self._body(request)
        if ctype == 'application/json-patch+json':
            patched = json_patch(target, body)
        elif ctype == 'application/merge-patch+json':
            patched = merge_patch(target, body)
        elif ctype == 'application/strategic-merge-patch+json':
            if res in self._custom:
                raise _Failure(415, 'UnsupportedMediaType', 'strategic merge patch is not supported for '
                                                            'custom resources')
            patched = strategic_merge_patch(target, body)
        else:
            raise _Failure(415, 'UnsupportedMediaType', 'the body of the request was in an unknown format - '
                                                        'accepted media types include: application/json-patch+json, '
                                                        'application/merge-patch+json, '
                                                        'application/apply-patch+yaml')
        if not isinstance(patched, dict):
            raise _Failure(422, 'Invalid', 'the patched object is not an object')
        if isinstance(body, dict):  # a precondition carried in a merge patch
            self._check_version(res, live, body)
        if sub == 'scale':
            return 200, self._write_scale(res, info, live, patched, manager=manager, dry_run=dry_run)
        return 200, self._commit(res, info, live, self._compose(info, live, patched, sub), manager=manager,
                                 subresource=sub, dry_run=dry_run)

    def _check_version(self, res: kmock.resource, live: Body, body: Body) -> None:
        rv = _meta(body).get('resourceVersion')
        if rv and rv != _meta(live)['resourceVersion']:
            name = _meta(live)['name']
            raise _Failure(409, 'Conflict', f'Operation cannot be fulfilled on {_qualified(res)} "{name}": the '
                                            f'object has been modified; please apply your changes to the latest '
                                            f'version and try again',
                           {'name': name, 'group': res.group, 'kind': res.plural})

    def _compose(self, info: kmock.ResourceInfo, live: Body, body: Body, sub: str | None) -> Body:
        """The object a full-body write (PUT or a patched body) asks for, server fields kept."""
        if sub == 'status':
            new = copy.deepcopy(live)
            if 'status' in body:
                new['status'] = copy.deepcopy(body['status'])
            else:
                new.pop('status', None)
            return new
        new = copy.deepcopy(body)
        new['apiVersion'], new['kind'] = live['apiVersion'], live['kind']
        meta = new['metadata'] = dict(_meta(new))
        for field in (*SERVER_METADATA, 'name', 'namespace'):
            meta.pop(field, None)
            if field in live['metadata']:
                meta[field] = live['metadata'][field]
        if 'status' in info.subresources:
            new.pop('status', None)
            if 'status' in live:
                new['status'] = copy.deepcopy(live['status'])
        return new

    def _write_scale(self, res: kmock.resource, info: kmock.ResourceInfo, live: Body, scale: Body, *,
                     manager: str, dry_run: bool) -> Body:
        self._check_version(res, live, scale)
        replicas = value_at(scale, ('f:spec', 'f:replicas'))
        if not isinstance(replicas, int) or isinstance(replicas, bool) or replicas < 0:
            raise _Failure(422, 'Invalid', f'Scale "{_meta(live)["name"]}" is invalid: spec.replicas: Invalid '
                                           f'value: {replicas!r}: must be a non-negative integer')
        paths = self._scales[res]
        new = copy.deepcopy(live)
        node = new
        for part in paths.spec_replicas[:-1]:
            node = node.setdefault(part, {})
        node[paths.spec_replicas[-1]] = replicas
        return self._scale_of(res, self._commit(res, info, live, new, manager=manager, subresource='scale',
                                                dry_run=dry_run))

    # -- server-side apply ----------------------------------------------------------------------

    def _apply(self, request: rendering.Request, res: kmock.resource, info: kmock.ResourceInfo,
               ns: str | None, name: str, sub: str | None, *, dry_run: bool) -> tuple[int, Body]:
        manager = request.params.get('fieldManager')
        if not manager:
            raise _Failure(400, 'BadRequest', 'PATCH, application/apply-patch+yaml requires fieldManager to be '
                                              'set')
        force = _flag(request.params, 'force')
        applied = self._body(request, yaml_ok=True)
        if not isinstance(applied, dict):
            raise _Failure(400, 'BadRequest', 'the applied configuration must be an object')
        if not applied.get('apiVersion') or not applied.get('kind'):
            raise _Failure(400, 'BadRequest', 'apiVersion and kind must be set in an applied configuration')
        meta = _meta(applied)
        if meta.get('name', name) != name:
            raise _Failure(400, 'BadRequest', 'the name of the object does not match the name on the URL')
        if sub == 'scale':
            raise _Failure(415, 'UnsupportedMediaType', 'apply is not supported on the scale subresource')
        api_version = f'{res.group}/{res.version}' if res.group else str(res.version)
        if (applied['apiVersion'], applied['kind']) != (api_version, info.kind):
            raise _Failure(400, 'BadRequest', f'the applied {applied["apiVersion"]} {applied["kind"]} does not '
                                              f'match the resource {api_version} {info.kind}')
        if info.namespaced and meta.get('namespace', ns) != ns:
            raise _Failure(400, 'BadRequest', 'the namespace of the provided object does not match the '
                                              'namespace sent on the request')
        applied = _drop_nulls(applied)
        if sub == 'status':
            applied = {'apiVersion': applied['apiVersion'], 'kind': applied['kind'],
                       'metadata': {'name': name}, 'status': applied.get('status', {})}
        elif 'status' in info.subresources:
            applied.pop('status', None)
        live = self._live((res, ns, name))
        api_version = applied['apiVersion']
        if live is None:
            if sub is not None:
                raise _Failure(404, 'NotFound', f'{_qualified(res)} "{name}" not found',
                               {'name': name, 'group': res.group, 'kind': res.plural})
            body = {**applied, 'metadata': {**_meta(applied), 'name': name}}
            entry = self._entry(manager, 'Apply', api_version, self._owned_paths(info, applied, None), None)
            return 201, self._create(res, info, body, namespace=ns, manager=manager, dry_run=dry_run,
                                     managed=[entry])
        self._check_version(res, live, applied)

        entries = [dict(entry) for entry in _meta(live).get('managedFields', [])]
        mine_index = next((i for i, e in enumerate(entries) if e['manager'] == manager
                           and e['operation'] == 'Apply' and e.get('subresource') == sub), None)
        previous = fields_from_v1(entries[mine_index]['fieldsV1']) if mine_index is not None else set()
        applying = self._owned_paths(info, applied, sub)

        candidate = apply_merge(live, {k: v for k, v in applied.items() if k not in ('apiVersion', 'kind')})
        candidate['metadata'] = {**candidate['metadata'],
                                 **{k: live['metadata'][k] for k in UNOWNED_METADATA if k in live['metadata']}}
        if res in self._schemas:
            candidate = _apply_crd_schema(self._schemas[res], candidate)

        # Conflicts: fields other managers own whose value this apply would change.
        others = [(i, e, fields_from_v1(e['fieldsV1'])) for i, e in enumerate(entries) if i != mine_index]
        conflicts: list[tuple[int, FieldPath]] = []
        for index, _, owned in others:
            for path in owned:
                if any(_overlaps(path, mine) for mine in applying) and \
                        value_at(live, path) != value_at(candidate, path):
                    conflicts.append((index, path))
        if conflicts and not force:
            causes = [{'type': 'FieldManagerConflict', 'field': _render_path(path),
                       'message': f'conflict with "{entries[i]["manager"]}"'
                                  + (' using ' + entries[i]['apiVersion'] if entries[i].get('apiVersion') else '')}
                      for i, path in conflicts]
            fields = '\n'.join(f'- {c["message"]}: {c["field"]}' for c in causes)
            raise _Failure(409, 'Conflict', f'Apply failed with {len(causes)} conflict'
                                            f'{"s" if len(causes) > 1 else ""}: {fields}',
                           {'name': name, 'group': res.group, 'kind': res.plural, 'causes': causes})
        taken: dict[int, set[FieldPath]] = {}
        for index, path in conflicts:
            taken.setdefault(index, set()).add(path)

        # Fields this manager applied before and no longer applies go, unless someone else owns them.
        owned_by_others = set().union(*(owned - taken.get(i, set()) for i, _, owned in others)) if others else set()
        for path in sorted(previous - applying, key=len, reverse=True):
            if not any(_overlaps(path, other) for other in owned_by_others):
                remove_at(candidate, path)

        new_entries: list[Body] = []
        for index, entry in enumerate(entries):
            if index == mine_index:
                continue
            if index in taken:
                remaining = fields_from_v1(entry['fieldsV1']) - taken[index]
                if not remaining:
                    continue
                entry = {**entry, 'fieldsV1': fields_to_v1(remaining), 'time': _now()}
            new_entries.append(entry)
        mine = self._entry(manager, 'Apply', api_version, applying, sub)
        if mine_index is not None and fields_from_v1(entries[mine_index]['fieldsV1']) == applying \
                and entries[mine_index].get('apiVersion') == api_version:
            mine = entries[mine_index]  # unchanged, keep its timestamp
        if applying:
            new_entries.insert(mine_index if mine_index is not None else len(new_entries), mine)
        return 200, self._commit(res, info, live, candidate, manager=manager, subresource=sub,
                                 dry_run=dry_run, managed=new_entries)

    def _owned_paths(self, info: kmock.ResourceInfo, obj: Body, sub: str | None) -> set[FieldPath]:
        paths = field_paths(obj)
        if 'status' not in info.subresources:
            return paths
        if sub == 'status':
            return {p for p in paths if p[0] == 'f:status'}
        return {p for p in paths if p[0] != 'f:status'}

    def _entry(self, manager: str, operation: str, api_version: str, paths: set[FieldPath],
               sub: str | None) -> Body:
        entry: Body = {'manager': manager, 'operation': operation, 'apiVersion': api_version,
                       'time': _now(), 'fieldsType': 'FieldsV1', 'fieldsV1': fields_to_v1(paths)}
        if sub is not None:
            entry['subresource'] = sub
        return entry

    # -- the common write path ------------------------------------------------------------------

    def _commit(self, res: kmock.resource, info: kmock.ResourceInfo, live: Body, new: Body, *, manager: str,
                subresource: str | None, dry_run: bool, managed: list[Body] | None = None) -> Body:
        if res in self._schemas:
            new = _apply_crd_schema(self._schemas[res], new)
        old_meta, new_meta = _meta(live), _meta(new)
        name = old_meta['name']
        if old_meta.get('deletionTimestamp'):
            added = set(new_meta.get('finalizers') or []) - set(old_meta.get('finalizers') or [])
            if added:
                raise _Failure(422, 'Invalid', f'{info.kind} "{name}" is invalid: metadata.finalizers: '
                                               f'Forbidden: no new finalizers can be added if the object is '
                                               f'being deleted, found new finalizers {sorted(added)}')
        if managed is None:
            managed = self._track_update(info, live, new, manager, subresource)

        volatile = ('resourceVersion', 'managedFields', 'generation')
        def content(obj: Body) -> Body:
            return {**obj, 'metadata': {k: v for k, v in _meta(obj).items() if k not in volatile}}
        def essence(obj: Body) -> Body:
            skip = {'metadata', 'status'} if 'status' in info.subresources else {'metadata'}
            return {k: v for k, v in obj.items() if k not in skip}
        def ownership(entries: list[Body]) -> list[Body]:
            return [{k: v for k, v in e.items() if k != 'time'} for e in entries]

        if content(live) == content(new) and ownership(old_meta.get('managedFields', [])) == ownership(managed):
            return live  # a no-op: no new resourceVersion, no event
        if res in self._schemas:
            self._admit(res, info, name, new, live, spec_changed=essence(live) != essence(new))
        new = {**new, 'metadata': dict(new_meta)}
        meta = new['metadata']
        meta['generation'] = old_meta.get('generation', 1) + (essence(live) != essence(new))
        if managed:
            meta['managedFields'] = managed
        else:
            meta.pop('managedFields', None)
        if dry_run:
            meta['resourceVersion'] = str(self._rv + 1)
            return new
        meta['resourceVersion'] = self._next_rv()
        key = (res, meta.get('namespace'), name)
        if meta.get('deletionTimestamp') and not meta.get('finalizers'):
            self._store(key, new)
            self._erase(res, key, new, orphan=False)
            return new
        self._store(key, new)
        self._emit(res, 'MODIFIED', live, new)
        self._collect_if_dangling(res, key, new)
        return new

    def _admit(self, res: kmock.resource, info: kmock.ResourceInfo, name: str, new: Body, old: Body | None, *,
               spec_changed: bool = True) -> None:
        """Validate a custom resource against its CRD: the schema always, the CEL rules on spec changes."""
        if not self.validate:
            return
        schema = self._schemas[res]
        if old is None or spec_changed:
            problems = [(v.path, v.message) for v in admission.admit(new, schema, old)]
        else:  # only metadata or status changed: the structural schema (cached) is enough
            if res not in self._validators:
                self._validators[res] = jsonschema.Draft4Validator(admission.to_jsonschema(schema))
            problems = [('.'.join(str(p) for p in error.absolute_path), error.message)
                        for error in self._validators[res].iter_errors(new)]
        if problems:
            causes = [{'reason': 'FieldValueInvalid', 'field': path,
                       'message': message if message == 'Required value' else f'Invalid value: {message}'}
                      for path, message in problems]
            listed = [f'{c["field"]}: {c["message"]}' for c in causes]
            summary = listed[0] if len(listed) == 1 else '[' + ', '.join(listed) + ']'
            raise _Failure(422, 'Invalid', f'{info.kind}.{res.group} "{name}" is invalid: {summary}',
                           {'name': name, 'group': res.group, 'kind': info.kind, 'causes': causes})

    def _track_update(self, info: kmock.ResourceInfo, live: Body, new: Body, manager: str,
                      sub: str | None) -> list[Body]:
        """Ownership after a non-apply write: the writer takes the fields it changed."""
        entries = [dict(e) for e in _meta(live).get('managedFields', [])]
        scope = 'status' if sub == 'status' else None
        before, after = self._owned_paths(info, live, scope), self._owned_paths(info, new, scope)
        changed = {p for p in after if value_at(live, p) != value_at(new, p)}
        removed = before - after
        if not changed and not removed:
            return entries
        result: list[Body] = []
        mine: Body | None = None
        for entry in entries:
            if entry['manager'] == manager and entry['operation'] == 'Update' and entry.get('subresource') == sub:
                mine = entry
                continue
            owned = fields_from_v1(entry['fieldsV1'])
            kept = {p for p in owned if not any(_overlaps(p, c) for c in changed | removed)}
            if kept != owned:
                entry = {**entry, 'fieldsV1': fields_to_v1(kept), 'time': _now()}
            if kept:
                result.append(entry)
        owned = (fields_from_v1(mine['fieldsV1']) if mine else set()) - removed
        owned = {p for p in owned if value_at(new, p) is not _MISSING} | changed
        if owned:
            result.append(self._entry(manager, 'Update', new['apiVersion'], owned, sub))
        return result

    # -- deletion and garbage collection --------------------------------------------------------

    def _delete(self, res: kmock.resource, ns: str | None, name: str, options: Body, *, dry_run: bool) -> Body:
        live = self._require(res, ns, name)
        preconditions = options.get('preconditions') or {}
        meta = _meta(live)
        if (preconditions.get('uid') and preconditions['uid'] != meta['uid']) or \
                (preconditions.get('resourceVersion') and preconditions['resourceVersion'] != meta['resourceVersion']):
            raise _Failure(409, 'Conflict', f'Operation cannot be fulfilled on {_qualified(res)} "{name}": '
                                            f'Precondition failed: {preconditions}',
                           {'name': name, 'group': res.group, 'kind': res.plural})
        if dry_run:
            return live
        return self._remove(res, (res, ns, name), live, orphan=options.get('propagationPolicy') == 'Orphan')

    def _delete_collection(self, res: kmock.resource, info: kmock.ResourceInfo, ns: str | None,
                           request: rendering.Request, *, dry_run: bool) -> Body:
        options = self._options(request)
        deleted = []
        for obj in self._select(res, ns, request.params):
            meta = _meta(obj)
            key = (res, meta.get('namespace'), meta['name'])
            deleted.append(obj if dry_run else self._remove(
                res, key, obj, orphan=options.get('propagationPolicy') == 'Orphan'))
        return self._list(res, info, ns, {}) | {'items': deleted}

    def _remove(self, res: kmock.resource, key: tuple[kmock.resource, str | None, str], live: Body, *,
                orphan: bool) -> Body:
        meta = _meta(live)
        if res == NAMESPACES:
            return self._terminate_namespace(key, live)
        if meta.get('finalizers'):
            if meta.get('deletionTimestamp'):
                return live
            new = {**live, 'metadata': {**meta, 'deletionTimestamp': _now(), 'deletionGracePeriodSeconds': 0,
                                        'resourceVersion': self._next_rv()}}
            self._store(key, new)
            self._emit(res, 'MODIFIED', live, new)
            return new
        final = {**live, 'metadata': {**meta, 'resourceVersion': self._next_rv()}}
        self._erase(res, key, final, orphan=orphan)
        return final

    def _erase(self, res: kmock.resource, key: tuple[kmock.resource, str | None, str], final: Body, *,
               orphan: bool) -> None:
        self.objects[key].delete()
        self._index_owners(key, set())
        uid = _meta(final)['uid']
        self._uids.pop(uid, None)
        self._emit(res, 'DELETED', final, final)
        if not orphan:
            self._collect_garbage(uid)
        if key[1] is not None:
            self._finish_namespace(key[1])

    def _terminate_namespace(self, key: tuple[kmock.resource, str | None, str], live: Body) -> Body:
        """Namespace deletion: Terminating, every object in it deleted, then the namespace itself."""
        if _meta(live).get('deletionTimestamp'):
            return live
        new = copy.deepcopy(live)
        new['metadata'].update(deletionTimestamp=_now(), deletionGracePeriodSeconds=0,
                               resourceVersion=self._next_rv())
        new['status'] = {**(new.get('status') or {}), 'phase': 'Terminating'}
        self._store(key, new)
        self._emit(NAMESPACES, 'MODIFIED', live, new)
        name = key[2]
        for (res, ns, obj_name), obj in list(self.objects.items()):
            if ns == name and not obj.deleted:
                self._remove(res, (res, ns, obj_name), obj.raw, orphan=False)
        self._finish_namespace(name)
        return self._live(key) or new

    def _finish_namespace(self, name: str) -> None:
        key = (NAMESPACES, None, name)
        namespace = self._live(key)
        if namespace is None or not _meta(namespace).get('deletionTimestamp'):
            return
        if any(ns == name and not obj.deleted for (_, ns, _), obj in self.objects.items()):
            return  # objects with finalizers still hold it
        final = {**namespace, 'spec': {**(namespace.get('spec') or {}), 'finalizers': []},
                 'metadata': {**_meta(namespace), 'resourceVersion': self._next_rv()}}
        self._store(key, final)
        self._erase(NAMESPACES, key, final, orphan=False)

    def _owner_exists(self, ref: Mapping[str, Any], dependent: tuple[kmock.resource, str | None, str]) -> bool:
        """Whether an owner reference names a live owner the dependent may have (same namespace or
        cluster-scoped: a reference across namespaces counts as absent, as for the real collector)."""
        owner = self._uids.get(ref.get('uid', ''))
        return owner is not None and owner[1] in (None, dependent[1])

    def _collect_if_dangling(self, res: kmock.resource, key: tuple[kmock.resource, str | None, str],
                             obj: Body) -> None:
        """An object whose every owner is gone is collected, as the garbage collector would."""
        refs = _meta(obj).get('ownerReferences') or []
        if self.collect_dangling and refs and not any(self._owner_exists(ref, key) for ref in refs):
            self._remove(res, key, obj, orphan=False)

    def _collect_garbage(self, uid: str) -> None:
        """Background propagation: dependents of a deleted owner go too (or lose the dangling ref)."""
        for key in sorted(self._dependents.pop(uid, set()), key=lambda k: (_res_id(k[0]), k[1] or '', k[2])):
            live = self._live(key)
            if live is None:
                continue
            res = key[0]
            refs = _meta(live).get('ownerReferences') or []
            others = [ref for ref in refs if ref.get('uid') != uid]
            if any(self._owner_exists(ref, key) for ref in others):
                new = copy.deepcopy(live)
                new['metadata']['ownerReferences'] = others
                self._commit(res, self.resources[res], live, new, manager='generic-garbage-collector',
                             subresource=None, dry_run=False)
            else:
                self._remove(res, key, live, orphan=False)

    # -- discovery ------------------------------------------------------------------------------

    async def _serve_version(self, request: rendering.Request) -> Any:
        # As the scaffold's, but subresources get their own kinds and verbs, as on a real server.
        payload = await super()._serve_version(request)
        assert isinstance(payload, dict)
        for entry in payload.get('resources', []):
            if entry['name'].endswith('/scale'):
                entry.update(kind='Scale', group='autoscaling', version='v1', verbs=['get', 'patch', 'update'])
            elif entry['name'].endswith('/status'):
                entry['verbs'] = ['get', 'patch', 'update']
            entry['verbs'] = sorted(entry['verbs'])
        return payload


# ----------------------------------------------------------------------------------------------
# Test helpers: real HTTP requests against a served emulator.

def _path(emulator: Emulator, resource: str | kmock.resource, namespace: str | None, name: str | None = None,
          subresource: str | None = None) -> str:
    res = kmock.resource(resource)
    base = f'/apis/{res.group}/{res.version}' if res.group else f'/api/{res.version}'
    info = emulator.resources[res] if res in emulator.resources else None
    if namespace is not None and (info is None or info.namespaced is not False):
        base += f'/namespaces/{namespace}'
    base += f'/{res.plural}'
    if name is not None:
        base += f'/{name}'
    if subresource is not None:
        base += f'/{subresource}'
    return base


async def _call(emulator: Emulator, method: str, path: str, *, params: Mapping[str, str] | None = None,
                body: Any = None, content_type: str = 'application/json') -> Any:
    data = None if body is None else body.encode() if isinstance(body, str) else json.dumps(body).encode()
    headers = {'Content-Type': content_type, 'User-Agent': 'dockyard-tests/1'}
    async with emulator.request(method, path, params=params or {}, data=data, headers=headers) as response:
        text = await response.text()
        payload = json.loads(text) if text else None
        if response.status >= 400:
            raise ApiError(response.status, payload)
        return payload


async def create(emulator: Emulator, obj: Body, *, namespace: str | None = None) -> Body:
    """POST an object; its resource is found from apiVersion and kind."""
    res, _ = emulator.resource_for(obj['apiVersion'], obj['kind'])
    namespace = namespace or _meta(obj).get('namespace')
    result: Body = await _call(emulator, 'POST', _path(emulator, res, namespace), body=obj)
    return result


async def get(emulator: Emulator, resource: str, name: str, namespace: str | None = None, *,
              subresource: str | None = None) -> Body | None:
    """GET one object (or its subresource); None when it does not exist."""
    try:
        result: Body = await _call(emulator, 'GET', _path(emulator, resource, namespace, name, subresource))
    except ApiError as exc:
        if exc.status == 404:
            return None
        raise
    return result


async def list_objects(emulator: Emulator, resource: str, namespace: str | None = None, *,
                       label_selector: str | None = None) -> list[Body]:
    params = {'labelSelector': label_selector} if label_selector else {}
    result = await _call(emulator, 'GET', _path(emulator, resource, namespace), params=params)
    items: list[Body] = result['items']
    return items


async def patch(emulator: Emulator, resource: str, name: str, body: Any, namespace: str | None = None, *,
                subresource: str | None = None, content_type: str = 'application/merge-patch+json',
                params: Mapping[str, str] | None = None) -> Body:
    """PATCH an object (merge patch unless another content type is given)."""
    result: Body = await _call(emulator, 'PATCH', _path(emulator, resource, namespace, name, subresource),
                               body=body, content_type=content_type, params=params)
    return result


async def apply(emulator: Emulator, obj: Body, *, manager: str, force: bool = False,
                subresource: str | None = None) -> Body:
    """Server-side apply an object as the given field manager."""
    res, _ = emulator.resource_for(obj['apiVersion'], obj['kind'])
    meta = _meta(obj)
    params = {'fieldManager': manager, **({'force': 'true'} if force else {})}
    return await patch(emulator, _res_id(res), meta['name'], obj, meta.get('namespace'), subresource=subresource,
                       content_type='application/apply-patch+yaml', params=params)


async def delete(emulator: Emulator, resource: str, name: str, namespace: str | None = None, *,
                 propagation_policy: str | None = None) -> Body | None:
    """DELETE an object; None when it did not exist."""
    body = {'propagationPolicy': propagation_policy} if propagation_policy else None
    try:
        result: Body = await _call(emulator, 'DELETE', _path(emulator, resource, namespace, name), body=body)
    except ApiError as exc:
        if exc.status == 404:
            return None
        raise
    return result


@overload
async def wait_for(predicate: Callable[[], Awaitable[T]], timeout: float = ..., *,  # noqa: ASYNC109
                   interval: float = ..., message: str = ...) -> T: ...


@overload
async def wait_for(predicate: Callable[[], T], timeout: float = ..., *,  # noqa: ASYNC109
                   interval: float = ..., message: str = ...) -> T: ...


async def wait_for(predicate: Callable[[], Any], timeout: float = 10.0, *,  # noqa: ASYNC109
                   interval: float = 0.05, message: str = '') -> Any:
    """Poll a (sync or async) predicate until it returns something truthy; return that value."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        result = predicate()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return result
        last = result
        if time.monotonic() >= deadline:
            what = message or getattr(predicate, '__name__', repr(predicate))
            raise TimeoutError(f'condition not met within {timeout}s: {what} (last value: {last!r})')
        await asyncio.sleep(interval)
