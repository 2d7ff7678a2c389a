"""Every string of a ReplicationPolicy that the copy engine parses: admission and the engine agree.

One table per field: value -> accepted. The three readers of the value must all give that answer:
the API server (the CRD replayed by tests/unit/cel.py), the operator's model (`parse`, which
`dockyard render` and the in-cluster run use) and the engine's own parser (what the copy Job
calls at start-up). A value one of them accepts and another refuses is a policy that passes
`kubectl apply` and then kills its Job, or one the operator refuses for no reason.

Tag and repository patterns are the one documented exception: the API server cannot compile a
user's regex (or a glob's character class) in a schema check, so it admits any pattern within its
length, and the model refuses what RE2 cannot compile, naming the field (the operator reports
Stalled). Their table says so explicitly.
"""

from __future__ import annotations

import ast
import copy
from pathlib import Path
from typing import Any

import pytest
import re2  # type: ignore[import-untyped]
from hypothesis import given, settings
from hypothesis import strategies as st

from dockyard import cron
from dockyard.api import SpecError
from dockyard.api.crd import KINDS, REGISTRY, REPLICATION_POLICY, crd
from dockyard.api.patterns import SEMVER_RANGE_PATTERN, URL_PATTERN, SemverRange
from dockyard.api.registry import RegistrySpec
from dockyard.api.replication import ReplicationPolicySpec
from dockyard.api.schema import CRON_PATTERN, DURATION_PATTERN, QUANTITY_PATTERN, parse, pattern_matches
from dockyard.oci.client import registry_url
from dockyard.replication.filters import RangeError, TagSelector, platform_match, repository_selected
from dockyard.replication.limits import parse_bandwidth, parse_spec_duration
from tests.unit import cel
from tests.unit.test_schema_validation import with_

SCHEMA = cel.version_schema(crd(REPLICATION_POLICY))
PACKAGE = Path(__file__).parents[2] / "operator" / "dockyard"
BASE: dict[str, Any] = {"source": {"url": "https://registry-1.docker.io"},
                        "destination": {"registryRef": {"name": "main"}}}


def _spec(path: str, value: Any) -> dict[str, Any]:
    return with_(BASE, path, value)


def admitted(path: str, value: Any) -> bool:
    obj = {"apiVersion": "dockyard.dev/v1alpha1", "kind": "ReplicationPolicy",
           "metadata": {"name": "p", "namespace": "n"}, "spec": _spec(path, value)}
    return cel.admit(obj, SCHEMA) == []


def model_error(path: str, value: Any) -> SpecError | None:
    try:
        parse(ReplicationPolicySpec, _spec(path, value))
    except SpecError as e:
        return e
    return None


def engine_accepts(read: Any, value: Any) -> bool:
    try:
        read(value)
    except (ValueError, re2.error):
        return False
    return True


def assert_all_agree(path: str, value: Any, accepted: bool, read: Any, field: str | None = None) -> None:
    error = model_error(path, value)
    assert admitted(path, value) == accepted, f"the CRD {'refuses' if accepted else 'admits'} {value!r}"
    assert (error is None) == accepted, f"the model {'refuses' if accepted else 'admits'} {value!r}: {error}"
    engine_value = value if not isinstance(value, list) else value[0]
    assert engine_accepts(read, engine_value) == accepted, f"the engine disagrees on {value!r}"
    if error is not None:
        assert error.path == (field or f"spec.{path}")


# ----------------------------------------------------------------------------- limits.bandwidth

BANDWIDTH = [
    # The Kubernetes quantity grammar, which the engine reads with the same function as the model.
    ("50Mi", True), ("1e8", True), ("1E8", True), ("+50Mi", True), (".5Gi", True), ("1Pi", True), ("1Ei", True),
    ("10M", True), ("1.", True), ("1.5Ti", True), ("9e99", True),
    ("-1", False), ("-50Mi", False), ("fast", False), ("50MB", False), ("50 Mi", False), ("1e", False),
    ("e3", False), ("", False), ("50Mi\n", False), ("0x10", False), ("\u0661", False), ("1Ki1", False),
    # At least one byte per second: 0 and fractions would silently mean no limit (the field is omitted for that).
    ("1", True), ("1.5", True), ("1000m", True), ("0.001Ki", True), ("1e0", True),
    ("0", False), ("0Mi", False), ("+0", False), ("1m", False), ("999m", False), ("0.5", False), ("1e-3", False),
    ("0.0001Ki", False), ("1n", False),
]


