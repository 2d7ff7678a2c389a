"""Property test of the HTTP surface: whatever a client sends, the server answers with a 2xx,
a 3xx or a well-formed spec error (never a 5xx), keeps serving, never writes outside its
storage root and never stores a blob whose bytes do not match its digest."""

from __future__ import annotations

import hashlib
import http.client
import json
import os
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.registry.conftest import Client, digest_of
from tests.registry.processes import RegistryProcess, start_dockyard

SPEC_CODES = {"BLOB_UNKNOWN", "BLOB_UPLOAD_INVALID", "BLOB_UPLOAD_UNKNOWN", "DIGEST_INVALID",
              "MANIFEST_BLOB_UNKNOWN", "MANIFEST_INVALID", "MANIFEST_UNKNOWN", "NAME_INVALID",
              "NAME_UNKNOWN", "SIZE_INVALID", "UNAUTHORIZED", "DENIED", "UNSUPPORTED", "TOOMANYREQUESTS"}
KNOWN_BLOB = b"fuzz-known-blob"
KNOWN = digest_of(KNOWN_BLOB)

segments = st.one_of(
    st.sampled_from(["fuzz", "fuzz/app", "blobs", "uploads", "manifests", "tags", "list", "referrers",
                     "_catalog", "..", ".", "%2e%2e", "%2F", "..%2F..%2F", "latest", "v1", KNOWN,
                     "sha256:", "sha512:" + "0" * 128, "0" * 32, "UPPER", "a..b", "", "%00", "~"]),
    st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=20),
)
queries = st.dictionaries(
    st.sampled_from(["digest", "mount", "from", "n", "last", "tag", "artifactType"]),
    st.one_of(st.sampled_from([KNOWN, "fuzz", "-1", "0", "3", "sha256:zz", "..", "a+b/c"]),
              st.text(max_size=20)),
    max_size=3)
headers = st.dictionaries(
    st.sampled_from(["Content-Range", "Range", "Content-Type", "Accept", "Authorization"]),
    st.one_of(st.sampled_from(["0-9", "5-2", "bytes=0-1", "bytes=10-", "0-0", "application/json",
                               "application/vnd.oci.image.manifest.v1+json", "Basic Zm9vOmJhcg=="]),
              st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=30)),
    max_size=3)
bodies = st.one_of(st.just(b""), st.binary(max_size=2048), st.just(KNOWN_BLOB),
                   st.builds(lambda d: json.dumps(d).encode(),
                             st.dictionaries(st.sampled_from(["schemaVersion", "mediaType", "config", "layers",
                                                              "manifests", "subject", "annotations"]),
                                             st.one_of(st.integers(), st.text(max_size=10),
                                                       st.just({"digest": KNOWN, "size": 15}),
                                                       st.just([{"digest": KNOWN, "size": 15}])),
                                             max_size=5)))


names = st.one_of(st.sampled_from(["fuzz/app", "fuzz", "fuzz/new", "UPPER", "..", "%2e%2e/x", "a//b", "_x"]),
                  st.text(alphabet="abc./_-%2", min_size=1, max_size=12))
endpoints = st.sampled_from(["blobs", "blobs/uploads", "blobs/uploads/", "manifests", "tags/list", "referrers"])
references = st.one_of(st.sampled_from([KNOWN, "latest", "v1", "", "sha256:x", "0" * 32, "..", "%2F"]),
                       st.text(alphabet="abcdef0123456789:-.", max_size=70))
structured = st.builds(lambda n, e, r: [n, e, r] if r else [n, e], names, endpoints, references)
paths = st.one_of(structured, structured, st.lists(segments, min_size=0, max_size=6))
UPLOADS: list[str] = []


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryProcess]:
    base = tmp_path_factory.mktemp("fuzz")
    with start_dockyard(base / "root") as proc:
        c = Client(proc.url)
        c.push_blob("fuzz/app", KNOWN_BLOB)
        c.push_image("fuzz/app", "latest")
        UPLOADS.extend(c.start_upload("fuzz/app").rsplit("/", 1)[1] for _ in range(20))
        yield proc


def _send(server: RegistryProcess, method: str, path: str, body: bytes,
          hdrs: dict[str, str]) -> tuple[int, str, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        conn.putrequest(method, path, skip_accept_encoding=True)
        for k, v in hdrs.items():
            conn.putheader(k, v)
        conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        r = conn.getresponse()
        return r.status, r.headers.get("Content-Type", ""), r.read()
    finally:
        conn.close()


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(method=st.sampled_from(["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "PROPFIND"]),
       parts=paths, upload=st.integers(0, 19), query=queries, hdrs=headers, body=bodies)
def test_any_request_gets_a_sane_answer(fuzz_server: RegistryProcess, method: str, parts: list[str],
                                        upload: int, query: dict[str, str], hdrs: dict[str, str],
                                        body: bytes) -> None:
    if len(parts) == 3 and parts[1] == "blobs/uploads" and parts[2] == "0" * 32:
        parts = [parts[0], parts[1], UPLOADS[upload]]  # a live upload session
    path = "/v2/" + "/".join(quote(p, safe="%:/") for p in parts)
    if query:
        path += "?" + "&".join(f"{quote(k)}={quote(v, safe='%:/')}" for k, v in query.items())
    status, content_type, data = _send(fuzz_server, method, path, body, hdrs)
    assert status < 500, (method, path, status, data[:300])
    if status >= 400 and data and content_type.startswith("application/json"):
        doc = json.loads(data)
        assert doc["errors"], doc
        for e in doc["errors"]:
            assert e["code"] in SPEC_CODES, e
            assert isinstance(e["message"], str)


def test_after_fuzzing_storage_is_consistent(fuzz_server: RegistryProcess) -> None:
    """Runs after the property test (file order): the server is alive and every blob is intact."""
    c = Client(fuzz_server.url)
    assert c.request("GET", "/v2/").status == 200
    known = c.request("GET", f"/v2/fuzz/app/blobs/{KNOWN}")  # the fuzzer may have deleted it
    assert known.body == KNOWN_BLOB if known.status == 200 else known.error_codes() == ["BLOB_UNKNOWN"]
    root = fuzz_server.root
    for alg in ("sha256", "sha512"):
        for dirpath, _, files in os.walk(root / "blobs" / alg):
            for f in files:
                data = Path(dirpath, f).read_bytes()
                assert hashlib.new(alg, data).hexdigest() == f, f"corrupt blob {alg}:{f}"
    siblings = {p.name for p in root.parent.iterdir()}
    assert siblings <= {"root"} | {p for p in siblings if p.startswith("dockyard-") and p.endswith(".log")}
    assert set(os.listdir(root)) <= {"blobs", "repositories", "uploads", "tmp", "gc"}
    assert not os.listdir(root / "gc" / "intents"), "a push left its GC intent behind"
    assert "Traceback" not in fuzz_server.output(), "the server logged an unhandled exception"
