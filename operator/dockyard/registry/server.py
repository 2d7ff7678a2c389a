"""Running the registry: listener, TLS, JSON access logs, htpasswd polling, scheduled GC, events and
webhooks, quota usage walks.

`serve(config)` blocks until SIGTERM or SIGINT. Access logs are one JSON object per request
on stderr; the same hook feeds the request metrics so both count exactly what was sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import logging
import signal
import ssl
import sys
import time
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from dockyard.registry.access import AccessPolicy, Rule
from dockyard.registry.app import RegistryService
from dockyard.registry.auth import Htpasswd
from dockyard.registry.config import ServeConfig
from dockyard.registry.connections import ConnectionFactory, DescriptorExhaustionLog, track_requests
from dockyard.registry.drivers import StorageUnavailable, Usage
from dockyard.registry.gc import collect, recover
from dockyard.registry.metrics import Metrics
from dockyard.registry.notify import Notifier
from dockyard.registry.quotas import RESCAN_SECONDS, QuotaBook
from dockyard.registry.serviceaccounts import TokenReviewer
from dockyard.registry.storage import FilesystemStorage, Storage
from dockyard.registry.tokens import TokenIssuer
from dockyard.registry.webhooks import Events

log = logging.getLogger("dockyard.registry")
access = logging.getLogger("dockyard.registry.access")


class JsonAccessLogger(AbstractAccessLogger):
    """One JSON line per request; also counts the request in /metrics."""

    metrics: Metrics | None = None  # set by `access_logger_for`

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        size = response.body_length
        if self.metrics is not None:
            self.metrics.request(request.method, response.status, size)
        if not self.logger.isEnabledFor(logging.INFO):
            return
        self.logger.info(json.dumps({
            "ts": round(_now(), 3), "remote": request.remote, "method": request.method,
            "path": request.path[:512], "status": response.status, "bytes": size,
            "duration_ms": round(time * 1000, 2), "user_agent": request.headers.get("User-Agent", "")[:200],
        }, separators=(",", ":")))

    @property
    def enabled(self) -> bool:
        return True


def access_logger_for(metrics: Metrics) -> type[JsonAccessLogger]:
    # aiohttp instantiates the class itself; requests it could not parse have no app to ask
    return type("RegistryAccessLogger", (JsonAccessLogger,), {"metrics": metrics})


def _now() -> float:
    return time.time()


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {"ts": round(record.created, 3), "level": record.levelname,
                               "logger": record.name, "message": record.getMessage()}
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return json.dumps(doc)


def _setup_logging() -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    access.addHandler(handler)
    access.setLevel(logging.INFO)
    access.propagate = False
    root = logging.StreamHandler(sys.stderr)
    root.setFormatter(JsonFormatter())
    logging.basicConfig(level=logging.INFO, handlers=[root])


def _event(message: str, **fields: Any) -> None:
    print(json.dumps({"ts": round(_now(), 3), "event": message, **fields}), file=sys.stderr, flush=True)


async def _poll_htpasswd(registry: RegistryService, htpasswd: Htpasswd) -> None:
    loop = asyncio.get_running_loop()
    while True:
        await asyncio.sleep(1.0)
        with contextlib.suppress(Exception):
            if await loop.run_in_executor(registry.executor, htpasswd.reload_if_changed):
                _event("htpasswd reloaded", path=str(htpasswd.path))


async def _gc_loop(registry: RegistryService, cfg: ServeConfig) -> None:
    """Collect on the configured schedule; in read-only mode skip every run (logged once).

    GC deletes files, and read-only mode promises that nothing changes on disk: it is for
    maintenance such as backups and migrations, which must see a storage root that stands still.
    """
    assert cfg.gc is not None
    loop = asyncio.get_running_loop()
    said_skipped = False
    while True:
        delay = cfg.gc.next_delay(datetime.datetime.now(datetime.UTC))
        if delay is None:
            _event("gc never runs: the schedule matches no time", schedule=cfg.gc.schedule)
            return
        await asyncio.sleep(delay)
        if registry.read_only:
            registry.metrics.gc_skipped += 1
            if not said_skipped:
                _event("gc skipped: the registry is read-only; scheduled runs are skipped until it is not")
                said_skipped = True
            continue
        try:
            report = await loop.run_in_executor(
                registry.pools.walks,
                lambda: collect(registry.storage, grace=cfg.gc.grace_period if cfg.gc else 3600.0,
                                delete_untagged=cfg.gc.delete_untagged if cfg.gc else False))
        except Exception as e:  # keep serving; the next run may succeed
            _event("gc failed", error=str(e))
            continue
        registry.quota_rescan.set()  # what the pass deleted no longer counts against a quota
        registry.metrics.gc_runs += 1
        registry.metrics.gc_bytes_freed += report.bytes_freed
        _event("gc", summary=report.summary(), blobs_deleted=report.blobs_deleted,
               bytes_freed=report.bytes_freed, manifests_deleted=report.manifests_deleted)


QUOTA_REPORT_SECONDS = 15.0


async def _report_quota_usage(book: QuotaBook, notifier: Notifier, interval: float = QUOTA_REPORT_SECONDS) -> None:
    """Tell the operator each quota's usage when it changed, at most every INTERVAL."""
    last: list[dict[str, Any]] | None = None
    while True:
        if book.ready:
            report = book.report()
            if report != last:
                notifier.quota_usage(report)
                last = report
        await asyncio.sleep(interval)


