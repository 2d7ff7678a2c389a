"""`dockyard replicate -f POLICY.yaml | --policy NS/NAME`: one replication pass.

`-f` runs from a workstation with a local state file; `--policy` is what the operator's Jobs
run: the policy, its Secrets and its remembered failures come from the API and the result
goes into the policy's status.

Credentials come from flags or the environment (`DOCKYARD_SOURCE_CREDS`,
`DOCKYARD_DEST_CREDS` as user:password, or `DOCKYARD_SOURCE_DOCKERCONFIG`,
`DOCKYARD_DEST_DOCKERCONFIG` naming a docker config.json). A side given as `registryRef`
needs a URL outside the cluster: `--source-url/--dest-url`, else the in-cluster Service
`http://<name>.<namespace>.svc:5000` is assumed. Exit status: 0 when everything was
copied or up to date, 1 when anything failed, 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any, TextIO

REGISTRY_PORT = 5000


def resolve_url(side: Any, policy_namespace: str, override: str | None) -> str:
    """The URL of one side: the override (ValueError when the client could not use it), the side's url,
    or its Registry's Service."""
    if override:
        from dockyard.oci.client import registry_url

        return registry_url(override)
    if side.url is not None:
        return str(side.url)
    ref = side.registry_ref
    return f"http://{ref.name}.{ref.namespace or policy_namespace}.svc:{REGISTRY_PORT}"


