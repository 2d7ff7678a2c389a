"""oras (the Python client, PyPI `oras`): artifacts attached to an image through `subject`.

This is how signatures and SBOMs travel with an image: the artifact manifest names the image in
`subject`, the registry answers `OCI-Subject` and lists the artifact in the referrers API
(`GET /v2/<name>/referrers/<digest>`), filtered by `artifactType`. Two artifacts are pushed with
the two ways an artifact type is spelled (config media type, and an explicit `artifactType`
over the empty config), discovered, filtered and pulled back byte for byte.
"""

from __future__ import annotations

import hashlib
import json
import urllib.parse
from pathlib import Path
from typing import Any

from oras.client import OrasClient
from oras.oci import Subject

from tests.registry import images
from tests.registry.conftest import OCI_INDEX, OCI_MANIFEST
from tests.registry.images import write_layout
from tests.registry.processes import Registries, request, skopeo

SBOM_TYPE = "application/vnd.dockyard.test.sbom.v1+json"
SIGNATURE_TYPE = "application/vnd.dockyard.test.signature.v1"
EMPTY = "application/vnd.oci.empty.v1+json"


def referrers(url: str, repo: str, digest: str,
              artifact_type: str | None = None) -> tuple[dict[str, Any], str]:
    """The referrers index for DIGEST and the `OCI-Filters-Applied` header."""
    query = "?" + urllib.parse.urlencode({"artifactType": artifact_type}) if artifact_type else ""
    got = request("GET", f"{url}/v2/{repo}/referrers/{digest}{query}")
    assert got.status == 200, f"referrers API answered {got.status}: {got.body[:300]!r}"
    assert got.headers.get_content_type() == OCI_INDEX
    return got.json(), got.headers.get("OCI-Filters-Applied", "")


def test_artifacts_with_subject_are_discovered_and_pulled(tmp_path: Path) -> None:
    img = images.image(seed=31)
    layout = write_layout(tmp_path / "layout", {"v1": img})
    sbom_file = tmp_path / "sbom.spdx.json"
    sbom_file.write_bytes(json.dumps({"spdxVersion": "SPDX-2.3", "name": "app",
                                      "packages": [{"name": f"pkg{n}"} for n in range(20000)]}).encode())
    sbom_config = tmp_path / "sbom-config.json"
    sbom_config.write_bytes(b'{"generator": "dockyard-tests"}')
    signature_file = tmp_path / "signature.bin"
    signature_file.write_bytes(b"\x00signature of " + img.digest.encode() + b"\xff")

    with Registries(tmp_path) as regs:
        server = regs.dockyard()
        skopeo("copy", "--insecure-policy", "--dest-tls-verify=false", f"oci:{layout}:v1",
               f"docker://{server.host}/apps/web:v1", workdir=tmp_path)
        client = OrasClient(hostname=server.host, insecure=True)
        subject = Subject(mediaType=OCI_MANIFEST, digest=img.digest, size=img.manifest.size)

        # An SBOM whose type is its config media type; its layer goes up in PATCH chunks.
        pushed = client.push(target=f"{server.host}/apps/web:sbom",
                             files=[f"{sbom_file}:application/spdx+json"],
                             manifest_config=f"{sbom_config}:{SBOM_TYPE}", subject=subject,
                             disable_path_validation=True, do_chunked=True, chunk_size=256 * 1024,
                             manifest_annotations={"org.opencontainers.image.title": "sbom"}, quiet=True)
        assert pushed.status_code == 201
        assert pushed.headers.get("OCI-Subject") == img.digest, "a registry that handles subject says so"
        sbom_digest = pushed.headers["Docker-Content-Digest"]

        # A signature with an explicit artifactType over the empty config, pushed with oras' primitives.
        container = client.get_container(f"{server.host}/apps/web:sig")
        empty_config = tmp_path / "empty.json"
        empty_config.write_bytes(b"{}")
        config_desc = {"mediaType": EMPTY, "digest": "sha256:" + _sha256(b"{}"), "size": 2}
        layer_desc = {"mediaType": "application/octet-stream",
                      "digest": "sha256:" + _sha256(signature_file.read_bytes()),
                      "size": signature_file.stat().st_size}
        assert client.upload_blob(str(empty_config), container, config_desc).status_code in (200, 201)
        assert client.upload_blob(str(signature_file), container, layer_desc).status_code in (200, 201)
        signature_manifest = {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": SIGNATURE_TYPE,
                              "config": config_desc, "layers": [layer_desc], "subject": subject.__dict__,
                              "annotations": {"dev.dockyard.test": "signature"}}
        sig = client.upload_manifest(signature_manifest, container)
        assert sig.status_code == 201
        assert sig.headers.get("OCI-Subject") == img.digest
        signature_digest = sig.headers["Docker-Content-Digest"]

        everything, filters = referrers(server.url, "apps/web", img.digest)
        assert filters == ""
        found = {d["digest"]: d for d in everything["manifests"]}
        assert set(found) == {sbom_digest, signature_digest}
        assert found[sbom_digest]["artifactType"] == SBOM_TYPE
        assert found[sbom_digest]["annotations"] == {"org.opencontainers.image.title": "sbom"}
        assert found[signature_digest]["artifactType"] == SIGNATURE_TYPE
        assert found[signature_digest]["annotations"] == {"dev.dockyard.test": "signature"}
        for digest, desc in found.items():
            assert desc["mediaType"] == OCI_MANIFEST
            raw = request("GET", f"{server.url}/v2/apps/web/manifests/{digest}",
                          headers={"Accept": OCI_MANIFEST})
            assert desc["size"] == len(raw.body)

        only_sboms, filters = referrers(server.url, "apps/web", img.digest, SBOM_TYPE)
        assert filters == "artifactType"
        assert [d["digest"] for d in only_sboms["manifests"]] == [sbom_digest]
        only_sigs, _ = referrers(server.url, "apps/web", img.digest, SIGNATURE_TYPE)
        assert [d["digest"] for d in only_sigs["manifests"]] == [signature_digest]
        none, _ = referrers(server.url, "apps/web", img.digest, "application/vnd.nobody.uses.this")
        assert none["manifests"] == []
        unrelated, _ = referrers(server.url, "apps/web", img.config.digest)
        assert unrelated["manifests"] == [], "a digest nothing refers to has an empty referrers list"

        out = tmp_path / "pulled"
        files = client.pull(target=f"{server.host}/apps/web@{sbom_digest}", outdir=str(out))
        assert [Path(f).name for f in files] == [sbom_file.name]
        assert Path(files[0]).read_bytes() == sbom_file.read_bytes()
        manifest = client.get_manifest(f"{server.host}/apps/web@{signature_digest}")
        assert manifest["subject"]["digest"] == img.digest
        assert client.get_blob(container, layer_desc["digest"]).content == signature_file.read_bytes()


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