@pytest.mark.parametrize(("value", "accepted"), BANDWIDTH)
def test_bandwidth(value: str, accepted: bool) -> None:
    assert_all_agree("limits.bandwidth", value, accepted, parse_bandwidth)


@pytest.mark.parametrize("value", ["0", "1m"])
def test_a_bandwidth_below_one_byte_per_second_is_refused_saying_to_omit_the_field(value: str) -> None:
    obj = {"apiVersion": "dockyard.dev/v1alpha1", "kind": "ReplicationPolicy",
           "metadata": {"name": "p", "namespace": "n"}, "spec": _spec("limits.bandwidth", value)}
    violations = cel.admit(obj, SCHEMA)
    assert [v.path for v in violations] == ["spec.limits.bandwidth"]
    error = model_error("limits.bandwidth", value)
    assert error is not None
    assert error.path == "spec.limits.bandwidth"
    for message in (violations[0].message, error.message):
        assert "spec.limits.bandwidth" in message
        assert "omit the field for no limit" in message
    with pytest.raises(ValueError, match="omit the field for no limit"):
        parse_bandwidth(value)


# ----------------------------------------------------------------------------- source.url / destination.url

REGISTRY_URLS = [
    ("https://registry-1.docker.io", True), ("http://127.0.0.1:5000", True), ("http://main.registries.svc:5000", True),
    ("https://r.example/", True), ("https://r.example/mirror/v1", True), ("https://r.example:443/a%20b", True),
    ("https://R.Example.COM", True), ("http://registry_1:5000", True), ("http://[::1]:5000", True),
    ("http://[fe80::1]", True), ("https://r.example:1", True), ("https://r.example:65535", True),
    ("https://xn--bcher-kva.example", True), ("https://r.example/a:b@c;d=e,f+g$h&i'(j)*!~", True),
    ("https://r.example//", True), ("http://10.0.0.5", True), ("https://a-b.c-d.example", True),
    # not http(s), or a scheme that would not decide TLS
    ("registry-1.docker.io", False), ("ftp://r.example", False), ("HTTPS://r.example", False),
    ("Http://r.example", False), ("https:/r.example", False), ("oci://r.example", False), ("", False),
    # no host, or not a host
    ("https://", False), ("https:///v2", False), ("http://:5000", False), ("https://r..example", False),
    ("https://.r.example", False), ("https://r.example.", False), ("https://-r.example", False),
    ("https://r-.example", False), ("https://r\u00e9.example", False), ("https://r example", False),
    ("https://r.example\n", False), ("https://r.example\t/x", False), ("https://\x00", False),
    ("http://[::1", False), ("http://[1.2.3.4]", False), ("http://[zz::1]", False), ("http://[]", False),
    ("http://[::1]5000", False),
    # ports
    ("https://r.example:0", False), ("https://r.example:65536", False), ("https://r.example:99999", False),
    ("https://r.example:05000", False), ("https://r.example:", False), ("https://r.example:http", False),
    ("https://r.example:50:00", False), ("https://r.example:\u0661", False),
    # credentials, query, fragment: requests would carry or lose them
    ("https://user:pw@r.example", False), ("https://@r.example", False), ("https://r.example?x=1", False),
    ("https://r.example/?x=1", False), ("https://r.example/#top", False), ("https://r.example#top", False),
    # the path
    ("https://r.example/a b", False), ("https://r.example/a%2", False), ("https://r.example/a%zz", False),
    ("https://r.example/\u00e9", False), ("https://r.example/a\"b", False), ("https://r.example/<x>", False),
    ("https://r.example/a\\b", False), ("https://r.example/a\nb", False),
]


@pytest.mark.parametrize(("value", "accepted"), REGISTRY_URLS)
@pytest.mark.parametrize("side", ["source", "destination"])
def test_registry_url(side: str, value: str, accepted: bool) -> None:
    """What the CRD's url pattern admits, the OCI client can talk to, and the other way round."""
    other = {"source": {"registryRef": {"name": "main"}}, "destination": {"registryRef": {"name": "main"}}}
    spec = {**other, side: {"url": value}}
    obj = {"apiVersion": "dockyard.dev/v1alpha1", "kind": "ReplicationPolicy",
           "metadata": {"name": "p", "namespace": "n"}, "spec": spec}
    violations = cel.admit(obj, SCHEMA)
    assert (violations == []) == accepted, f"the CRD {'refuses' if accepted else 'admits'} {value!r}: {violations}"
    try:
        parse(ReplicationPolicySpec, copy.deepcopy(spec))
        error = None
    except SpecError as e:
        error = e
    assert (error is None) == accepted, f"the model {'refuses' if accepted else 'admits'} {value!r}: {error}"
    if error is not None:
        assert error.path == f"spec.{side}.url"
    assert engine_accepts(registry_url, value) == accepted, f"the client disagrees on {value!r}"


