"""Access rules with real clients: who may push, pull and delete where, with basic and token auth.

The registry runs with the rules of the Registry example `examples/registry-teams.yaml`
(team-a owns `team-a/**`, everyone may pull everything) and either basic authentication or
the token flow (`WWW-Authenticate: Bearer`, `/token`). skopeo and oras, clients nobody here
wrote, push, pull and delete as alice (team-a), bob (team-a) and carol (no team); what the
rules allow works, what they do not is refused with a clear error and leaves nothing behind.
"""

from __future__ import annotations

import base64
import json
import secrets
from collections.abc import Iterator
from pathlib import Path

import bcrypt
import pytest
import yaml
from oras.client import OrasClient

from tests.registry import images
from tests.registry.conftest import Client
from tests.registry.images import write_layout
from tests.registry.processes import RegistryProcess, request, skopeo, start_dockyard

USERS = {"alice": "alice-pass", "bob": "bob-pass", "carol": "carol-pass"}
TEAMS_RULES = [
    {"repositories": ["team-a/**"], "groups": ["team-a"], "actions": ["pull", "push", "delete"]},
    {"repositories": ["ci/**"], "serviceAccounts": ["ci/builder"], "actions": ["pull", "push"]},
    {"repositories": ["**"], "users": ["*"], "actions": ["pull"]},
]


def _htpasswd(path: Path) -> Path:
    path.write_text("".join(f"{u}:{bcrypt.hashpw(p.encode(), bcrypt.gensalt(rounds=5)).decode()}\n"
                            for u, p in USERS.items()))
    return path


def _start(tmp_path: Path, mode: str, rules: list[dict[str, list[str]]], *, anonymous_pull: bool = False
           ) -> RegistryProcess:
    config: dict[str, object] = {
        "htpasswd": str(_htpasswd(tmp_path / "htpasswd")), "anonymousPull": anonymous_pull,
        "access": {"groups": {"team-a": ["alice", "bob"]}, "rules": rules},
    }
    if mode == "token":
        key = tmp_path / "signing-key"
        key.write_text(secrets.token_urlsafe(48))
        config["token"] = {"keyFile": str(key), "service": "registry.test", "lifetime": "5m"}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return start_dockyard(tmp_path / "root", "--config", str(path))


@pytest.fixture(params=["basic", "token"])
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def teams(mode: str, tmp_path: Path) -> Iterator[RegistryProcess]:
    with _start(tmp_path, mode, TEAMS_RULES) as server:
        yield server


def _layout(tmp_path: Path, seed: int) -> tuple[Path, str]:
    img = images.image(seed=seed, layers=2)
    return write_layout(tmp_path / f"layout-{seed}", {"v1": img}), img.digest


def _push(tmp_path: Path, server: RegistryProcess, user: str, repo: str, seed: int = 1) -> tuple[int, str]:
    layout, _ = _layout(tmp_path, seed)
    done = skopeo("copy", "--insecure-policy", "--dest-tls-verify=false", f"--dest-creds={user}:{USERS[user]}",
                  f"oci:{layout}:v1", f"docker://{server.host}/{repo}:v1", workdir=tmp_path, check=False)
    return done.returncode, done.stderr.decode(errors="replace")


def _tags(server: RegistryProcess, user: str, repo: str) -> list[str] | None:
    r = Client(server.url, (user, USERS[user])).request("GET", f"/v2/{repo}/tags/list")
    return r.json()["tags"] if r.status == 200 else None


def test_alice_pushes_to_her_team_and_not_to_ci(teams: RegistryProcess, mode: str, tmp_path: Path) -> None:
    rc, err = _push(tmp_path, teams, "alice", "team-a/app")
    assert rc == 0, err
    rc, err = _push(tmp_path, teams, "alice", "ci/app", seed=2)
    assert rc != 0
    assert "denied" in err.lower() or "unauthorized" in err.lower(), err
    assert _tags(teams, "alice", "ci/app") is None, "a refused push left a repository behind"
    if mode == "token":
        assert "GET /token" in teams.output() or '"path":"/token"' in teams.output(), \
            "skopeo should have fetched a token"


def test_everyone_pulls_but_only_the_team_pushes_and_deletes(teams: RegistryProcess, tmp_path: Path) -> None:
    rc, err = _push(tmp_path, teams, "alice", "team-a/app")
    assert rc == 0, err
    out = tmp_path / "pulled"
    skopeo("copy", "--insecure-policy", "--src-tls-verify=false", f"--src-creds=carol:{USERS['carol']}",
           f"docker://{teams.host}/team-a/app:v1", f"oci:{out}:v1", workdir=tmp_path)
    rc, err = _push(tmp_path, teams, "carol", "team-a/app", seed=3)
    assert rc != 0, "carol is not in team-a"
    refused = skopeo("delete", "--tls-verify=false", f"--creds=carol:{USERS['carol']}",
                     f"docker://{teams.host}/team-a/app:v1", workdir=tmp_path, check=False)
    assert refused.returncode != 0
    assert _tags(teams, "carol", "team-a/app") == ["v1"]
    skopeo("delete", "--tls-verify=false", f"--creds=bob:{USERS['bob']}",
           f"docker://{teams.host}/team-a/app:v1", workdir=tmp_path)
    assert _tags(teams, "carol", "team-a/app") == []


