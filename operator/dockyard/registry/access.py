"""Who may do what: identities and the ordered access rules of `spec.auth.access`.

A request is made by an identity: anonymous, an htpasswd user, or a Kubernetes ServiceAccount
(NAMESPACE/NAME, proven by a TokenReview). The rules are read in order; the first whose
repository globs match the repository and whose subjects include the identity decides which
actions (pull, push, delete) it may do there; no matching rule denies. `users: ["*"]` is
every authenticated identity; anonymous clients (with `anonymousPull`) match only those rules,
and only for pull. Without rules every authenticated identity may do everything and anonymous
clients may pull everything when `anonymousPull` is on (the registry's behaviour before rules).

Globs are compiled with RE2 (`dockyard.api.patterns.glob_regex`): linear time whatever a
namespace's editors write.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any, Literal

from dockyard.api.patterns import glob_regex

ACTIONS = ("pull", "push", "delete")
EVERYTHING = frozenset(ACTIONS)
NOTHING: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Identity:
    kind: Literal["anonymous", "user", "serviceaccount"]
    name: str = ""
    """The htpasswd user name, or NAMESPACE/NAME of a ServiceAccount."""

    @property
    def authenticated(self) -> bool:
        return self.kind != "anonymous"

    def __str__(self) -> str:
        return {"anonymous": "anonymous", "user": f"user {self.name}",
                "serviceaccount": f"serviceaccount {self.name}"}[self.kind]


ANONYMOUS = Identity("anonymous")


@dataclass(frozen=True)
class Rule:
    repositories: tuple[str, ...]
    actions: frozenset[str]
    users: frozenset[str] = NOTHING
    groups: frozenset[str] = NOTHING
    service_accounts: frozenset[str] = NOTHING
    _globs: tuple[Any, ...] = field(default=(), compare=False, repr=False)

    @classmethod
    def of(cls, doc: dict[str, Any]) -> Rule:
        """From the config's camelCase form (the Registry's `auth.access` items)."""
        repositories = tuple(doc["repositories"])
        return cls(repositories, frozenset(doc["actions"]), frozenset(doc.get("users", ())),
                   frozenset(doc.get("groups", ())), frozenset(doc.get("serviceAccounts", ())),
                   tuple(glob_regex(g) for g in repositories))

    def covers(self, repository: str) -> bool:
        return any(g.match(repository) for g in self._globs)


class AccessPolicy:
    """Decides the actions an identity may do on a repository."""

    def __init__(self, rules: list[Rule] | None = None, groups: dict[str, list[str]] | None = None,
                 anonymous_pull: bool = False) -> None:
        self.rules = rules
        self.anonymous_pull = anonymous_pull
        self._member_of: dict[str, frozenset[str]] = {}
        for group, users in (groups or {}).items():
            for user in users:
                self._member_of[user] = self._member_of.get(user, NOTHING) | {group}
        self.allowed = functools.lru_cache(maxsize=8192)(self._allowed)

    def _subject_matches(self, rule: Rule, who: Identity) -> bool:
        if who.kind == "anonymous":
            return self.anonymous_pull and "*" in rule.users
        if "*" in rule.users:
            return True
        if who.kind == "serviceaccount":
            return who.name in rule.service_accounts
        return who.name in rule.users or bool(self._member_of.get(who.name, NOTHING) & rule.groups)

    def _allowed(self, who: Identity, repository: str) -> frozenset[str]:
        """The actions `who` may do on `repository` (cached: rules change only with a restart)."""
        if self.rules is None:
            if who.authenticated:
                return EVERYTHING
            return frozenset({"pull"}) if self.anonymous_pull else NOTHING
        for rule in self.rules:
            if rule.covers(repository) and self._subject_matches(rule, who):
                return rule.actions & {"pull"} if who.kind == "anonymous" else rule.actions
        return NOTHING

    def may(self, who: Identity, repository: str, action: str) -> bool:
        return action in self.allowed(who, repository)
