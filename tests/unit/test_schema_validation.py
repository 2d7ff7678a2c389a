"""Bad Registries are refused twice, the same way: at admission and by the operator.

A cluster admin who applies an invalid Registry must hear about it from `kubectl apply` (the
CRD's schema and CEL rules, replayed by tests/unit/cel.py), and the operator, which parses the
spec with `dockyard.api.schema.parse`, must refuse exactly the same specs, naming the same
field. A property test holds every CEL rule and its Python predicate to the same verdict, and
the committed CRDs must be what `make crds` generates now and what a real API server accepts.
"""

from __future__ import annotations

import copy
import typing
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dockyard.api import API_VERSION
from dockyard.api.crd import KINDS, REGISTRY, Kind, crd
from dockyard.api.registry import RegistrySpec, quantity_value
from dockyard.api.schema import QUANTITY_PATTERN, Model, Rule, SpecError, check_transition, parse
from tests.unit import cel

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = cel.version_schema(crd(REGISTRY))
BASE: dict[str, Any] = {"storage": {"pvc": {"size": "20Gi"}}}


def registry(spec: Any) -> dict[str, Any]:
    return {"apiVersion": API_VERSION, "kind": "Registry",
            "metadata": {"name": "main", "namespace": "registries"}, "spec": spec}