@settings(max_examples=3000, deadline=None)
@given(st.sampled_from(["http://", "https://", "HTTP://", "http:/", ""]),
       st.text(alphabet="ab-_.:[]0159/%@?#fF \u00e9\n", max_size=24))
def test_the_url_pattern_and_the_client_agree_on_any_text(scheme: str, rest: str) -> None:
    value = scheme + rest
    assert pattern_matches(URL_PATTERN, value) == engine_accepts(registry_url, value), value


def test_the_client_keeps_the_url_without_a_trailing_slash() -> None:
    assert registry_url("https://r.example/") == "https://r.example"
    assert registry_url("https://r.example/mirror/") == "https://r.example/mirror"
    with pytest.raises(ValueError, match="secretRef"):
        registry_url("https://user:pw@r.example")


# ----------------------------------------------------------------------------- semverRange


def _selector_with_range(text: str) -> TagSelector:
    return TagSelector(semver_range=text)  # what the copy engine and the push receiver build at start-up


SEMVER = [
    (">=1.25.0", True), (">=1.25.0 <2", True), ("^1.2", True), ("~1.2", True), ("~>1.2", True), ("1.x", True),
    ("1.2.X", True), ("*", True), ("v1.2.3", True), ("=1.2.3", True), ("1.2 - 1.4", True),
    (">=1.0.0-rc.1 <1.0.0", True), (">= 1.2", True), ("> = 1.2", True), ("~ > 1", True), ("1 || 2 || >=3.1", True),
    ("\t^1\t", True), ("1.2.3+build.5", True), ("01", True),
    (">=banana", False), ("banana", False), ("", False), ("||", False), ("1 ||", False), (">=", False),
    (">=1 - 2", False), ("1 -2", False), ("1.2.3.4", False), ("=>1", False), (">>1", False), ("> >=1", False),
    ("^~1", False), ("1 >", False), ("1,2", False), (">=1\n", False), ("\u00a01", False), ("\u0661", False),
    ("1 && 2", False),
]


@pytest.mark.parametrize(("value", "accepted"), SEMVER)
def test_semver_range(value: str, accepted: bool) -> None:
    assert_all_agree("filters.tags.semverRange", value, accepted, _selector_with_range)


def test_a_bad_semver_range_is_refused_at_admission_naming_the_field() -> None:
    obj = {"apiVersion": "dockyard.dev/v1alpha1", "kind": "ReplicationPolicy",
           "metadata": {"name": "p", "namespace": "n"}, "spec": _spec("filters.tags.semverRange", ">=banana")}
    assert [v.path for v in cel.admit(obj, SCHEMA)] == ["spec.filters.tags.semverRange"]
    error = model_error("filters.tags.semverRange", ">=banana")
    assert error is not None
    assert error.path == "spec.filters.tags.semverRange"
    with pytest.raises(RangeError):
        _selector_with_range(">=banana")


_RANGE = re2.compile(SEMVER_RANGE_PATTERN)


@settings(max_examples=2000, deadline=None)
@given(st.text(alphabet="<>=^~ \t|-.+vxX*0129arc", max_size=24))
def test_every_range_the_grammar_admits_the_engine_reads(text: str) -> None:
    """The schema pattern never admits a range the engine's reader then fails on."""
    if _RANGE.search(text) is not None:
        SemverRange.read(text)
    else:
        with pytest.raises(RangeError):
            SemverRange.parse(text)


# ----------------------------------------------------------------------------- limits.retry.backoff

BACKOFF = [
    ("2s", True), ("500ms", True), ("1m30s", True), ("1.5h", True), ("0s", True), ("1h2m3s4ms", True),
    ("soon", False), ("2", False), ("2 s", False), ("-1s", False), ("1d", False), (".5s", False), ("2s\n", False),
    ("", False), ("1.s", False), ("\u0661s", False),
]


