"""status.quotas from a registry's usage report, and when a quota counts as nearly full."""

from __future__ import annotations

import pytest

from dockyard.controller.quota_status import newly_full, quantity, quota_status

SPEC = [{"repositories": ["team-a/**"], "limit": "50Gi"}, {"repositories": ["ci/**"], "limit": "1Gi"}]


def test_usage_is_written_next_to_the_spec_limits_in_spec_order() -> None:
    report = [{"repositories": ["ci/**"], "limit": 2**30, "used": 3 * 2**20},
              {"repositories": ["team-a/**"], "limit": 50 * 2**30, "used": 1234}]
    assert quota_status(SPEC, report) == [
        {"repositories": ["team-a/**"], "limit": "50Gi", "used": "1234", "usedBytes": 1234, "limitBytes": 50 * 2**30},
        {"repositories": ["ci/**"], "limit": "1Gi", "used": "3Mi", "usedBytes": 3 * 2**20, "limitBytes": 2**30}]


def test_a_quota_the_registry_does_not_know_yet_is_left_out() -> None:
    assert quota_status(SPEC, [{"repositories": ["ci/**"], "limit": 2**30, "used": 0}])[0]["repositories"] == \
        ["ci/**"]


@pytest.mark.parametrize("report", [None, [{"repositories": "ci/**", "limit": 1, "used": 1}],
                                    [{"repositories": ["ci/**"], "limit": 1, "used": -1}],
                                    [{"repositories": ["ci/**"], "limit": "1Gi", "used": 1}]])
def test_a_malformed_report_is_refused(report: object) -> None:
    with pytest.raises(ValueError, match="quota"):
        quota_status(SPEC, report)


def test_nearly_full_is_announced_once_per_crossing() -> None:
    def status(used: int) -> list[dict[str, object]]:
        return quota_status(SPEC[1:], [{"repositories": ["ci/**"], "limit": 2**30, "used": used}])

    below, above = status(2**29), status(int(0.95 * 2**30))
    assert newly_full(below, above) == ["quota ci/** is at 94 % (1020054732 of 1Gi)"]
    assert newly_full(above, status(int(0.97 * 2**30))) == []
    assert newly_full([], above) == newly_full(below, above)


@pytest.mark.parametrize(("n", "text"), [(0, "0"), (1023, "1023"), (1024, "1Ki"), (3 * 2**20, "3Mi"),
                                         (2**30 + 1, "1073741825")])
def test_quantities_are_exact(n: int, text: str) -> None:
    assert quantity(n) == text