def test_a_basic_auth_refusal_names_the_action_and_repository(tmp_path: Path) -> None:
    with _start(tmp_path, "basic", TEAMS_RULES) as server:
        r = Client(server.url, ("carol", USERS["carol"])).request("POST", "/v2/team-a/app/blobs/uploads/")
        assert r.status == 403
        assert r.error_codes() == ["DENIED"]
        assert "user carol may not push team-a/app" in r.body.decode()
        wrong = Client(server.url, ("carol", "nope")).request("GET", "/v2/team-a/app/tags/list")
        assert wrong.status == 401


def test_the_token_flow_grants_only_what_the_rules_allow(tmp_path: Path) -> None:
    with _start(tmp_path, "token", TEAMS_RULES) as server:
        anon = request("POST", f"{server.url}/v2/team-a/app/blobs/uploads/")
        assert anon.status == 401
        challenge = anon.headers["WWW-Authenticate"]
        assert challenge.startswith(f'Bearer realm="{server.url}/token",service="registry.test"')
        assert 'scope="repository:team-a/app:pull,push"' in challenge
        creds = base64.b64encode(f"carol:{USERS['carol']}".encode()).decode()
        got = request("GET", f"{server.url}/token?service=registry.test&scope=repository:team-a/app:pull,push",
                      headers={"Authorization": f"Basic {creds}"})
        assert got.status == 200
        token = got.json()["token"]
        claims = json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "=="))
        assert claims["access"] == [{"type": "repository", "name": "team-a/app", "actions": ["pull"]}]
        bearer = {"Authorization": f"Bearer {token}"}
        assert request("GET", f"{server.url}/v2/team-a/app/tags/list", headers=bearer).status in (200, 404)
        push = request("POST", f"{server.url}/v2/team-a/app/blobs/uploads/", headers=bearer)
        assert push.status == 401
        assert 'error="insufficient_scope"' in push.headers["WWW-Authenticate"]
        forged = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
        assert request("GET", f"{server.url}/v2/team-a/app/tags/list",
                       headers={"Authorization": f"Bearer {forged}"}).status == 401
        basic = request("GET", f"{server.url}/token?service=registry.test&scope=repository:team-a/app:pull",
                        headers={"Authorization": "Basic " + base64.b64encode(b"carol:wrong").decode()})
        assert basic.status == 401


def test_oras_pushes_and_pulls_with_scoped_tokens(tmp_path: Path) -> None:
    with _start(tmp_path, "token", TEAMS_RULES) as server:
        payload = tmp_path / "notes.txt"
        payload.write_bytes(b"release notes\n")
        alice = OrasClient(hostname=server.host, insecure=True)
        alice.login(username="alice", password=USERS["alice"], hostname=server.host, tls_verify=False)
        alice.push(target=f"{server.host}/team-a/notes:v1", files=[str(payload)], disable_path_validation=True)
        carol = OrasClient(hostname=server.host, insecure=True)
        carol.login(username="carol", password=USERS["carol"], hostname=server.host, tls_verify=False)
        pulled = carol.pull(target=f"{server.host}/team-a/notes:v1", outdir=str(tmp_path / "out"))
        assert [Path(p).read_bytes() for p in pulled] == [b"release notes\n"]
        with pytest.raises(ValueError, match=r"(?i)denied|unauthorized|403|401"):
            carol.push(target=f"{server.host}/team-a/notes:v2", files=[str(payload)], disable_path_validation=True)
        assert carol.get_tags(f"{server.host}/team-a/notes") == ["v1"]


def test_the_catalog_lists_only_what_the_caller_may_pull(tmp_path: Path) -> None:
    rules = [{"repositories": ["team-a/**"], "groups": ["team-a"], "actions": ["pull", "push"]},
             {"repositories": ["public/**"], "users": ["*"], "actions": ["pull", "push"]}]
    with _start(tmp_path, "basic", rules, anonymous_pull=True) as server:
        alice, carol = Client(server.url, ("alice", USERS["alice"])), Client(server.url, ("carol", USERS["carol"]))
        alice.push_image("team-a/secret", "v1")
        carol.push_image("public/app", "v1")
        assert alice.request("GET", "/v2/_catalog").json()["repositories"] == ["public/app", "team-a/secret"]
        assert carol.request("GET", "/v2/_catalog").json()["repositories"] == ["public/app"]
        assert carol.request("GET", "/v2/team-a/secret/tags/list").status == 403
        anon = Client(server.url)
        assert anon.request("GET", "/v2/public/app/tags/list").json()["tags"] == ["v1"]
        assert anon.request("GET", "/v2/team-a/secret/tags/list").status == 401
        assert anon.request("POST", "/v2/public/app/blobs/uploads/").status == 401, "anonymous never pushes"