STORAGE_REPORT_STEP = 0.01  # of the capacity: smaller changes of the used bytes are not reported
STORAGE_CHECK_SECONDS = 10.0
OBJECT_STORE_USAGE_SECONDS = 300.0  # the used bytes of a bucket are a listing of every blob


@dataclass(frozen=True)
class StorageUsage:
    used: int
    capacity: int | None
    full: bool

    def differs(self, other: StorageUsage | None) -> bool:
        """Worth reporting: the first, a flipped full flag, a new capacity, or a percent's change of use."""
        if other is None or other.full != self.full or other.capacity != self.capacity:
            return True
        return abs(other.used - self.used) >= STORAGE_REPORT_STEP * (self.capacity or max(self.used, 1))

    def report(self) -> dict[str, Any]:
        out: dict[str, Any] = {"usedBytes": self.used, "full": self.full}
        if self.capacity is not None:
            out["capacityBytes"] = self.capacity
        return out


async def _watch_storage(registry: RegistryService, notifier: Notifier | None, recovered: bool,
                         interval: float = QUOTA_REPORT_SECONDS) -> None:
    """Check that the storage answers, and tell the operator how full it is.

    A storage that does not answer (an object store's wrong endpoint, keys or bucket) is logged
    once per change with its one-line reason and reported to the operator, which shows it as
    `Stalled` (StorageUnavailable); the process keeps running and retries every
    STORAGE_CHECK_SECONDS, so fixing the Secret or the endpoint needs no restart loop. What a
    GC pass that died had set aside is put back the first time the storage answers, unless start-up
    did it (RECOVERED). Usage is
    reported when it changed by a percent or more (of the used bytes, for a bucket, which has
    no capacity).
    """
    driver = registry.storage.driver
    last: StorageUsage | dict[str, Any] | None = None
    next_usage = 0.0
    while True:
        try:
            await registry.run(driver.check)
            if not recovered:
                restored = await registry.run(recover, registry.storage)
                recovered = True
                if restored:
                    _event("gc: put back what an interrupted pass had set aside", objects=restored)
            if time.monotonic() >= next_usage:
                usage: Usage = await registry.run(driver.usage)
                now = StorageUsage(usage.used, usage.capacity, registry.metrics.storage_full)
                registry.metrics.storage_bytes = (now.used, now.capacity)
                next_usage = time.monotonic() + (interval if usage.capacity is not None
                                                 else OBJECT_STORE_USAGE_SECONDS)
                if isinstance(last, dict):
                    _event("storage available again", storage=driver.kind)
                if not isinstance(last, StorageUsage) or now.differs(last):
                    if notifier is not None:
                        notifier.storage_usage(now.report())
                    last = now
        except (StorageUnavailable, OSError) as e:
            error: dict[str, Any] = {"error": str(e)[:1000]}
            if error != last:
                _event("storage unavailable", storage=driver.kind, error=error["error"])
                if notifier is not None:
                    notifier.storage_usage(error)
                last = error
            next_usage = 0.0
        await asyncio.sleep(STORAGE_CHECK_SECONDS if isinstance(last, dict) else min(interval, STORAGE_CHECK_SECONDS))


async def _quota_loop(registry: RegistryService, book: QuotaBook, interval: float = RESCAN_SECONDS) -> None:
    """Count quota usage from the storage at start-up, every INTERVAL and after each GC pass.

    Between walks the book follows this process's own writes; the walks bring in what GC and
    other replicas on shared storage changed.
    """
    loop = asyncio.get_running_loop()
    while True:
        try:
            await loop.run_in_executor(registry.pools.walks, book.rescan)
        except Exception as e:  # keep serving; the next walk may succeed
            _event("quota usage walk failed", error=str(e))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(registry.quota_rescan.wait(), interval)
        registry.quota_rescan.clear()


def access_policy(cfg: ServeConfig) -> AccessPolicy:
    rules = None if cfg.access.rules is None else [Rule.of(r) for r in cfg.access.rules]
    return AccessPolicy(rules, cfg.access.groups, cfg.anonymous_pull)


