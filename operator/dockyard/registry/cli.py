"""`dockyard registry serve` and `dockyard registry gc`: the registry's command line.

The operator runs `serve --config /etc/dockyard/config.yaml`; flags override the file.
Bad flags or config values are one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import errno
import os
import sys
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dockyard.registry.config import HTTPLimits


def _fail(message: str) -> int:
    print(f"dockyard registry: error: {message}", file=sys.stderr)
    return 2


def _http_flags(args: argparse.Namespace, http: HTTPLimits) -> HTTPLimits:
    """The connection limits with the flags that were given applied over the config's."""
    from dockyard.registry.config import positive_duration, positive_int

    given: dict[str, Any] = {}
    for flag, field, parse in (("--header-timeout", "header_timeout", positive_duration),
                               ("--idle-timeout", "idle_timeout", positive_duration),
                               ("--body-timeout", "body_timeout", positive_duration),
                               ("--max-connections", "max_connections", positive_int)):
        value = getattr(args, field)
        if value is not None:
            given[field] = parse(value, flag)
    return replace(http, **given)


def _cmd_serve(args: argparse.Namespace) -> int:
    from dockyard.registry.config import ConfigError, ServeConfig, load_config, parse_addr

    try:
        cfg = load_config(Path(args.config)) if args.config else ServeConfig()
        addr = args.addr if args.addr is not None else os.environ.get("DOCKYARD_ADDR") or None
        if addr is not None:
            host, port = parse_addr(addr, "--addr" if args.addr is not None else "DOCKYARD_ADDR")
            cfg = replace(cfg, host=host, port=port)
        if args.root is not None:
            cfg = replace(cfg, root=Path(args.root))
        if args.htpasswd is not None:
            cfg = replace(cfg, htpasswd=Path(args.htpasswd))
        if args.anonymous_pull:
            cfg = replace(cfg, anonymous_pull=True)
        if args.read_only:
            cfg = replace(cfg, read_only=True)
        cfg = replace(cfg, http=_http_flags(args, cfg.http))
        if (args.tls_cert is None) != (args.tls_key is None):
            raise ConfigError("--tls-cert and --tls-key must be given together")
        if args.tls_cert is not None:
            cfg = replace(cfg, tls_cert=Path(args.tls_cert), tls_key=Path(args.tls_key))
        if cfg.anonymous_pull and cfg.htpasswd is None:
            raise ConfigError("anonymousPull: needs htpasswd (without it every request is anonymous)")
        for key, path in (("htpasswd", cfg.htpasswd), ("tls.cert", cfg.tls_cert), ("tls.key", cfg.tls_key)):
            if path is not None and not path.is_file():
                raise ConfigError(f"{key}: {path} is not a readable file")
        cfg.root.mkdir(parents=True, exist_ok=True)
    except ConfigError as e:
        return _fail(str(e))
    except OSError as e:
        return _fail(f"root: cannot create {cfg.root}: {e.strerror}")

    from dockyard.registry.memory import bound_allocator_caches
    from dockyard.registry.server import serve

    bound_allocator_caches()
    try:
        return serve(cfg)
    except OSError as e:
        if e.errno not in (errno.EADDRINUSE, errno.EADDRNOTAVAIL, errno.EACCES):
            raise
        reason = "the port is taken" if e.errno == errno.EADDRINUSE else os.strerror(e.errno).lower()
        return _fail(f"cannot listen on {cfg.host}:{cfg.port}: {reason}; choose another address with "
                     "--addr HOST:PORT or DOCKYARD_ADDR (make run DOCKYARD_ADDR=127.0.0.1:5001)")


def _cmd_gc(args: argparse.Namespace) -> int:
    from dockyard.registry.config import ConfigError, ServeConfig, load_config, parse_config_duration
    from dockyard.registry.drivers import StorageUnavailable
    from dockyard.registry.gc import GCBusy, collect
    from dockyard.registry.server import open_storage

    if (args.root is None) == (args.config is None):
        return _fail("give the storage as exactly one of --root DIR or --config FILE")
    try:
        grace = parse_config_duration(args.grace_period, "--grace-period")
        if args.config is not None:
            storage = open_storage(load_config(Path(args.config)))
        elif not Path(args.root).is_dir():
            return _fail(f"--root: {args.root} is not a directory")
        else:
            storage = open_storage(ServeConfig(root=Path(args.root)))
    except (ConfigError, ValueError) as e:
        return _fail(str(e))
    try:
        report = collect(storage, grace=grace, delete_untagged=args.delete_untagged, dry_run=args.dry_run)
    except (GCBusy, StorageUnavailable) as e:
        print(f"dockyard registry gc: {e}", file=sys.stderr)
        return 1
    finally:
        storage.driver.close()
    print(report.to_json() if args.json else report.summary())
    return 0


def register(sub: Any) -> None:
    reg = sub.add_parser("registry", help="the embedded OCI registry")
    reg_sub = reg.add_subparsers(dest="registry_command", required=True, metavar="COMMAND",
                                 parser_class=type(reg))
    serve = reg_sub.add_parser("serve", help="serve the OCI Distribution API")
    serve.add_argument("--config", help="YAML config file (the operator's ConfigMap); flags override it")
    serve.add_argument("--addr", help="listen address HOST:PORT (default: DOCKYARD_ADDR, else the config's, "
                                      "else 0.0.0.0:5000)")
    serve.add_argument("--root", help="storage directory (default /var/lib/registry)")
    serve.add_argument("--htpasswd", help="bcrypt htpasswd file; re-read when it changes")
    serve.add_argument("--anonymous-pull", action="store_true", help="allow pulls without credentials")
    serve.add_argument("--read-only", action="store_true",
                       help="maintenance mode: refuse pushes and deletes, skip scheduled GC")
    serve.add_argument("--header-timeout", help="close a connection whose request headers take longer "
                                                "(default 30s)")
    serve.add_argument("--idle-timeout", help="close a connection with no request for this long (default 120s)")
    serve.add_argument("--body-timeout", help="close a request whose body sends nothing for this long "
                                              "(default 60s)")
    serve.add_argument("--max-connections", help="close new connections beyond this many (default 1024)")
    serve.add_argument("--tls-cert", help="TLS certificate (PEM)")
    serve.add_argument("--tls-key", help="TLS private key (PEM)")
    serve.set_defaults(func=_cmd_serve)

    gc = reg_sub.add_parser("gc", help="delete blobs (and optionally manifests) nothing references")
    gc.add_argument("--root", help="storage directory")
    gc.add_argument("--config", help="the registry's YAML config (its storage: root or storage.s3)")
    gc.add_argument("--dry-run", action="store_true", help="report what would be deleted, delete nothing")
    gc.add_argument("--delete-untagged", action="store_true", help="also delete manifests no tag reaches")
    gc.add_argument("--grace-period", default="1h", help="never delete anything younger (default 1h)")
    gc.add_argument("--json", action="store_true", help="print the report as JSON")
    gc.set_defaults(func=_cmd_gc)