@pytest.mark.parametrize(("value", "accepted"), BACKOFF)
def test_backoff(value: str, accepted: bool) -> None:
    assert_all_agree("limits.retry.backoff", value, accepted, parse_spec_duration)


# ----------------------------------------------------------------------------- platforms


def _platform(text: str) -> None:
    from dockyard.api.patterns import platform_error

    error = platform_error(text)
    if error is not None:
        raise ValueError(error)
    platform_match([text], {"os": "linux", "architecture": "amd64"})


PLATFORMS = [
    ("linux/amd64", True), ("linux/arm/v7", True), ("windows/amd64", True), ("linux/ppc64le", True),
    ("linux", False), ("linux/", False), ("/amd64", False), ("linux/arm/v7/x", False), ("linux amd64", False),
    (" linux/amd64", False), ("", False),
]


@pytest.mark.parametrize(("value", "accepted"), PLATFORMS)
def test_platforms(value: str, accepted: bool) -> None:
    assert_all_agree("filters.platforms", [value], accepted, _platform, field="spec.filters.platforms[0]")


# ----------------------------------------------------------------------------- tag and repository patterns


def _tag_pattern(text: str) -> None:
    TagSelector(include=(text,)).matches("v1.2.3")


def _repository_glob(text: str) -> None:
    repository_selected("library/nginx", (text,), ())


TAG_PATTERNS = [
    # value, accepted by the model and the engine (the CRD admits every one: see the module's doc)
    ("*", True), ("v1.*", True), ("*-rc*", True), ("[0-9]*", True), ("[!a-z]*", True), ("/^v[0-9]+$/", True),
    ("/^(a+)+$/", True), ("//", True), ("/", True), ("[", True), ("/(?i)^V1/", True), (r"/^\d+\.\d+$/", True),
    (r"/(a)\1/", False), ("/(?!rc)/", False), ("/(?<=v)1/", False), ("/(/", False), ("/[z-a]/", False),
    ("[z-a]*", False), ("/a{2000}/", False),
]


def assert_model_and_engine_agree(section: str, value: str, accepted: bool, read: Any) -> None:
    """The CRD admits every pattern within its length; the model and the engine agree on the rest."""
    for key in ("include", "exclude"):
        path = f"filters.{section}.{key}"
        assert admitted(path, [value])
        error = model_error(path, [value])
        assert (error is None) == accepted, error
        assert engine_accepts(read, value) == accepted
        if error is not None:
            assert error.path == f"spec.{path}[0]"
            assert value in error.message


@pytest.mark.parametrize(("value", "accepted"), TAG_PATTERNS)
def test_tag_patterns(value: str, accepted: bool) -> None:
    assert_model_and_engine_agree("tags", value, accepted, _tag_pattern)


REPOSITORY_GLOBS = [
    ("library/*", True), ("**", True), ("team-?/app", True), ("[a-c]*/x", True), ("library/nginx", True),
    ("[z-a]*", False), ("[]", False),
]


@pytest.mark.parametrize(("value", "accepted"), REPOSITORY_GLOBS)
def test_repository_globs(value: str, accepted: bool) -> None:
    assert_model_and_engine_agree("repositories", value, accepted, _repository_glob)


# ----------------------------------------------------------------------------- RE2 everywhere


@pytest.mark.timeout(10)
def test_a_catastrophic_regex_runs_in_linear_time() -> None:
    """`/^(a+)+$/` takes exponential time on Python's `re`; on RE2 a 10,001-character tag is instant."""
    spec = parse(ReplicationPolicySpec, _spec("filters.tags.include", ["/^(a+)+$/"]))
    selector = TagSelector(spec.filters.tags.include)
    assert not selector.matches("a" * 10_000 + "b")
    assert selector.matches("a" * 10_000)
    assert not TagSelector(exclude=("/^(a+)+$/",)).matches("a" * 10_000)
    assert TagSelector(exclude=("/^(a+)+$/",)).matches("a" * 10_000 + "b")


def _re_calls(path: Path) -> list[str]:
    """Calls of the stdlib `re` whose pattern is neither a literal nor a module constant (`DNS_LABEL_PATTERN`):
    where a user's regex could reach `re`."""
    tree = ast.parse(path.read_text())
    found = []
    for node in ast.walk(tree):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and isinstance(node.func.value, ast.Name) and node.func.value.id == "re"
                and node.func.attr in {"compile", "match", "search", "fullmatch", "findall", "finditer", "sub",
                                       "subn", "split"}
                and not (node.args and (isinstance(node.args[0], ast.Constant)
                                        or (isinstance(node.args[0], ast.Name) and node.args[0].id.isupper())))):
            found.append(f"{path.relative_to(PACKAGE)}:{node.lineno}")
    return found


