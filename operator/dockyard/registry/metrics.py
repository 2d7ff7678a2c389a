"""Prometheus metrics in the text exposition format, written by hand (no client library).

Counters of requests by method and status, bytes received and sent, a histogram of
blob upload durations (session start to verified commit), push notifications for the operator
by result, and webhook deliveries by webhook and outcome, with the depth of each queue.

Nothing here names a repository, tag or user, which is why /metrics needs no credentials even
when the registry has an htpasswd file (see `dockyard.registry.app`); keep it that way. The quota
gauges carry the quotas' repository globs and the webhook series the webhooks' names: the
operator's configuration (the Registry's spec), not names clients pushed.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from typing import Any

UPLOAD_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0)
NOTIFICATION_RESULTS = ("sent", "retried", "dropped")
WEBHOOK_OUTCOMES = ("delivered", "retried", "dropped")


class Metrics:
    def __init__(self) -> None:
        self.requests: defaultdict[tuple[str, int], int] = defaultdict(int)
        self.bytes_in = 0
        self.bytes_out = 0
        self.upload_counts = [0] * len(UPLOAD_BUCKETS)
        self.upload_sum = 0.0
        self.upload_total = 0
        self.gc_runs = 0
        self.gc_bytes_freed = 0
        self.gc_skipped = 0
        self.storage_full = False
        self.storage_bytes: tuple[int, int | None] | None = None
        """(used, capacity) of the storage; a bucket has no capacity."""
        """(used, capacity) of the storage's filesystem, when the usage reporter has measured it."""
        self.catalog_walks = 0
        """Set when a write ran out of space (ENOSPC, EDQUOT); cleared by the next successful write."""
        self.notifications = dict.fromkeys(NOTIFICATION_RESULTS, 0)
        self.reports = dict.fromkeys(NOTIFICATION_RESULTS, 0)
        self.quotas: Callable[[], list[dict[str, Any]]] | None = None
        """Usage per quota (`QuotaBook.report`) when quotas are configured."""
        self.notification_depth: Callable[[], int] | None = None
        self.webhook_deliveries: dict[str, dict[str, int]] = {}
        self.webhook_depths: dict[str, Callable[[], int]] = {}

    def webhook(self, name: str, depth: Callable[[], int]) -> Callable[[str], None]:
        """Register a webhook's queue; returns the counter of its delivery outcomes."""
        counts = self.webhook_deliveries.setdefault(name, dict.fromkeys(WEBHOOK_OUTCOMES, 0))
        self.webhook_depths[name] = depth

        def count(outcome: str) -> None:
            counts[outcome] += 1
        return count

    def catalog_walked(self) -> None:
        self.catalog_walks += 1

    def request(self, method: str, status: int, bytes_out: int) -> None:
        self.requests[(method, status)] += 1
        self.bytes_out += bytes_out

    def received(self, n: int) -> None:
        self.bytes_in += n

    def upload(self, seconds: float) -> None:
        self.upload_total += 1
        self.upload_sum += seconds
        for i, bound in enumerate(UPLOAD_BUCKETS):
            if seconds <= bound:
                self.upload_counts[i] += 1

    def report(self, result: str) -> None:
        """A usage report (storage, quotas) for the operator was sent, will be retried, or was dropped."""
        self.reports[result] += 1

    def notification(self, result: str) -> None:
        """A push event was sent, will be retried, or was dropped (queue full, refused, retried too long)."""
        self.notifications[result] += 1

    def render(self) -> str:
        out = [
            "# HELP dockyard_registry_http_requests_total HTTP requests by method and status code.",
            "# TYPE dockyard_registry_http_requests_total counter",
        ]
        for (method, status), n in sorted(self.requests.items()):
            out.append(f'dockyard_registry_http_requests_total{{method="{method}",code="{status}"}} {n}')
        out += [
            "# HELP dockyard_registry_received_bytes_total Blob and manifest bytes received.",
            "# TYPE dockyard_registry_received_bytes_total counter",
            f"dockyard_registry_received_bytes_total {self.bytes_in}",
            "# HELP dockyard_registry_sent_bytes_total Response bytes sent, headers included.",
            "# TYPE dockyard_registry_sent_bytes_total counter",
            f"dockyard_registry_sent_bytes_total {self.bytes_out}",
            "# HELP dockyard_registry_upload_duration_seconds Blob uploads, from session start to commit.",
            "# TYPE dockyard_registry_upload_duration_seconds histogram",
        ]
        for bound, n in zip(UPLOAD_BUCKETS, self.upload_counts, strict=True):
            out.append(f'dockyard_registry_upload_duration_seconds_bucket{{le="{bound}"}} {n}')
        out += [
            f'dockyard_registry_upload_duration_seconds_bucket{{le="+Inf"}} {self.upload_total}',
            f"dockyard_registry_upload_duration_seconds_sum {self.upload_sum}",
            f"dockyard_registry_upload_duration_seconds_count {self.upload_total}",
            "# HELP dockyard_registry_gc_runs_total Completed garbage collection runs.",
            "# TYPE dockyard_registry_gc_runs_total counter",
            f"dockyard_registry_gc_runs_total {self.gc_runs}",
            "# HELP dockyard_registry_gc_freed_bytes_total Bytes freed by garbage collection.",
            "# TYPE dockyard_registry_gc_freed_bytes_total counter",
            f"dockyard_registry_gc_freed_bytes_total {self.gc_bytes_freed}",
            "# HELP dockyard_registry_gc_skipped_total Scheduled collections skipped in read-only mode.",
            "# TYPE dockyard_registry_gc_skipped_total counter",
            f"dockyard_registry_gc_skipped_total {self.gc_skipped}",
            "# HELP dockyard_registry_catalog_walks_total Walks over every repository to list the catalog.",
            "# TYPE dockyard_registry_catalog_walks_total counter",
            f"dockyard_registry_catalog_walks_total {self.catalog_walks}",
            "# HELP dockyard_registry_storage_full 1 when the last write hit a full disk or quota, else 0.",
            "# TYPE dockyard_registry_storage_full gauge",
            f"dockyard_registry_storage_full {int(self.storage_full)}",
            *self._storage_lines(),
            "# HELP dockyard_registry_notifications_total Push events for the operator, by result.",
            "# TYPE dockyard_registry_notifications_total counter",
        ]
        for result, n in self.notifications.items():
            out.append(f'dockyard_registry_notifications_total{{result="{result}"}} {n}')
        out += ["# HELP dockyard_registry_reports_total Usage reports (storage, quotas) for the operator, by result.",
                "# TYPE dockyard_registry_reports_total counter"]
        out += [f'dockyard_registry_reports_total{{result="{result}"}} {n}' for result, n in self.reports.items()]
        if self.quotas is not None:
            out += self._quota_lines(self.quotas())
        if self.notification_depth is not None:
            out += [
                "# HELP dockyard_registry_notification_queue_depth Events waiting for the operator.",
                "# TYPE dockyard_registry_notification_queue_depth gauge",
                f"dockyard_registry_notification_queue_depth {self.notification_depth()}",
            ]
        if self.webhook_deliveries:
            out += [
                "# HELP dockyard_registry_webhook_deliveries_total Webhook deliveries by webhook and outcome.",
                "# TYPE dockyard_registry_webhook_deliveries_total counter",
            ]
            for name, counts in sorted(self.webhook_deliveries.items()):
                for outcome, n in counts.items():
                    labels = f'webhook="{name}",outcome="{outcome}"'
                    out.append(f"dockyard_registry_webhook_deliveries_total{{{labels}}} {n}")
            out += [
                "# HELP dockyard_registry_webhook_queue_depth Events waiting for each webhook, the one in delivery "
                "included.",
                "# TYPE dockyard_registry_webhook_queue_depth gauge",
            ]
            for name, depth in sorted(self.webhook_depths.items()):
                out.append(f'dockyard_registry_webhook_queue_depth{{webhook="{name}"}} {depth()}')
        return "\n".join(out) + "\n"

    def _storage_lines(self) -> list[str]:
        if self.storage_bytes is None:
            return []
        used, capacity = self.storage_bytes
        lines = [
            "# HELP dockyard_registry_storage_used_bytes Bytes used on the storage's filesystem, or by the "
            "blobs in the bucket.",
            "# TYPE dockyard_registry_storage_used_bytes gauge",
            f"dockyard_registry_storage_used_bytes {used}",
        ]
        if capacity is not None:
            lines += [
                "# HELP dockyard_registry_storage_capacity_bytes Size of the storage's filesystem.",
                "# TYPE dockyard_registry_storage_capacity_bytes gauge",
                f"dockyard_registry_storage_capacity_bytes {capacity}",
            ]
        return lines

    @staticmethod
    def _quota_lines(report: list[dict[str, Any]]) -> list[str]:
        labels = [f'quota="{i}",repositories="{label_value(",".join(q["repositories"]))}"'
                  for i, q in enumerate(report, start=1)]
        out = ["# HELP dockyard_registry_quota_used_bytes Bytes the repositories of each quota hold "
               "(a blob shared by several counts once).",
               "# TYPE dockyard_registry_quota_used_bytes gauge"]
        out += [f"dockyard_registry_quota_used_bytes{{{lbl}}} {q['used']}"
                for lbl, q in zip(labels, report, strict=True)]
        out += ["# HELP dockyard_registry_quota_limit_bytes The limit of each quota.",
                "# TYPE dockyard_registry_quota_limit_bytes gauge"]
        out += [f"dockyard_registry_quota_limit_bytes{{{lbl}}} {q['limit']}"
                for lbl, q in zip(labels, report, strict=True)]
        return out


def label_value(value: str) -> str:
    """A label value escaped for the text exposition format: backslash, double quote, line feed."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
