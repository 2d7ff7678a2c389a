"""A Registry's `status.quotas`, from the usage its registry reports (`dev.dockyard.registry.quota`).

The registry counts every quota's bytes (`dockyard.registry.quotas`) and reports them when they
change; the operator writes them next to the spec's limits and posts one Warning Event
`QuotaNearlyFull` when a quota crosses 90 % of its limit (again only after it went below).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

NEARLY_FULL = 0.9
_BINARY = (("Ei", 2**60), ("Pi", 2**50), ("Ti", 2**40), ("Gi", 2**30), ("Mi", 2**20), ("Ki", 2**10))


def quantity(n: int) -> str:
    """Bytes as an exact Kubernetes quantity, with the largest binary suffix that divides them."""
    for suffix, size in _BINARY:
        if n and n % size == 0:
            return f"{n // size}{suffix}"
    return str(n)


def _usage(report: Any) -> list[tuple[list[str], int, int]]:
    """The report's quotas as (repositories, limit, used); ValueError when it is not one."""
    if not isinstance(report, list):
        raise ValueError("quotas must be a list")
    out = []
    for q in report:
        if not (isinstance(q, dict) and isinstance(q.get("repositories"), list)
                and all(isinstance(r, str) for r in q["repositories"])
                and type(q.get("limit")) is int and type(q.get("used")) is int and q["used"] >= 0):
            raise ValueError("each quota needs repositories (strings), limit and used (integers)")
        out.append((q["repositories"], q["limit"], q["used"]))
    return out


def quota_status(spec_quotas: Sequence[Mapping[str, Any]], report: Any) -> list[dict[str, Any]]:
    """status.quotas: the spec's quotas in order, each with the usage the registry reported for it."""
    usage = {tuple(repos): (limit, used) for repos, limit, used in _usage(report)}
    out = []
    for q in spec_quotas:
        repositories = list(q.get("repositories") or [])
        found = usage.get(tuple(repositories))
        if found is not None:
            out.append({"repositories": repositories, "limit": str(q.get("limit")), "used": quantity(found[1]),
                        "usedBytes": found[1], "limitBytes": found[0]})
    return out


def newly_full(old: Sequence[Mapping[str, Any]], new: Sequence[Mapping[str, Any]]) -> list[str]:
    """Messages for the quotas that crossed NEARLY_FULL since the old status."""
    def full(q: Mapping[str, Any]) -> bool:
        limit = q.get("limitBytes")
        return isinstance(limit, int) and limit > 0 and int(q.get("usedBytes") or 0) >= NEARLY_FULL * limit

    before = {tuple(q.get("repositories") or ()) for q in old if full(q)}
    return [f"quota {', '.join(q['repositories'])} is at {100 * q['usedBytes'] // q['limitBytes']} % "
            f"({q['used']} of {q['limit']})" for q in new if full(q) and tuple(q["repositories"]) not in before]