def test_the_stdlib_re_never_compiles_a_pattern_that_is_not_a_literal() -> None:
    calls = [c for p in sorted(PACKAGE.rglob("*.py")) for c in _re_calls(p)]
    assert calls == []


@pytest.mark.parametrize("module", ["api/patterns.py", "api/schema.py", "api/replication.py",
                                    "replication/filters.py"])
def test_the_modules_reading_user_patterns_do_not_import_re(module: str) -> None:
    tree = ast.parse((PACKAGE / module).read_text())
    names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    names |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert "re" not in names


def _patterns(node: Any) -> list[str]:
    if isinstance(node, dict):
        return ([node["pattern"]] if isinstance(node.get("pattern"), str) else []) + \
            [p for v in node.values() for p in _patterns(v)]
    if isinstance(node, list):
        return [p for v in node for p in _patterns(v)]
    return []


@pytest.mark.parametrize("kind", KINDS, ids=[k.kind for k in KINDS])
def test_every_schema_pattern_compiles_with_re2(kind: Any) -> None:
    patterns = [*_patterns(crd(kind)), CRON_PATTERN, DURATION_PATTERN, QUANTITY_PATTERN]
    assert patterns
    for pattern in patterns:
        re2.compile(pattern)


# ----------------------------------------------------------------------------- cron schedules

REGISTRY_SCHEMA = cel.version_schema(crd(REGISTRY))

SCHEDULES = [
    # dockyard.cron's grammar: the CRD (pattern + backwards-range rule), the model and cron.parse agree.
    ("0 */6 * * *", True), ("* * * * *", True), ("? ? ? ? ?", True), ("0 0 1 1 0", True),
    ("59 23 31 12 6", True), ("0 0 1 1 *", True), ("00 00 01 01 00", True), ("0059 * * * *", True),
    ("60 * * * *", False), ("99 * * * *", False), ("0 24 * * *", False), ("0 0 0 * *", False),
    ("0 0 32 * *", False), ("0 0 * 0 *", False), ("0 0 * 13 *", False), ("0 0 * * 7", False), ("0 0 * * 8", False),
    ("1-5 * * * *", True), ("5-5 * * * *", True), ("5-1 * * * *", False), ("59-0 * * * *", False),
    ("0 10-9 * * *", False), ("0 0 31-1 * *", False), ("0 0 * 12-1 *", False), ("0 0 * * 6-0", False),
    ("*/15 * * * *", True), ("?/15 * * * *", True), ("5/10 * * * *", True), ("10-20/5 * * * *", True),
    ("*/0 * * * *", False), ("*/00 * * * *", False), ("*/007 * * * *", True), ("*/999 * * * *", True),
    ("1-2/0 * * * *", False), ("*/ * * * *", False), ("*/-1 * * * *", False), ("*/1/2 * * * *", False),
    ("1,2,3 * * * *", True), ("1,,2 * * * *", False), (",1 * * * *", False), ("1, * * * *", False),
    ("0-5,10-20/2,*/7,59 * * * *", True), ("1-2-3 * * * *", False), ("-1 * * * *", False), ("1- * * * *", False),
    ("*-5 * * * *", False), ("*5 * * * *", False), ("** * * * *", False),
    ("0 0 * jan *", True), ("0 0 * JAN-Dec *", True), ("0 0 * jan-3 *", True), ("0 0 * mar-feb *", False),
    ("0 0 * 12-jan *", False), ("0 0 * dec/2 *", True), ("0 0 * january *", False), ("0 0 * sun *", False),
    ("0 0 * * sun", True), ("0 0 * * MON-fri", True), ("0 0 * * sat,SUN", True), ("0 0 * * fri-mon", False),
    ("0 0 * * 1-sat", True), ("0 0 * * wed-2", False), ("0 0 * * jan", False), ("0 0 jan * *", False),
    ("jan * * * *", False), ("0 0 * * \u017fun", False), ("0 0 * * \u0661", False), ("\u0661 * * * *", False),
    ("0 0 * * \u00b2", False),
    ("@hourly", True), ("@daily", True), ("@midnight", True), ("@weekly", True), ("@monthly", True),
    ("@yearly", True), ("@annually", True), ("@HOURLY", True), ("  @daily\t", True), ("@every 5m", False),
    ("@reboot", False), ("@", False), ("@daily 0", False), ("@wee\u212aly", False), ("hourly", False),
    ("0 */6 * *", False), ("0 */6 * * * *", False), ("", False), ("   ", False),
    ("  0  12  *  *  *  ", True), ("0\t12\n*\v*\f*\r", True), ("0\u00a012 * * *", False),
    ("0 12 * * *\u2028", False), ("\u30000 12 * * *", False), ("0 12 * * *\n", True),
    ("CRON_TZ=UTC 0 * * *", False), ("TZ=UTC 0 * * * *", False), ("every night", False),
]