async def _serve(cfg: ServeConfig, storage: Storage, htpasswd: Htpasswd | None,
                 ssl_context: ssl.SSLContext | None, tokens: TokenIssuer | None,
                 reviewer: TokenReviewer | None, recovered: bool) -> None:
    registry = RegistryService(storage, htpasswd=htpasswd, anonymous_pull=cfg.anonymous_pull, read_only=cfg.read_only,
                               access=access_policy(cfg), tokens=tokens, reviewer=reviewer, quotas=cfg.quotas)
    notifier = Notifier(cfg.notify, registry.metrics) if cfg.notify is not None else None
    if notifier is not None or cfg.webhooks:
        registry.events = Events(cfg, registry.metrics, notifier)
        await registry.events.start()
    app = registry.application(track_requests)
    handler_args: dict[str, Any] = {"access_log_class": access_logger_for(registry.metrics), "access_log": access}
    runner = web.AppRunner(app, handle_signals=False, **handler_args)
    await runner.setup()
    assert runner.server is not None
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(DescriptorExhaustionLog())
    listener = await loop.create_server(ConnectionFactory(runner.server, cfg.http, handler_args), cfg.host,
                                        cfg.port, ssl=ssl_context, backlog=1024)
    tasks = []
    if htpasswd is not None:
        tasks.append(asyncio.create_task(_poll_htpasswd(registry, htpasswd)))
    if cfg.gc is not None:
        tasks.append(asyncio.create_task(_gc_loop(registry, cfg)))
    if registry.quotas is not None:
        tasks.append(asyncio.create_task(_quota_loop(registry, registry.quotas)))
        if notifier is not None:
            tasks.append(asyncio.create_task(_report_quota_usage(registry.quotas, notifier)))
    tasks.append(asyncio.create_task(_watch_storage(registry, notifier, recovered)))
    _event("serving", addr=f"{cfg.host}:{cfg.port}", storage=describe_storage(cfg), tls=ssl_context is not None,
           auth=htpasswd is not None, anonymous_pull=cfg.anonymous_pull, read_only=cfg.read_only,
           gc=cfg.gc is not None, notify=cfg.notify.url if cfg.notify else None, quotas=len(cfg.quotas),
           webhooks=[w.name for w in cfg.webhooks])
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        for t in tasks:
            t.cancel()
        listener.close()
        await runner.cleanup()
        if registry.events is not None:
            await registry.events.close()
        if reviewer is not None:
            await reviewer.close()
        _event("stopped")


def serve(cfg: ServeConfig) -> int:
    _setup_logging()
    # Everything that touches files happens here, before the event loop starts.
    try:
        storage = open_storage(cfg)
    except (OSError, ValueError) as e:
        print(f"dockyard registry: error: storage: {e}", file=sys.stderr)
        return 2
    recovered = True
    try:  # an object store that does not answer yet: the storage watch puts it back later
        restored = recover(storage)
    except StorageUnavailable:
        restored, recovered = 0, False
    if restored:
        _event("gc: put back what an interrupted pass had set aside", objects=restored)
    htpasswd = Htpasswd(cfg.htpasswd) if cfg.htpasswd else None
    ssl_context = None
    if cfg.tls_cert and cfg.tls_key:
        ssl_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ssl_context.load_cert_chain(str(cfg.tls_cert), str(cfg.tls_key))
    tokens = None
    if cfg.token is not None:
        tokens = TokenIssuer(cfg.token.key_file.read_bytes().strip(), cfg.token.service, cfg.token.lifetime)
    try:
        reviewer = TokenReviewer(cfg.service_accounts) if cfg.service_accounts else None
    except ValueError as e:
        print(f"dockyard registry: error: {e}", file=sys.stderr)
        return 2
    try:
        asyncio.run(_serve(cfg, storage, htpasswd, ssl_context, tokens, reviewer, recovered))
    finally:
        storage.driver.close()
    return 0


def open_storage(cfg: ServeConfig) -> Storage:
    """The layout on the configured driver: `storage.s3`'s bucket, or the filesystem under `root`."""
    if cfg.s3 is None:
        return FilesystemStorage(cfg.root)
    from dockyard.registry.s3 import S3Driver  # the S3 client loads only when used

    keys = {}
    if cfg.s3.credentials_dir is not None:
        for name in ("accessKeyId", "secretAccessKey"):
            path = cfg.s3.credentials_dir / name
            try:
                keys[name] = path.read_text().strip()
            except OSError as e:
                raise ValueError(f"storage.s3.credentialsDir: cannot read {path}: {e.strerror}") from None
    return Storage(S3Driver(cfg.s3, keys.get("accessKeyId"), keys.get("secretAccessKey")))


def describe_storage(cfg: ServeConfig) -> str:
    if cfg.s3 is None:
        return str(cfg.root)
    return f"s3://{cfg.s3.bucket}/{cfg.s3.prefix}" + (f" at {cfg.s3.endpoint}" if cfg.s3.endpoint else "")