class ProgressBar:
    """A one-line progress bar on a terminal, redrawn at most ten times a second."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.last = 0.0

    def __call__(self, p: Any) -> None:
        from dockyard.replication.result import human_bytes

        now = time.monotonic()
        if now - self.last < 0.1 and p.done < p.total:
            return
        self.last = now
        width = 24
        filled = int(width * p.done / p.total) if p.total else 0
        bar = "#" * filled + "." * (width - filled)
        self.stream.write(f"\r[{bar}] {p.done}/{p.total}  copied {p.copied}  skipped {p.skipped}  "
                          f"failed {p.failed}  {human_bytes(p.bytes)}   ")
        self.stream.flush()

    def clear(self) -> None:
        if self.last:
            self.stream.write("\r\033[K")
            self.stream.flush()


def log_to_stderr() -> None:
    """Warnings from the run (a registry it is waiting for) as `dockyard replicate: ...` lines on stderr.

    In a cluster Job, stderr is the pod's log.
    """
    import logging

    logger = logging.getLogger("dockyard.replicate")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("dockyard replicate: %(message)s"))
        logger.addHandler(handler)
        logger.propagate = False
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.INFO)


def dry_run_summary(result: Any) -> str:
    """`Succeeded (dry run, nothing changed): would copy 3, would delete 1, up to date 10, failed 0, ...`."""
    parts = [f"would copy {len(result.would_copy)}"]
    if result.would_delete:
        parts.append(f"would delete {len(result.would_delete)}")
    parts += [f"up to date {result.skipped}", f"failed {result.failed}", f"duration {result.duration:.1f}s"]
    return f"{result.result} (dry run, nothing changed): " + ", ".join(parts)


def _credentials(flag: str | None, env_creds: str, env_config: str, url: str) -> Any:
    from dockyard.oci.client import Credentials

    text = flag or os.environ.get(env_creds)
    if text:
        return Credentials.parse(text)
    config = os.environ.get(env_config)
    if config:
        return Credentials.from_docker_config(Path(config).read_text(), url)
    return None


def _default_state(namespace: str, name: str) -> Path:
    base = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    return Path(base) / "dockyard" / "replicate" / f"{namespace}-{name}.json"


def _cmd_replicate(args: argparse.Namespace) -> int:
    import asyncio

    import yaml

    from dockyard.api import SpecError
    from dockyard.api.replication import ReplicationPolicySpec
    from dockyard.api.schema import parse
    from dockyard.cli import yaml_problem
    from dockyard.replication.copy import Access, EngineOptions, RunAccess, run_policy
    from dockyard.replication.filters import RangeError
    from dockyard.replication.limits import parse_bytes
    from dockyard.replication.result import summary_line
    from dockyard.replication.state import FileState

    prog = "dockyard replicate"
    log_to_stderr()
    if args.policy:
        from dockyard.controller.runs import main as in_cluster

        try:
            options = EngineOptions(chunk_size=parse_bytes(args.chunk_size), stall_timeout=args.stall_timeout)
        except ValueError as e:
            print(f"{prog}: {e}", file=sys.stderr)
            return 2
        return in_cluster(args.policy, source_url=args.source_url, dest_url=args.dest_url, options=options)
    try:
        with open(args.file) if args.file != "-" else sys.stdin as f:
            docs = [d for d in yaml.safe_load_all(f) if d]
        policies = [d for d in docs if isinstance(d, dict) and d.get("kind") == "ReplicationPolicy"]
        if len(policies) != 1:
            raise SpecError("kind", f"expected one ReplicationPolicy, found {len(policies)}")
        doc = policies[0]
        meta = doc.get("metadata") or {}
        name, namespace = meta.get("name", "policy"), meta.get("namespace", "default")
        spec = parse(ReplicationPolicySpec, doc.get("spec"))
        source_url = resolve_url(spec.source, namespace, args.source_url)
        dest_url = resolve_url(spec.destination, namespace, args.dest_url)
        access = RunAccess(
            Access(source_url, _credentials(args.source_creds, "DOCKYARD_SOURCE_CREDS",
                                            "DOCKYARD_SOURCE_DOCKERCONFIG", source_url),
                   insecure=spec.source.insecure),
            Access(dest_url, _credentials(args.dest_creds, "DOCKYARD_DEST_CREDS",
                                          "DOCKYARD_DEST_DOCKERCONFIG", dest_url),
                   insecure=spec.destination.insecure))
        chunk = parse_bytes(args.chunk_size)
        if chunk < 1024 * 1024 and not os.environ.get("DOCKYARD_ALLOW_SMALL_CHUNKS"):
            raise ValueError("--chunk-size must be at least 1Mi")
    except (OSError, yaml.YAMLError) as e:
        print(f"{prog}: {args.file}: {yaml_problem(e)}", file=sys.stderr)
        return 2
    except (SpecError, RangeError, ValueError) as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return 2
    state = FileState(args.state or _default_state(namespace, name))
    bar = ProgressBar(sys.stderr) if sys.stderr.isatty() and not args.dry_run else None
    options = EngineOptions(chunk_size=chunk, stall_timeout=args.stall_timeout, dry_run=args.dry_run,
                            progress=bar)
    try:
        result = asyncio.run(run_policy(spec, access, state, options))
    except RangeError as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return 2
    if bar:
        bar.clear()
    for line in result.would_copy:
        print(f"copy   {line}")
    for line in result.would_delete:
        print(f"delete {line}")
    for item in result.failed_items:
        print(f"failed {item.repository}:{item.tag}: {item.error}", file=sys.stderr)
    if result.fatal:
        print(f"{prog}: {result.fatal}", file=sys.stderr)
    for note in result.notes:
        print(f"note: {note}")
    print(dry_run_summary(result) if args.dry_run else summary_line(result))
    return 0 if result.result == "Succeeded" else 1


def register(sub: Any) -> None:
    p = sub.add_parser("replicate", help="run one replication pass of a ReplicationPolicy")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("-f", "--file", help="ReplicationPolicy YAML ('-' for stdin)")
    which.add_argument("--policy", metavar="NS/NAME",
                       help="in a cluster Job: read the policy and its Secrets from the API, report into its status")
    p.add_argument("--dry-run", action="store_true", help="list what would be copied and deleted")
    p.add_argument("--source-creds", metavar="USER:PASS", help="source credentials (or DOCKYARD_SOURCE_CREDS)")
    p.add_argument("--dest-creds", metavar="USER:PASS", help="destination credentials (or DOCKYARD_DEST_CREDS)")
    p.add_argument("--source-url", help="source URL, overriding the policy; a registryRef side defaults "
                                        "to its in-cluster Service http://NAME.NAMESPACE.svc:5000")
    p.add_argument("--dest-url", help="destination URL, overriding the policy (same default as --source-url)")
    p.add_argument("--state", help="file remembering failed items between runs "
                                   "(default: ~/.local/state/dockyard/replicate/NS-NAME.json)")
    p.add_argument("--chunk-size", default="32Mi", help="blobs above this size upload in resumable chunks")
    p.add_argument("--stall-timeout", type=float, default=60.0,
                   help="seconds without progress before a transfer is retried (default 60)")
    p.set_defaults(func=_cmd_replicate)
