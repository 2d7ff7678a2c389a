"""ReplicationPolicy admission: the CRD (CEL replayed by tests/unit/cel.py) and the operator's parser agree."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from dockyard.api import SpecError
from dockyard.api.crd import KINDS, REPLICATION_POLICY, crd
from dockyard.api.replication import ReplicationPolicySpec
from dockyard.api.schema import parse
from tests.unit import cel

SCHEMA = cel.version_schema(crd(REPLICATION_POLICY))

BASE: dict[str, Any] = {
    "source": {"url": "https://registry-1.docker.io", "secretRef": {"name": "hub-creds"}},
    "destination": {"registryRef": {"name": "main"}},
}


def policy(spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "dockyard.dev/v1alpha1", "kind": "ReplicationPolicy",
            "metadata": {"name": "p", "namespace": "registries"}, "spec": spec}


def with_(**changes: Any) -> dict[str, Any]:
    spec = copy.deepcopy(BASE)
    spec.update(changes)
    return spec


CASES = [
    ("minimal", BASE, None),
    ("both sides by url", with_(destination={"url": "http://127.0.0.1:5000"}), None),
    ("registryRef and url on one side",
     with_(destination={"registryRef": {"name": "main"}, "url": "http://x:5000"}), "exactly one of registryRef"),
    ("neither registryRef nor url", with_(destination={"insecure": True}), "exactly one of registryRef"),
    ("same url both sides", with_(destination={"url": "https://registry-1.docker.io"}), "must be different"),
    ("same registryRef both sides",
     with_(source={"registryRef": {"name": "main"}}, destination={"registryRef": {"name": "main"}}),
     "must be different"),
    ("same name other namespace",
     with_(source={"registryRef": {"name": "main", "namespace": "a"}},
           destination={"registryRef": {"name": "main", "namespace": "b"}}), None),
    ("same name and namespace",
     with_(source={"registryRef": {"name": "main", "namespace": "a"}},
           destination={"registryRef": {"name": "main", "namespace": "a"}}), "must be different"),
    ("same name, a namespace on one side only",
     with_(source={"registryRef": {"name": "main", "namespace": "a"}}, destination={"registryRef": {"name": "main"}}),
     None),
    ("cron with five fields", with_(trigger={"schedule": "0 */6 * * *"}), None),
    ("cron macro", with_(trigger={"schedule": "@hourly"}), None),
    ("cron with four fields", with_(trigger={"schedule": "0 */6 * *"}), "five fields"),
    ("cron with six fields", with_(trigger={"schedule": "0 0 */6 * * *"}), "five fields"),
    ("bad conflict", with_(conflict="replace"), "conflict"),
    ("bad deletion", with_(deletion="all"), "deletion"),
    ("bandwidth quantity", with_(limits={"bandwidth": "50Mi", "concurrency": 4}), None),
    ("bandwidth not a quantity", with_(limits={"bandwidth": "fast"}), "bandwidth"),
    ("zero bandwidth", with_(limits={"bandwidth": "0"}), "omit the field for no limit"),
    ("zero concurrency", with_(limits={"concurrency": 0}), "concurrency"),
    ("retry backoff duration", with_(limits={"retry": {"max": 3, "backoff": "500ms"}}), None),
    ("retry backoff not a duration", with_(limits={"retry": {"backoff": "soon"}}), "backoff"),
    ("latest zero", with_(filters={"latest": 0}), "latest"),
    ("url without scheme", with_(source={"url": "registry-1.docker.io"}), "url"),
]


@pytest.mark.parametrize(("name", "spec", "error"), CASES, ids=[c[0] for c in CASES])
def test_crd_and_parser_agree(name: str, spec: dict[str, Any], error: str | None) -> None:
    violations = cel.admit(policy(copy.deepcopy(spec)), SCHEMA)
    try:
        parse(ReplicationPolicySpec, copy.deepcopy(spec))
        parser_error = None
    except SpecError as e:
        parser_error = str(e)
    if error is None:
        assert violations == []
        assert parser_error is None
    else:
        assert violations, f"the API server would accept {name}"
        assert parser_error is not None, f"the operator would accept {name}"
        assert error in parser_error or error in " ".join(str(v) for v in violations)


def _filters(**changes: Any) -> dict[str, Any]:
    return with_(filters=changes)


TOO_LONG = [
    # id, spec, the field both the API server and the operator name
    ("registryRef name of 64 characters", with_(destination={"registryRef": {"name": "r" * 64}}),
     "spec.destination.registryRef.name"),
    ("registryRef namespace of 64 characters",
     with_(destination={"registryRef": {"name": "main", "namespace": "n" * 64}}),
     "spec.destination.registryRef.namespace"),
    ("secretRef name of 254 characters", with_(source={"url": "https://r.example", "secretRef": {"name": "s" * 254}}),
     "spec.source.secretRef.name"),
    ("caSecretRef name of 254 characters",
     with_(source={"url": "https://r.example", "caSecretRef": {"name": "s" * 254}}), "spec.source.caSecretRef.name"),
    ("url of 2049 characters", with_(source={"url": "https://r.example/" + "p" * 2031}), "spec.source.url"),
    ("repository glob of 513 characters", _filters(repositories={"include": ["r" * 513]}),
     "spec.filters.repositories.include[0]"),
    ("257 repository globs", _filters(repositories={"exclude": ["r"] * 257}), "spec.filters.repositories.exclude"),
    ("tag pattern of 257 characters", _filters(tags={"exclude": ["t" * 257]}), "spec.filters.tags.exclude[0]"),
    ("257 tag patterns", _filters(tags={"include": ["t"] * 257}), "spec.filters.tags.include"),
    ("semverRange of 257 characters", _filters(tags={"semverRange": ">=1" + " " * 254}),
     "spec.filters.tags.semverRange"),
    ("65 platforms", _filters(platforms=["linux/amd64"] * 65), "spec.filters.platforms"),
    ("platform of 65 characters", _filters(platforms=["linux/" + "a" * 59]), "spec.filters.platforms[0]"),
    ("prefix of 257 characters", with_(destinationPath={"prefix": "p" * 257}), "spec.destinationPath.prefix"),
    ("stripPrefix of 257 characters", with_(destinationPath={"stripPrefix": "p" * 257}),
     "spec.destinationPath.stripPrefix"),
    ("schedule of 129 characters", with_(trigger={"schedule": "@hourly" + " " * 122}), "spec.trigger.schedule"),
    ("backoff of 65 characters", with_(limits={"retry": {"backoff": "1s" * 32 + "1"}}), "spec.limits.retry.backoff"),
    ("bandwidth of 65 characters", with_(limits={"bandwidth": "0" * 63 + "Mi"}), "spec.limits.bandwidth"),
]


@pytest.mark.parametrize(("spec", "field"), [c[1:] for c in TOO_LONG], ids=[c[0] for c in TOO_LONG])
def test_values_past_the_bounds_are_refused_by_both_naming_the_field(spec: dict[str, Any], field: str) -> None:
    violations = cel.admit(policy(copy.deepcopy(spec)), SCHEMA)
    assert field in [v.path for v in violations], "; ".join(map(str, violations))
    with pytest.raises(SpecError) as error:
        parse(ReplicationPolicySpec, copy.deepcopy(spec))
    assert error.value.path == field


def test_values_at_the_bounds_pass_both() -> None:
    spec = with_(
        source={"url": "https://r.example/" + "p" * 2030, "secretRef": {"name": "s" * 253},
                "caSecretRef": {"name": "c" * 253}},
        destination={"registryRef": {"name": "r" * 63, "namespace": "n" * 63}},
        filters={"repositories": {"include": ["r" * 512] * 256, "exclude": ["x" * 512] * 256},
                 "tags": {"include": ["t" * 256] * 256, "exclude": ["u" * 256] * 256, "semverRange": ">=1" + " " * 253},
                 "platforms": ["linux/" + "a" * 58] * 64},
        destinationPath={"prefix": "p" * 256, "stripPrefix": "s" * 256},
        trigger={"schedule": "@hourly" + " " * 121},
        limits={"bandwidth": "0" * 61 + "1Mi", "retry": {"backoff": "1s" * 32}},
    )
    assert cel.admit(policy(copy.deepcopy(spec)), SCHEMA) == []
    parse(ReplicationPolicySpec, spec)


def test_design_example_parses_with_defaults() -> None:
    spec = parse(ReplicationPolicySpec, {
        "source": {"url": "https://registry-1.docker.io", "secretRef": {"name": "hub-creds"}},
        "destination": {"registryRef": {"name": "main"}},
        "filters": {"repositories": {"include": ["library/nginx", "library/redis"], "exclude": []},
                    "tags": {"include": [], "exclude": ["*-rc*", "*-alpine"], "semverRange": ">=1.25.0"},
                    "platforms": ["linux/amd64", "linux/arm64"], "latest": 5},
        "destinationPath": {"prefix": "mirror/", "stripPrefix": "library/"},
        "trigger": {"schedule": "0 */6 * * *", "onPush": False},
        "conflict": "overwrite", "deletion": "none", "referrers": True,
        "limits": {"concurrency": 4, "requestsPerSecond": 10, "bandwidth": "50Mi",
                   "retry": {"max": 5, "backoff": "2s"}},
        "suspend": False,
    })
    assert spec.filters.tags.semver_range == ">=1.25.0"
    assert spec.destination_path.strip_prefix == "library/"
    defaults = parse(ReplicationPolicySpec, BASE)
    assert (defaults.conflict, defaults.deletion, defaults.referrers) == ("overwrite", "none", True)
    assert defaults.limits.retry.max == 5
    assert defaults.limits.concurrency == 4


def test_crd_shape() -> None:
    assert REPLICATION_POLICY in KINDS
    doc = crd(REPLICATION_POLICY)
    version = doc["spec"]["versions"][0]
    assert version["subresources"] == {"status": {}}
    columns = {c["name"]: c for c in version["additionalPrinterColumns"]}
    assert list(columns) == ["Ready", "Last Run", "Result", "Age"]
    assert columns["Last Run"] == {"name": "Last Run", "type": "date",
                                   "jsonPath": ".status.lastRun.completionTime"}
    assert columns["Result"]["jsonPath"] == ".status.lastRun.result"
    assert doc["spec"]["names"]["shortNames"] == ["rpol"]
    assert cel.structural_problems(SCHEMA) == []
    status = version["schema"]["openAPIV3Schema"]["properties"]["status"]
    assert status["properties"]["lastRun"]["properties"]["bytesCopied"]["format"] == "int64"
