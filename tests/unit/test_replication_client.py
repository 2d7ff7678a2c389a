"""Pure parts of the OCI client: auth challenges, Link headers, credentials from docker configs."""

from __future__ import annotations

import base64
import json

import pytest

from dockyard.oci.client import Credentials, next_link, parse_challenge


def test_bearer_challenge() -> None:
    scheme, params = parse_challenge(
        'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
        'scope="repository:library/nginx:pull"')
    assert scheme == "bearer"
    assert params == {"realm": "https://auth.docker.io/token", "service": "registry.docker.io",
                      "scope": "repository:library/nginx:pull"}
    assert parse_challenge('Basic realm="Registry Realm"') == ("basic", {"realm": "Registry Realm"})


@pytest.mark.parametrize(("header", "expected"), [
    ('</v2/app/tags/list?last=b&n=2>; rel="next"', "http://r:5000/v2/app/tags/list?last=b&n=2"),
    ('<http://other/v2/_catalog?last=x>; rel="next"', "http://other/v2/_catalog?last=x"),
    ('</a>; rel="prev", </b>; rel="next"', "http://r:5000/b"),
    ('</a>; rel="prev"', None),
    (None, None),
])
def test_next_link(header: str | None, expected: str | None) -> None:
    assert next_link(header, "http://r:5000") == expected


def test_credentials_from_docker_config() -> None:
    auth = base64.b64encode(b"robot:pa:ss").decode()
    config = {"auths": {
        "registry.example.com": {"auth": auth},
        "https://index.docker.io/v1/": {"username": "hubuser", "password": "hubtoken"},
        "127.0.0.1:5000": {"auth": base64.b64encode(b"local:pw").decode()},
    }}
    assert Credentials.from_docker_config(config, "https://registry.example.com") == Credentials("robot", "pa:ss")
    assert Credentials.from_docker_config(json.dumps(config), "https://registry-1.docker.io") == \
        Credentials("hubuser", "hubtoken")
    assert Credentials.from_docker_config(config, "http://127.0.0.1:5000") == Credentials("local", "pw")
    assert Credentials.from_docker_config(config, "https://elsewhere.io") is None


def test_credentials_flag_form() -> None:
    assert Credentials.parse("user:p:w") == Credentials("user", "p:w")
    with pytest.raises(ValueError, match="user:password"):
        Credentials.parse("nopassword")
    assert Credentials("a", "b").basic() == "Basic " + base64.b64encode(b"a:b").decode()