def _cron_accepts(schedule: str) -> bool:
    try:
        cron.parse(schedule)
    except cron.CronError:
        return False
    return True


def _registry_admitted(schedule: str) -> bool:
    obj = {"apiVersion": "dockyard.dev/v1alpha1", "kind": "Registry", "metadata": {"name": "r", "namespace": "n"},
           "spec": {"storage": {"pvc": {"size": "1Gi"}}, "garbageCollection": {"schedule": schedule}}}
    return cel.admit(obj, REGISTRY_SCHEMA) == []


def _registry_model_error(schedule: str) -> SpecError | None:
    try:
        parse(RegistrySpec, {"storage": {"pvc": {"size": "1Gi"}}, "garbageCollection": {"schedule": schedule}})
    except SpecError as e:
        return e
    return None


@pytest.mark.parametrize(("value", "accepted"), SCHEDULES)
def test_trigger_schedule(value: str, accepted: bool) -> None:
    assert_all_agree("trigger.schedule", value, accepted, cron.parse)


@pytest.mark.parametrize(("value", "accepted"), SCHEDULES)
def test_garbage_collection_schedule(value: str, accepted: bool) -> None:
    assert _cron_accepts(value) == accepted, f"cron.py {'refuses' if accepted else 'accepts'} {value!r}"
    assert _registry_admitted(value) == accepted, f"the CRD {'refuses' if accepted else 'admits'} {value!r}"
    error = _registry_model_error(value)
    assert (error is None) == accepted, f"the model {'refuses' if accepted else 'admits'} {value!r}: {error}"
    if error is not None:
        assert error.path == "spec.garbageCollection.schedule"


def test_a_schedule_the_engine_refuses_is_reported_with_the_engines_reason() -> None:
    error = model_error("trigger.schedule", "99 * * * *")
    assert error is not None
    assert error.path == "spec.trigger.schedule"


def _cron_value(field: Any) -> st.SearchStrategy[str]:
    names = sorted(field.names)
    value = st.one_of(
        st.integers(max(0, field.low - 2), field.high + 3).map(str),
        st.tuples(st.integers(0, 2), st.integers(field.low, field.high)).map(lambda t: "0" * t[0] + str(t[1])),
        st.sampled_from(names or ["x"]).map(lambda n: "".join(c.upper() if i % 2 else c for i, c in enumerate(n))),
        st.sampled_from(sorted(cron.MONTHS) + sorted(cron.WEEKDAYS)),
    )
    rng = st.one_of(st.sampled_from(["*", "?"]), value, st.tuples(value, value).map(lambda t: f"{t[0]}-{t[1]}"))
    part = st.tuples(rng, st.one_of(st.just(""), st.integers(0, 70).map(lambda s: f"/{s}"))).map("".join)
    return st.lists(part, min_size=1, max_size=3).map(",".join)


SCHEDULE_TEXTS = st.one_of(
    st.tuples(*(_cron_value(f) for f in cron._FIELDS), st.sampled_from([" ", "  ", "\t"])).map(
        lambda t: t[-1].join(t[:-1])),
    st.sampled_from(sorted(cron.MACROS)).map(lambda m: m.upper() if len(m) % 2 else m),
    st.text(alphabet="0123456789*?,-/ @aeJnMOs\t\u00a0\u0661", max_size=24),
    st.text(max_size=16),
)


@settings(max_examples=400, deadline=None)
@given(SCHEDULE_TEXTS)
def test_the_crd_admits_exactly_the_schedules_cron_reads(schedule: str) -> None:
    accepted = _cron_accepts(schedule)
    assert admitted("trigger.schedule", schedule) == accepted, schedule
    assert (model_error("trigger.schedule", schedule) is None) == accepted, schedule
