"""Access rules and bearer tokens: the decisions the registry makes per request."""

from __future__ import annotations

import pytest

from dockyard.registry.access import ANONYMOUS, AccessPolicy, Identity, Rule
from dockyard.registry.config import ConfigError, parse_config
from dockyard.registry.tokens import TokenError, TokenIssuer, parse_scopes

TEAMS = [
    {"repositories": ["team-a/**"], "groups": ["team-a"], "actions": ["pull", "push", "delete"]},
    {"repositories": ["ci/**"], "serviceAccounts": ["ci/builder"], "actions": ["pull", "push"]},
    {"repositories": ["**"], "users": ["*"], "actions": ["pull"]},
]
ALICE, CAROL = Identity("user", "alice"), Identity("user", "carol")
BUILDER, OTHER_SA = Identity("serviceaccount", "ci/builder"), Identity("serviceaccount", "ci/other")


def _policy(anonymous_pull: bool = False) -> AccessPolicy:
    return AccessPolicy([Rule.of(r) for r in TEAMS], {"team-a": ["alice", "bob"]}, anonymous_pull)


@pytest.mark.parametrize(("who", "repository", "allowed"), [
    (ALICE, "team-a/app", {"pull", "push", "delete"}),
    (ALICE, "team-a/deep/app", {"pull", "push", "delete"}),
    (ALICE, "ci/app", {"pull"}),  # the ci rule does not name alice; the catch-all lets everyone pull
    (CAROL, "team-a/app", {"pull"}),  # not in team-a
    (BUILDER, "ci/app", {"pull", "push"}),
    (BUILDER, "team-a/app", {"pull"}),
    (OTHER_SA, "ci/app", {"pull"}),
    (ANONYMOUS, "team-a/app", set()),
])
def test_first_matching_rule_decides(who: Identity, repository: str, allowed: set[str]) -> None:
    assert _policy().allowed(who, repository) == allowed


def test_no_matching_rule_denies() -> None:
    policy = AccessPolicy([Rule.of({"repositories": ["team-a/**"], "users": ["alice"], "actions": ["pull"]})])
    assert policy.allowed(CAROL, "team-a/app") == frozenset()
    assert policy.allowed(ALICE, "other/app") == frozenset()


def test_anonymous_pull_composes_with_rules_as_pull_of_what_everyone_may_pull() -> None:
    policy = _policy(anonymous_pull=True)
    assert policy.allowed(ANONYMOUS, "team-a/app") == {"pull"}  # the catch-all grants users: ['*'] pull
    restricted = AccessPolicy([Rule.of({"repositories": ["public/**"], "users": ["*"], "actions": ["pull", "push"]}),
                               Rule.of({"repositories": ["**"], "users": ["alice"], "actions": ["pull"]})],
                              anonymous_pull=True)
    assert restricted.allowed(ANONYMOUS, "public/app") == {"pull"}  # never push, whatever the rule says
    assert restricted.allowed(ANONYMOUS, "private/app") == frozenset()


def test_without_rules_authenticated_users_may_do_everything() -> None:
    assert AccessPolicy().allowed(CAROL, "any/thing") == {"pull", "push", "delete"}
    assert AccessPolicy().allowed(ANONYMOUS, "any/thing") == frozenset()
    assert AccessPolicy(anonymous_pull=True).allowed(ANONYMOUS, "any/thing") == {"pull"}


def test_a_hostile_glob_is_matched_in_linear_time() -> None:
    rule = Rule.of({"repositories": ["*" * 200 + "x"], "users": ["*"], "actions": ["pull"]})
    assert AccessPolicy([rule]).allowed(ALICE, "a" * 250) == frozenset()


def test_config_refuses_unknown_actions_undefined_groups_and_empty_rules() -> None:
    with pytest.raises(ConfigError, match=r"access.rules\[0\].actions: unknown action 'write'"):
        parse_config({"access": {"rules": [{"repositories": ["**"], "users": ["*"], "actions": ["write"]}]}})
    with pytest.raises(ConfigError, match="group 'ops' is not defined"):
        parse_config({"access": {"rules": [{"repositories": ["**"], "groups": ["ops"], "actions": ["pull"]}]}})
    with pytest.raises(ConfigError, match=r"access\.rules: expected a non-empty list"):
        parse_config({"access": {"rules": []}})


KEY = b"k" * 32


def test_a_token_grants_exactly_what_it_was_issued_for() -> None:
    issuer = TokenIssuer(KEY, "registry.ns")
    token, lifetime = issuer.issue("alice", {"team-a/app": frozenset({"pull", "push"})})
    grant = issuer.verify(token)
    assert lifetime == 300
    assert grant.subject == "alice"
    assert grant.may("team-a/app", "push")
    assert not grant.may("team-a/app", "delete")
    assert not grant.may("team-a/other", "pull")


@pytest.mark.parametrize("case", ["other key", "other service", "expired", "garbage"])
def test_a_token_from_elsewhere_or_too_old_is_refused(case: str) -> None:
    issuer = TokenIssuer(KEY, "registry.ns")
    token = {
        "other key": TokenIssuer(b"x" * 32, "registry.ns").issue("alice", {})[0],
        "other service": TokenIssuer(KEY, "registry.other").issue("alice", {})[0],
        "expired": TokenIssuer(KEY, "registry.ns", clock=lambda: 1000.0).issue("alice", {})[0],
        "garbage": "not.a.token",
    }[case]
    with pytest.raises(TokenError):
        issuer.verify(token)


def test_scopes_parse_as_clients_send_them() -> None:
    assert parse_scopes(["repository:team-a/app:pull,push", "repository:ci/x:pull registry:catalog:*"]) == {
        "team-a/app": {"pull", "push"}, "ci/x": {"pull"}}
    assert parse_scopes(["repository:a:*"]) == {"a": {"pull", "push", "delete"}}
    assert parse_scopes(["repository:a:write,pull"]) == {"a": {"pull"}}
