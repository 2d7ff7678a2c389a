"""`dockyard replicate` argument handling that needs no registry: where each side of a policy is."""

from __future__ import annotations

from dockyard.api.replication import ReplicationPolicySpec
from dockyard.api.schema import parse
from dockyard.cli import build_parser
from dockyard.replication.cli import resolve_url


def test_sides_resolve_to_urls() -> None:
    spec = parse(ReplicationPolicySpec, {
        "source": {"registryRef": {"name": "main"}},
        "destination": {"registryRef": {"name": "standby", "namespace": "dr"}}})
    assert resolve_url(spec.source, "registries", None) == "http://main.registries.svc:5000"
    assert resolve_url(spec.destination, "registries", None) == "http://standby.dr.svc:5000"
    assert resolve_url(spec.source, "registries", "http://127.0.0.1:5000") == "http://127.0.0.1:5000"
    by_url = parse(ReplicationPolicySpec, {"source": {"url": "https://registry-1.docker.io"},
                                           "destination": {"registryRef": {"name": "main"}}})
    assert resolve_url(by_url.source, "registries", None) == "https://registry-1.docker.io"


def test_replicate_is_a_dockyard_command() -> None:
    args = build_parser().parse_args(["replicate", "-f", "p.yaml", "--dry-run", "--dest-creds", "u:p"])
    assert (args.file, args.dry_run, args.dest_creds, args.chunk_size) == ("p.yaml", True, "u:p", "32Mi")


def test_a_dry_run_summary_says_what_would_happen() -> None:
    from dockyard.replication.cli import dry_run_summary
    from dockyard.replication.result import RunResult

    result = RunResult(skipped=4)
    result.would_copy += ["app:1.0 -> app:1.0", "app:1.1 -> app:1.1"]
    result.would_delete.append("app:0.9")
    line = dry_run_summary(result)
    assert line.startswith("Succeeded (dry run, nothing changed): would copy 2, would delete 1, up to date 4, "
                           "failed 0, duration ")
    assert "would delete" not in dry_run_summary(RunResult())