def with_(base: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A copy of `base` with the dotted `path` set to `value`."""
    out = copy.deepcopy(base)
    node = out
    *parents, last = path.split(".")
    for name in parents:
        node = node.setdefault(name, {})
    node[last] = value
    return out


def operator_error(spec: Any, old: Any = None) -> SpecError | None:
    """What the operator says about `spec` (an update from `old` when given)."""
    try:
        new = parse(RegistrySpec, spec)
        if old is not None:
            check_transition(new, parse(RegistrySpec, old))
    except SpecError as error:
        return error
    return None


# ----------------------------------------------------------------------------- the table

AUTH: dict[str, Any] = {"htpasswdSecretRef": {"name": "u"}}
S3: dict[str, Any] = {"bucket": "images"}
S3_BASE: dict[str, Any] = {"storage": {"s3": S3}}

INVALID: list[tuple[str, Any, Any, str]] = [
    # id, spec, old spec (an update) or None (a create), the field the error must name
    ("no storage", {}, None, "spec.storage"),
    ("storage without a kind", {"storage": {}}, None, "spec.storage"),
    ("pvc and emptyDir", {"storage": {"pvc": {"size": "1Gi"}, "emptyDir": {}}}, None, "spec.storage"),
    ("replicas 3 on RWO", with_(BASE, "replicas", 3), None, "spec.replicas"),
    ("replicas 2 on RWOP", {"replicas": 2, "storage": {"pvc": {"size": "1Gi", "accessModes": ["ReadWriteOncePod"]}}},
     None, "spec.replicas"),
    ("replicas 3 on emptyDir", {"replicas": 3, "storage": {"emptyDir": {}}}, None, "spec.replicas"),
    ("size 20GB", with_(BASE, "storage.pvc.size", "20GB"), None, "spec.storage.pvc.size"),
    ("gc schedule not cron", with_(BASE, "garbageCollection", {"schedule": "every night"}), None,
     "spec.garbageCollection.schedule"),
    ("gc schedule minute 60", with_(BASE, "garbageCollection", {"schedule": "60 * * * *"}), None,
     "spec.garbageCollection.schedule"),
    ("gc schedule minute 99", with_(BASE, "garbageCollection", {"schedule": "99 * * * *"}), None,
     "spec.garbageCollection.schedule"),
    ("gc schedule hour 24", with_(BASE, "garbageCollection", {"schedule": "0 24 * * *"}), None,
     "spec.garbageCollection.schedule"),
    ("gc schedule day of month 0", with_(BASE, "garbageCollection", {"schedule": "0 0 0 * *"}), None,
     "spec.garbageCollection.schedule"),
    ("gc schedule month 13", with_(BASE, "garbageCollection", {"schedule": "0 0 1 13 *"}), None,
     "spec.garbageCollection.schedule"),
    ("gc schedule day of week 7", with_(BASE, "garbageCollection", {"schedule": "0 0 * * 7"}), None,
     "spec.garbageCollection.schedule"),
    ("gc schedule step 0", with_(BASE, "garbageCollection", {"schedule": "*/0 * * * *"}), None,
     "spec.garbageCollection.schedule"),
    ("gc schedule range backwards", with_(BASE, "garbageCollection", {"schedule": "0 0 * * fri-mon"}), None,
     "spec.garbageCollection.schedule"),
    ("gc schedule unknown name", with_(BASE, "garbageCollection", {"schedule": "0 0 * foo *"}), None,
     "spec.garbageCollection.schedule"),
    ("gc schedule unknown macro", with_(BASE, "garbageCollection", {"schedule": "@every"}), None,
     "spec.garbageCollection.schedule"),
    ("gc grace period not a duration", with_(BASE, "garbageCollection", {"gracePeriod": "1 hour"}), None,
     "spec.garbageCollection.gracePeriod"),
    ("size -1", with_(BASE, "storage.pvc.size", "-1"), None, "spec.storage.pvc.size"),
    ("size with a space", with_(BASE, "storage.pvc.size", "20 Gi"), None, "spec.storage.pvc.size"),
    ("size with a newline", with_(BASE, "storage.pvc.size", "20Gi\n"), None, "spec.storage.pvc.size"),
    ("size fractional exponent", with_(BASE, "storage.pvc.size", "1e1.5"), None, "spec.storage.pvc.size"),
    ("size a number", with_(BASE, "storage.pvc.size", 20), None, "spec.storage.pvc.size"),
    ("sizeLimit 1GB", {"storage": {"emptyDir": {"sizeLimit": "1GB"}}}, None, "spec.storage.emptyDir.sizeLimit"),
    ("pvc without size", {"storage": {"pvc": {}}}, None, "spec.storage.pvc.size"),
    ("port 0", with_(BASE, "service.port", 0), None, "spec.service.port"),
    ("port 70000", with_(BASE, "service.port", 70000), None, "spec.service.port"),
    ("port a string", with_(BASE, "service.port", "5000"), None, "spec.service.port"),
    ("service type Ingress", with_(BASE, "service.type", "Ingress"), None, "spec.service.type"),
    ("replicas -1", with_(BASE, "replicas", -1), None, "spec.replicas"),
    ("replicas a string", with_(BASE, "replicas", "3"), None, "spec.replicas"),
    ("access rule with an unknown action", with_(BASE, "auth", {**AUTH, "access": [
        {"repositories": ["**"], "users": ["*"], "actions": ["write"]}]}), None, "spec.auth.access[0].actions[0]"),
    ("empty access list", with_(BASE, "auth", {**AUTH, "access": []}), None, "spec.auth.access"),
    ("access rule without subjects", with_(BASE, "auth", {**AUTH, "access": [
        {"repositories": ["**"], "actions": ["pull"]}]}), None, "spec.auth.access[0]"),
    ("access rule without repositories", with_(BASE, "auth", {**AUTH, "access": [
        {"repositories": [], "users": ["*"], "actions": ["pull"]}]}), None, "spec.auth.access[0].repositories"),
    ("access rule naming an undefined group", with_(BASE, "auth", {**AUTH, "access": [
        {"repositories": ["**"], "groups": ["ops"], "actions": ["pull"]}]}), None, "spec.auth.access"),
    ("serviceAccount without a namespace", with_(BASE, "auth", {**AUTH, "access": [
        {"repositories": ["**"], "serviceAccounts": ["builder"], "actions": ["pull"]}]}), None,
     "spec.auth.access[0].serviceAccounts[0]"),
    ("token lifetime not a duration", with_(BASE, "auth", {**AUTH, "token": {"lifetime": "five minutes"}}), None,
     "spec.auth.token.lifetime"),
    ("quota of zero", with_(BASE, "quotas", [{"repositories": ["**"], "limit": "0"}]), None, "spec.quotas[0].limit"),
    ("quota without repositories", with_(BASE, "quotas", [{"repositories": [], "limit": "1Gi"}]), None,
     "spec.quotas[0].repositories"),
    ("webhook with an ftp url", with_(BASE, "webhooks", [{"name": "w", "url": "ftp://x", "events": ["push"],
                                                         "secretRef": {"name": "s"}}]), None, "spec.webhooks[0].url"),
    ("webhook with an unknown event", with_(BASE, "webhooks", [{"name": "w", "url": "http://x", "events": ["tag"],
                                                               "secretRef": {"name": "s"}}]), None,
     "spec.webhooks[0].events[0]"),
    ("two webhooks of one name", with_(BASE, "webhooks", [
        {"name": "w", "url": "http://x", "events": ["push"], "secretRef": {"name": "s"}},
        {"name": "w", "url": "http://y", "events": ["push"], "secretRef": {"name": "s"}}]), None, "spec.webhooks"),
    ("replicas a float", with_(BASE, "replicas", 1.5), None, "spec.replicas"),
    ("replicas a boolean", with_(BASE, "replicas", True), None, "spec.replicas"),
    ("retain a string", with_(BASE, "storage.pvc.retain", "yes"), None, "spec.storage.pvc.retain"),
    ("accessModes a string", with_(BASE, "storage.pvc.accessModes", "ReadWriteOnce"), None,
     "spec.storage.pvc.accessModes"),
    ("accessModes empty", with_(BASE, "storage.pvc.accessModes", []), None, "spec.storage.pvc.accessModes"),
    ("accessModes four", with_(BASE, "storage.pvc.accessModes", ["ReadWriteMany"] * 4), None,
     "spec.storage.pvc.accessModes"),
    ("accessMode ReadOnlyMany", with_(BASE, "storage.pvc.accessModes", ["ReadOnlyMany"]), None,
     "spec.storage.pvc.accessModes[0]"),
    ("storage a list", {"storage": [{"pvc": {"size": "1Gi"}}]}, None, "spec.storage"),
    ("nodeSelector value a number", with_(BASE, "nodeSelector", {"zone": 1}), None, "spec.nodeSelector.zone"),
    ("resources a string", with_(BASE, "resources", "lots"), None, "spec.resources"),
    ("tolerations an object", with_(BASE, "tolerations", {"key": "x"}), None, "spec.tolerations"),
    ("readOnly a string", with_(BASE, "readOnly", "true"), None, "spec.readOnly"),
    ("ingress without host", with_(BASE, "ingress", {"className": "nginx"}), None, "spec.ingress.host"),
    ("ingress host with a scheme", with_(BASE, "ingress", {"host": "https://r.example.com"}), None,
     "spec.ingress.host"),
    ("auth without secret", with_(BASE, "auth", {"anonymousPull": True}), None, "spec.auth.htpasswdSecretRef"),
    ("auth secret without name", with_(BASE, "auth", {"htpasswdSecretRef": {"key": "x"}}), None,
     "spec.auth.htpasswdSecretRef.name"),
    ("tls secret name invalid", with_(BASE, "tls", {"secretName": "Main_TLS"}), None, "spec.tls.secretName"),
    ("pdb maxUnavailable 0", with_(BASE, "podDisruptionBudget", {"maxUnavailable": 0}), None,
     "spec.podDisruptionBudget.maxUnavailable"),
    ("unknown field", with_(BASE, "storageClass", "fast"), None, "spec.storageClass"),
    ("unknown nested field", with_(BASE, "storage.pvc.sizeGi", 20), None, "spec.storage.pvc.sizeGi"),
    # object storage
    ("pvc and s3", {"storage": {"pvc": {"size": "1Gi"}, "s3": S3}}, None, "spec.storage"),
    ("emptyDir and s3", {"storage": {"emptyDir": {}, "s3": S3}}, None, "spec.storage"),
    ("s3 without bucket", {"storage": {"s3": {"endpoint": "http://minio:9000"}}}, None, "spec.storage.s3.bucket"),
    ("bucket with capitals", with_(S3_BASE, "storage.s3.bucket", "Images"), None, "spec.storage.s3.bucket"),
    ("bucket with an underscore", with_(S3_BASE, "storage.s3.bucket", "my_images"), None, "spec.storage.s3.bucket"),
    ("bucket of 2 characters", with_(S3_BASE, "storage.s3.bucket", "ab"), None, "spec.storage.s3.bucket"),
    ("bucket of 64 characters", with_(S3_BASE, "storage.s3.bucket", "b" * 64), None, "spec.storage.s3.bucket"),
    ("bucket ending with a hyphen", with_(S3_BASE, "storage.s3.bucket", "images-"), None, "spec.storage.s3.bucket"),
    ("bucket starting with a dot", with_(S3_BASE, "storage.s3.bucket", ".images"), None, "spec.storage.s3.bucket"),
    ("endpoint without a scheme", with_(S3_BASE, "storage.s3.endpoint", "minio:9000"), None,
     "spec.storage.s3.endpoint"),
    ("endpoint ftp://", with_(S3_BASE, "storage.s3.endpoint", "ftp://minio:9000"), None, "spec.storage.s3.endpoint"),
    ("endpoint with a path", with_(S3_BASE, "storage.s3.endpoint", "http://minio:9000/images"), None,
     "spec.storage.s3.endpoint"),
    ("endpoint with credentials", with_(S3_BASE, "storage.s3.endpoint", "http://key:secret@minio:9000"), None,
     "spec.storage.s3.endpoint"),
    ("region with a space", with_(S3_BASE, "storage.s3.region", "us east"), None, "spec.storage.s3.region"),
    ("prefix with a leading slash", with_(S3_BASE, "storage.s3.prefix", "/registry"), None, "spec.storage.s3.prefix"),
    ("prefix with a trailing slash", with_(S3_BASE, "storage.s3.prefix", "registry/"), None,
     "spec.storage.s3.prefix"),
    ("prefix with an empty segment", with_(S3_BASE, "storage.s3.prefix", "a//b"), None, "spec.storage.s3.prefix"),
    ("prefix empty", with_(S3_BASE, "storage.s3.prefix", ""), None, "spec.storage.s3.prefix"),
    ("prefix 513 characters", with_(S3_BASE, "storage.s3.prefix", "p" * 513), None, "spec.storage.s3.prefix"),
    ("secretRef without name", with_(S3_BASE, "storage.s3.secretRef", {}), None, "spec.storage.s3.secretRef.name"),
    ("secretRef with a key", with_(S3_BASE, "storage.s3.secretRef", {"name": "s3", "key": "id"}), None,
     "spec.storage.s3.secretRef.key"),
    ("caSecretRef name invalid", with_(S3_BASE, "storage.s3.caSecretRef", {"name": "My_CA"}), None,
     "spec.storage.s3.caSecretRef.name"),
    ("caSecretRef key 254 characters", with_(S3_BASE, "storage.s3.caSecretRef", {"name": "ca", "key": "k" * 254}),
     None, "spec.storage.s3.caSecretRef.key"),
    ("insecure with a CA", with_(with_(S3_BASE, "storage.s3.insecure", True), "storage.s3.caSecretRef",
                                 {"name": "ca"}), None, "spec.storage.s3.insecure"),
    ("forcePathStyle a string", with_(S3_BASE, "storage.s3.forcePathStyle", "true"), None,
     "spec.storage.s3.forcePathStyle"),
    ("redirect a string", with_(S3_BASE, "storage.s3.redirect", "yes"), None, "spec.storage.s3.redirect"),
    ("unknown s3 field", with_(S3_BASE, "storage.s3.accessKeyId", "AKIA"), None, "spec.storage.s3.accessKeyId"),
    ("3 replicas on s3 moved to a ReadWriteOnce pvc", with_(BASE, "replicas", 3),
     {"replicas": 3, "storage": {"s3": S3}}, "spec.replicas"),
    # bounds: every string, list and map of the spec has one (the API server's CEL cost budget)
    ("size 65 characters", with_(BASE, "storage.pvc.size", "1" * 65), None, "spec.storage.pvc.size"),
    ("sizeLimit 65 characters", {"storage": {"emptyDir": {"sizeLimit": "0" * 64 + "1"}}}, None,
     "spec.storage.emptyDir.sizeLimit"),
    ("storageClassName 254 characters", with_(BASE, "storage.pvc.storageClassName", "s" * 254), None,
     "spec.storage.pvc.storageClassName"),
    ("htpasswd secret name 254 characters", with_(BASE, "auth", {"htpasswdSecretRef": {"name": "a" * 254}}), None,
     "spec.auth.htpasswdSecretRef.name"),
    ("htpasswd key 254 characters", with_(BASE, "auth", {"htpasswdSecretRef": {"name": "a", "key": "k" * 254}}),
     None, "spec.auth.htpasswdSecretRef.key"),
    ("tls secret name 254 characters", with_(BASE, "tls", {"secretName": "t" * 254}), None, "spec.tls.secretName"),
    ("ingress host 254 characters", with_(BASE, "ingress", {"host": "h" * 250 + ".com"}), None,
     "spec.ingress.host"),
    ("ingress class 254 characters", with_(BASE, "ingress", {"host": "r.example.com", "className": "c" * 254}),
     None, "spec.ingress.className"),
    ("65 service annotations", with_(BASE, "service.annotations", {f"a{i}": "" for i in range(65)}), None,
     "spec.service.annotations"),
    ("ingress annotation of 4097 characters",
     with_(BASE, "ingress", {"host": "r.example.com", "annotations": {"a": "x" * 4097}}), None,
     "spec.ingress.annotations.a"),
    ("pod annotation of 4097 characters", with_(BASE, "podAnnotations", {"a": "x" * 4097}), None,
     "spec.podAnnotations.a"),
    ("nodeSelector value of 64 characters", with_(BASE, "nodeSelector", {"zone": "z" * 64}), None,
     "spec.nodeSelector.zone"),
    ("65 nodeSelector labels", with_(BASE, "nodeSelector", {f"l{i}": "v" for i in range(65)}), None,
     "spec.nodeSelector"),
    ("65 tolerations", with_(BASE, "tolerations", [{"operator": "Exists"}] * 65), None, "spec.tolerations"),
    ("33 topology spread constraints", with_(BASE, "topologySpreadConstraints", [{"maxSkew": 1}] * 33), None,
     "spec.topologySpreadConstraints"),
    ("image of 1025 characters", with_(BASE, "image", "i" * 1025), None, "spec.image"),
    ("priorityClassName 254 characters", with_(BASE, "priorityClassName", "p" * 254), None,
     "spec.priorityClassName"),
    ("gc schedule 129 characters", with_(BASE, "garbageCollection", {"schedule": "0 3 * * *" + " " * 120}), None,
     "spec.garbageCollection.schedule"),
    ("gc grace period 65 characters", with_(BASE, "garbageCollection", {"gracePeriod": "1s" * 32 + "1"}), None,
     "spec.garbageCollection.gracePeriod"),
    # updates
    ("storageClassName changed", with_(BASE, "storage.pvc.storageClassName", "fast"),
     with_(BASE, "storage.pvc.storageClassName", "standard"), "spec.storage.pvc.storageClassName"),
    ("storageClassName set later", with_(BASE, "storage.pvc.storageClassName", "fast"), BASE,
     "spec.storage.pvc.storageClassName"),
    ("storageClassName removed", BASE, with_(BASE, "storage.pvc.storageClassName", "standard"),
     "spec.storage.pvc.storageClassName"),
    ("size shrinks 20Gi -> 10Gi", with_(BASE, "storage.pvc.size", "10Gi"), BASE, "spec.storage.pvc.size"),
    ("size shrinks by one byte", with_(BASE, "storage.pvc.size", "21474836479"), BASE, "spec.storage.pvc.size"),
    ("size shrinks 1.1G -> 1099M", with_(BASE, "storage.pvc.size", "1099M"),
     with_(BASE, "storage.pvc.size", "1.1G"), "spec.storage.pvc.size"),
]

AT_THE_BOUNDS: dict[str, Any] = {
    "storage": {"pvc": {"size": "0" * 62 + "Gi", "storageClassName": "s" * 253}},
    "auth": {"htpasswdSecretRef": {"name": "a" * 253, "key": "k" * 253}},
    "tls": {"secretName": "t" * 253},
    "ingress": {"host": "h" * 249 + ".com", "className": "c" * 253, "tlsSecretName": "t" * 253,
                "annotations": {f"a{i}": "x" * 4096 for i in range(64)}},
    "service": {"annotations": {f"a{i}": "" for i in range(64)}},
    "podAnnotations": {"a": "x" * 4096},
    "nodeSelector": {f"l{i}": "v" * 63 for i in range(64)},
    "tolerations": [{"operator": "Exists"}] * 64,
    "topologySpreadConstraints": [{"maxSkew": 1}] * 32,
    "image": "i" * 1024,
    "priorityClassName": "p" * 253,
    "garbageCollection": {"schedule": "0 3 * * *" + " " * 119, "gracePeriod": "1s" * 32},
}


S3_AT_THE_BOUNDS: dict[str, Any] = {"storage": {"s3": {
    "bucket": "b" * 63, "endpoint": "https://" + "e" * 63 + "." + "x" * 63 + ".example:65535/",
    "region": "r" * 63, "prefix": "/".join(["p" * 255, "q" * 256]),
    "secretRef": {"name": "s" * 253}, "caSecretRef": {"name": "c" * 253, "key": "k" * 253},
    "forcePathStyle": True, "redirect": True}}}


@pytest.mark.parametrize("spec", [AT_THE_BOUNDS, S3_AT_THE_BOUNDS], ids=["pvc and the rest", "s3"])
def test_values_at_the_bounds_pass_both(spec: dict[str, Any]) -> None:
    assert cel.admit(registry(spec), SCHEMA) == []
    assert operator_error(spec) is None


VALID: list[tuple[str, Any]] = [
    ("s3 with a bucket only", S3_BASE),
    ("s3 on a self-hosted store", {"storage": {"s3": {
        "bucket": "images.team-a", "endpoint": "http://minio.storage.svc:9000", "region": "garage",
        "prefix": "registries/main", "forcePathStyle": True, "secretRef": {"name": "s3-credentials"},
        "caSecretRef": {"name": "s3-ca"}}}}),
    ("s3 on an IPv6 endpoint", with_(S3_BASE, "storage.s3.endpoint", "https://[fd00::1]:8333")),
    ("s3 without TLS verification", with_(S3_BASE, "storage.s3.insecure", True)),
    ("s3 with redirects", with_(S3_BASE, "storage.s3.redirect", True)),
    ("10 replicas on s3", with_(S3_BASE, "replicas", 10)),
]


@pytest.mark.parametrize("spec", [c[1] for c in VALID], ids=[c[0] for c in VALID])
def test_valid_spec_passes_both(spec: Any) -> None:
    assert cel.admit(registry(spec), SCHEMA) == []
    assert operator_error(spec) is None


ALLOWED_UPDATES: list[tuple[str, Any, Any]] = [
    ("size grows 20Gi -> 30Gi", with_(BASE, "storage.pvc.size", "30Gi"), BASE),
    ("size grows 20Gi -> 0.5Ti", with_(BASE, "storage.pvc.size", "0.5Ti"), BASE),
    ("same size in other units", with_(BASE, "storage.pvc.size", "21474836480"), BASE),
    ("1.1G written as 1100M", with_(BASE, "storage.pvc.size", "1100M"), with_(BASE, "storage.pvc.size", "1.1G")),
    ("1005M written as 1.005G", with_(BASE, "storage.pvc.size", "1.005G"), with_(BASE, "storage.pvc.size", "1005M")),
    ("storageClassName kept", with_(BASE, "storage.pvc.storageClassName", "fast"),
     with_(BASE, "storage.pvc.storageClassName", "fast")),
    ("scale up on RWX", {"replicas": 5, "storage": {"pvc": {"size": "1Gi", "accessModes": ["ReadWriteMany"]}}},
     {"replicas": 2, "storage": {"pvc": {"size": "1Gi", "accessModes": ["ReadWriteMany"]}}}),
    ("scale to zero", with_(BASE, "replicas", 0), BASE),
    ("pvc replaced by emptyDir", {"storage": {"emptyDir": {}}}, BASE),
    ("pvc replaced by s3", S3_BASE, BASE),
    ("scale up on s3", with_(S3_BASE, "replicas", 10), with_(S3_BASE, "replicas", 3)),
    ("another bucket", with_(S3_BASE, "storage.s3.bucket", "images-2"), S3_BASE),
]


@pytest.mark.parametrize(("spec", "old", "field"), [c[1:] for c in INVALID], ids=[c[0] for c in INVALID])
def test_invalid_spec_is_refused_at_admission_naming_the_field(spec: Any, old: Any, field: str) -> None:
    violations = cel.admit(registry(spec), SCHEMA, registry(old) if old is not None else None)
    assert violations, "the API server would accept this"
    assert field in [v.path for v in violations], "; ".join(map(str, violations))


@pytest.mark.parametrize(("spec", "old", "field"), [c[1:] for c in INVALID], ids=[c[0] for c in INVALID])
def test_invalid_spec_is_refused_by_the_operator_naming_the_field(spec: Any, old: Any, field: str) -> None:
    error = operator_error(spec, old)
    assert error is not None, "the operator would accept this"
    assert error.path == field, str(error)
    assert str(error).startswith(f"{field}: ")


@pytest.mark.parametrize(("spec", "old"), [c[1:] for c in ALLOWED_UPDATES], ids=[c[0] for c in ALLOWED_UPDATES])
def test_allowed_update_passes_both(spec: Any, old: Any) -> None:
    assert cel.admit(registry(old), SCHEMA) == []
    assert cel.admit(registry(spec), SCHEMA, registry(old)) == []
    assert operator_error(spec, old) is None


def test_defaults_are_the_same_at_admission_and_in_the_operator() -> None:
    stored = cel.apply_defaults(registry(copy.deepcopy(BASE)), SCHEMA)["spec"]
    assert stored["replicas"] == 1
    assert stored["storage"]["pvc"] == {"size": "20Gi", "accessModes": ["ReadWriteOnce"], "retain": True}
    assert stored["service"] == {"type": "ClusterIP", "port": 5000, "annotations": {}}
    assert parse(RegistrySpec, stored) == parse(RegistrySpec, BASE)


def test_null_fields_are_unset_not_errors() -> None:
    spec = {"storage": {"pvc": {"size": "1Gi", "storageClassName": None}, "emptyDir": None},
            "replicas": None, "ingress": None}
    assert cel.admit(registry(spec), SCHEMA) == []
    assert operator_error(spec) is None


# ----------------------------------------------------------------------------- rules agree

def _models(cls: type[Model], seen: set[type[Model]] | None = None) -> set[type[Model]]:
    seen = set() if seen is None else seen
    seen.add(cls)
    for hint in typing.get_type_hints(cls).values():
        stack = [hint]
        while stack:
            tp = stack.pop()
            stack.extend(typing.get_args(tp))
            if isinstance(tp, type) and issubclass(tp, Model) and tp not in seen:
                _models(tp, seen)
    return seen


MODELS = sorted(_models(RegistrySpec), key=lambda m: m.__name__)
RULES: list[tuple[type[Model], Rule]] = [(m, r) for m in MODELS for r in m.RULES]


@contextmanager
def only(rule: Rule) -> Iterator[None]:
    """Let the operator check `rule` alone, so each rule's verdict can be read on its own."""
    with ExitStack() as stack:
        for model in MODELS:
            keep = tuple(r for r in model.RULES if r is rule)
            stack.enter_context(mock.patch.object(model, "RULES", keep))
        yield


def _crd_rules(schema: dict[str, Any]) -> Iterator[str]:
    for rule in schema.get("x-kubernetes-validations", ()):
        yield rule["rule"]
    for sub in schema.get("properties", {}).values():
        yield from _crd_rules(sub)
    for key in ("items", "additionalProperties"):
        if isinstance(schema.get(key), dict):
            yield from _crd_rules(schema[key])


def test_the_crd_carries_every_rule_of_the_models() -> None:
    assert len(RULES) >= 4
    assert sorted(_crd_rules(SCHEMA)) == sorted(rule.cel for _, rule in RULES)


def test_transition_rules_are_those_reading_old_self() -> None:
    assert cel.is_transition_rule("self.a == oldSelf.a")
    assert not cel.is_transition_rule("self.a == 'oldSelf'")
    for _, rule in RULES:
        assert cel.is_transition_rule(rule.cel) == rule.transition, rule.cel


SIZES = st.builds(
    "{}{}".format,
    st.sampled_from(["0", "1", "1.005", "1005", "1100", "20", "0.5", ".5", "1024", "2.", "21474836480"]),
    st.sampled_from(["", "Ki", "Mi", "Gi", "Ti", "Ei", "k", "M", "G", "E", "m", "n", "e3", "e-3", "E9", "e100"]),
)
MODES = ["ReadWriteOnce", "ReadWriteOncePod", "ReadWriteMany"]
PVCS = st.fixed_dictionaries(
    {"size": SIZES},
    optional={"storageClassName": st.sampled_from(["standard", "fast"]),
              "accessModes": st.lists(st.sampled_from(MODES), min_size=1, max_size=3),
              "retain": st.booleans()})
S3S = st.fixed_dictionaries(
    {"bucket": st.just("images")},
    optional={"insecure": st.booleans(), "caSecretRef": st.just({"name": "ca"})})
STORAGES = st.fixed_dictionaries(
    {}, optional={"pvc": PVCS, "emptyDir": st.fixed_dictionaries({}, optional={"sizeLimit": SIZES}), "s3": S3S})
SPECS = st.fixed_dictionaries({"storage": STORAGES}, optional={"replicas": st.integers(0, 5)})


@st.composite
def updates(draw: st.DrawFn) -> tuple[dict[str, Any], dict[str, Any] | None]:
    spec: dict[str, Any] = draw(SPECS)
    how = draw(st.sampled_from(["create", "unrelated", "pvc edited"]))
    if how == "create":
        return spec, None
    if how == "unrelated" or "pvc" not in spec["storage"]:
        return spec, draw(SPECS)
    old = copy.deepcopy(spec)
    old["storage"]["pvc"]["size"] = draw(SIZES)
    klass = draw(st.sampled_from([None, "standard", "fast"]))
    if klass is None:
        old["storage"]["pvc"].pop("storageClassName", None)
    else:
        old["storage"]["pvc"]["storageClassName"] = klass
    return spec, old


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(updates())
def test_every_cel_rule_and_its_python_predicate_agree(update: tuple[dict[str, Any], dict[str, Any] | None]) -> None:
    spec, old = update
    violations = cel.admit(registry(spec), SCHEMA, registry(old) if old is not None else None)
    # The generated specs are well-formed: only the cross-field rules can object.
    assert all(v.rule is not None for v in violations), violations
    for _, rule in RULES:
        refused = [v for v in violations if v.rule == rule.cel]
        with only(rule):
            error = operator_error(spec, old if rule.transition else None)
        assert bool(refused) == (error is not None), (rule.cel, refused, error)
        if error is not None:
            assert error.path == refused[0].path
            assert error.message == refused[0].message
    if old is None or cel.admit(registry(old), SCHEMA) == []:  # a stored object was admitted once
        assert (violations == []) == (operator_error(spec, old) is None)


@settings(max_examples=300, deadline=None)
@given(st.from_regex(QUANTITY_PATTERN, fullmatch=True))
def test_quantities_have_the_same_value_in_cel_and_in_the_operator(text: str) -> None:
    assert cel.evaluate("isQuantity(self)", text)
    assert cel.parse_quantity(text) == quantity_value(text)


@pytest.mark.parametrize(("text", "value"), [
    ("20Gi", 20 * 2**30), ("1.5Ti", 3 * 2**39), ("1100M", 1_100_000_000), ("1.1G", 1_100_000_000),
    ("1e3", 1000), ("1E", 10**18), ("500m", 0.5), ("0.1n", 1e-9), ("1e30", 2**63 - 1), ("+2k", 2000),
])
def test_quantity_values(text: str, value: float) -> None:
    assert float(cel.parse_quantity(text)) == pytest.approx(value, rel=1e-15)
    assert float(quantity_value(text)) == pytest.approx(value, rel=1e-15)


@pytest.mark.parametrize("text", ["20GB", "1 Gi", "", "Gi", "1e", "1.2.3", "--1", "1Ki1", "e3", "0x10", "٣"])
def test_not_quantities(text: str) -> None:
    assert not cel.evaluate("isQuantity(self)", text)
    with pytest.raises(ValueError, match="is not a quantity"):
        quantity_value(text)


# ----------------------------------------------------------------------------- the CRDs

@pytest.mark.parametrize("kind", KINDS, ids=[k.kind for k in KINDS])
def test_committed_crd_is_what_make_crds_generates(kind: Kind) -> None:
    path = ROOT / "crds" / f"{kind.name}.yaml"
    assert path.exists(), f"{path} is missing: run `make crds` and commit the result"
    assert cel.load_crd(path) == crd(kind), f"{path} is stale: run `make crds` and commit the result"


def test_crds_directory_holds_only_generated_crds() -> None:
    assert sorted(p.name for p in (ROOT / "crds").glob("*.yaml")) == sorted(f"{k.name}.yaml" for k in KINDS)


@pytest.mark.parametrize("kind", KINDS, ids=[k.kind for k in KINDS])
def test_crd_schema_is_one_a_real_api_server_accepts(kind: Kind) -> None:
    definition = crd(kind)
    schema = cel.version_schema(definition)
    assert cel.structural_problems(schema) == []
    scale = definition["spec"]["versions"][0]["subresources"].get("scale")
    if scale:
        types = {"specReplicasPath": "integer", "statusReplicasPath": "integer", "labelSelectorPath": "string"}
        for key, expected in types.items():
            node = cel._schema_at(schema, scale[key])
            assert node is not None, (key, scale[key])
            assert node["type"] == expected, (key, scale[key])


@pytest.mark.parametrize("kind", KINDS, ids=[k.kind for k in KINDS])
def test_every_rule_fits_the_api_servers_cost_budgets_with_margin(kind: Kind) -> None:
    """A CRD whose rules' estimated cost exceeds the budget is refused by the API server (the
    ReplicationPolicy CRD once was, 100x over). Each rule and the sum of a CRD's rules stay below a
    hundredth of their limits, which also keeps them below the budgets of one admission."""
    costs = cel.rule_costs(cel.version_schema(crd(kind)))
    assert costs
    for cost in costs:
        assert cost.cost <= cel.RULE_COST_LIMIT // 100, cost
        assert cost.cost <= cel.PER_CALL_LIMIT, cost
    total = sum(c.cost for c in costs)
    assert total <= cel.CRD_COST_LIMIT // 100
    assert total <= cel.OBJECT_BUDGET


def _schema(**spec: Any) -> dict[str, Any]:
    return {"type": "object", "properties": {"spec": {"type": "object", **spec}}}


@pytest.mark.parametrize(("schema", "problem"), [
    (_schema(properties={"size": {"pattern": "^a$"}}), "no type"),
    (_schema(properties={"port": {"type": "integer", "minimum": 1, "default": 0}}), "default 0 is invalid"),
    (_schema(properties={"port": {"type": "integer", "minItem": 1}}), "unknown schema keys"),
    (_schema(properties={"modes": {"type": "array", "items": {"type": "string"}}},
             **{"x-kubernetes-validations": [{"rule": "self.modes.exists(m, m == 'a')"}]}), "without maxItems"),
    (_schema(properties={"a": {"type": "string"}},
             **{"x-kubernetes-validations": [{"rule": "self.a == oldSelf.a", "fieldPath": ".b"}]}),
     "fieldPath '.b' names no field"),
    ({"type": "object", "properties": {"list": {"type": "array", "items": {
        "type": "object", "properties": {"a": {"type": "string"}},
        "x-kubernetes-validations": [{"rule": "self.a == oldSelf.a"}]}}}}, "does not correlate"),
    (_schema(**{"x-kubernetes-validations": [{"rule": "self.a ==="}]}), "does not compile"),
    (_schema(properties={"a": {"type": "object", "properties": {"b": {"type": "string"}}, "default": {"c": 1}}}),
     "is invalid"),
])
def test_structural_checks_catch_what_an_api_server_refuses(schema: dict[str, Any], problem: str) -> None:
    problems = cel.structural_problems(schema)
    assert any(problem in p for p in problems), problems


# ----------------------------------------------------------------------------- the harness itself

COSTED = {"type": "object", "properties": {
    "s": {"type": "string"},
    "b": {"type": "string", "maxLength": 63},
    "e": {"type": "string", "enum": ["ReadWriteOnce", "ReadWriteOncePod"]},
    "q": {"type": "string", "maxLength": 64},
    "count": {"type": "integer"},
    "flag": {"type": "boolean"},
    "namespace": {"type": "string", "maxLength": 63},
    "tags": {"type": "array", "maxItems": 16, "items": {"type": "string", "maxLength": 128}},
    "free": {"type": "array", "items": {"type": "string"}},
    "labels": {"type": "object", "maxProperties": 8, "additionalProperties": {"type": "string", "maxLength": 63}},
    "objs": {"type": "array", "maxItems": 4, "items": {
        "type": "object", "required": ["name"],
        "properties": {"name": {"type": "string", "maxLength": 10}, "v": {"type": "integer"}},
        "x-kubernetes-validations": [{"rule": "self.name != 'x' || self.v > 1"}]}},
    "anyobjs": {"type": "array", "items": {
        "type": "object", "required": ["name"], "properties": {"name": {"type": "string", "maxLength": 10}},
        "x-kubernetes-validations": [{"rule": "self.name.startsWith('a')"}]}},
}}
COSTS = [
    # rule on COSTED, its cost as k8s.io/apiextensions-apiserver v0.36.3 estimates it (cel.Compile)
    ("self.s == self.b", 30),
    ("self.s == self.s", 314577),
    ("has(self.b) ? self.b == 'x' : true", 4),
    ("(has(self.b) ? self.b : '') == (has(self.s) ? self.s : 'yy')", 32),
    ("self.namespace == 'x'", 3),
    ("self.__namespace__ == 'x'", 3),
    ("self.namespace == self.namespace", 1844674407370955268),
    ("self.__namespace__ == self.__namespace__", 30),
    ("self.tags.exists(t, t == 'latest')", 99),
    ("self.tags.all(t, t.size() < 10)", 99),
    ("self.tags.exists_one(t, t.startsWith('v'))", 68),
    ("self.tags.map(t, t + 'x').size() < 3", 1055),
    ("self.tags.filter(t, t.endsWith('x')).size() < 3", 255),
    ("self.free.exists(t, t == 'a')", 6291453),
    ("self.labels.exists(k, self.labels[k] == 'a')", 75),
    ("'a' in self.tags", 18),
    ("self.b.matches('^[a-z]+$')", 54),
    ("self.s.contains(self.b)", 8178902),
    ("quantity(self.q).compareTo(quantity('1Gi')) >= 0", 31),
    ("quantity(self.q) == quantity('1Gi')", 30),
    ("isQuantity(self.q) && quantity(self.q).isGreaterThan(quantity('1'))", 58),
    ("self.count + 1 <= 5 && self.count * 2 != 4 || !self.flag", 11),
    ("(has(self.b) ? 1 : 0) + (has(self.s) ? 1 : 0) == 1", 4),
    ("self.e == 'ReadWriteOnce'", 4),
    ("self.b + self.e == 'x'", 32),
    ("self.labels['a'] == 'b'", 4),
    ("self.tags[0] == 'b'", 4),
    ("size(self.b) < 3", 4),
    ("self.b < self.e", 6),
]


@pytest.mark.parametrize(("rule", "cost"), COSTS, ids=[c[0] for c in COSTS])
def test_harness_estimates_rule_costs_as_the_api_server_does(rule: str, cost: int) -> None:
    assert cel.estimated_cost(rule, COSTED) == cost


def test_harness_multiplies_rule_costs_by_how_often_a_node_can_occur() -> None:
    schema: dict[str, Any] = {"type": "object", "properties": {"spec": copy.deepcopy(COSTED)}}
    by_path = {c.path.split(".x-kubernetes")[0]: c.cost for c in cel.rule_costs(schema)}
    assert by_path["openAPIV3Schema.properties[spec].properties[objs].items"] == 24  # 6 x maxItems 4
    assert by_path["openAPIV3Schema.properties[spec].properties[anyobjs].items"] == 725937  # 3 x 241979
    schema["properties"]["spec"]["x-kubernetes-validations"] = [{"rule": "self.s.contains(self.s)"}]
    assert any("exceeds budget" in p for p in cel.structural_problems(schema))


def test_harness_reads_properties_by_their_cel_names() -> None:
    schema: dict[str, Any] = {
        "type": "object",
        "properties": {"namespace": {"type": "string"}, "a-b": {"type": "string"},
                       "m": {"type": "object", "additionalProperties": {"type": "string"}}}}
    view = cel.cel_view({"namespace": "ns", "a-b": "x", "m": {"a-b": "y"}}, schema)
    assert view == {"__namespace__": "ns", "namespace": "ns", "a__dash__b": "x", "m": {"a-b": "y"}}
    rules = ["self.__namespace__ == 'ns'", "self.namespace == 'ns'", "self.a__dash__b == 'x'", "self.m['a-b'] == 'y'"]
    schema["x-kubernetes-validations"] = [{"rule": r} for r in rules]
    assert cel.admit({"namespace": "ns", "a-b": "x", "m": {"a-b": "y"}}, schema) == []


def test_harness_translates_int_or_string_and_nullable() -> None:
    schema = {"type": "object", "properties": {
        "port": {"x-kubernetes-int-or-string": True},
        "note": {"type": "string", "nullable": True},
        "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
    }}
    assert cel.admit({"port": 8080, "note": None, "free": {"any": {"thing": 1}}}, schema) == []
    assert cel.admit({"port": "http"}, schema) == []
    assert [v.path for v in cel.admit({"port": True}, schema)] == ["port"]
    assert [v.path for v in cel.admit({"note": 1}, schema)] == ["note"]


def test_harness_correlates_old_values_only_where_the_api_server_does() -> None:
    immutable = {"x-kubernetes-validations": [{"rule": "self == oldSelf", "message": "immutable"}]}
    item = {"type": "object", "properties": {"name": {"type": "string"}, "value": {"type": "string", **immutable}}}
    schema = {"type": "object", "properties": {
        "byName": {"type": "array", "items": item, "x-kubernetes-list-type": "map",
                   "x-kubernetes-list-map-keys": ["name"]},
        "atomic": {"type": "array", "items": item},
        "labels": {"type": "object", "additionalProperties": {"type": "string", **immutable}},
    }}
    old = {"byName": [{"name": "a", "value": "1"}], "atomic": [{"name": "a", "value": "1"}],
           "labels": {"k": "1"}}
    new = {"byName": [{"name": "b", "value": "9"}, {"name": "a", "value": "2"}],
           "atomic": [{"name": "a", "value": "2"}], "labels": {"k": "2", "other": "3"}}
    assert sorted(v.path for v in cel.admit(new, schema, old)) == ["byName[1].value", "labels.k"]
    assert cel.admit(new, schema) == []  # a create runs no transition rule


def test_harness_reports_rule_errors_and_messages() -> None:
    schema = {"type": "object", "properties": {"size": {"type": "string"}}, "x-kubernetes-validations": [
        {"rule": "quantity(self.size).isGreaterThan(quantity('1Gi'))", "fieldPath": ".size"},
    ]}
    assert cel.admit({"size": "2Gi"}, schema) == []
    (small,) = cel.admit({"size": "1Gi"}, schema)
    assert (small.path, small.message) == ("size", "failed rule: quantity(self.size).isGreaterThan(quantity('1Gi'))")
    (broken,) = cel.admit({"size": "lots"}, schema)
    assert broken.path == "size"
    assert "evaluation error" in broken.message
