"""`dockyard operator run` and `dockyard render`: the operator's command-line surface."""

from __future__ import annotations

import argparse
import sys
from typing import Any


def _secret_data(doc: dict[str, Any]) -> dict[str, str]:
    """A Secret's `data` as the API server stores it (stringData folded in, base64)."""
    import base64

    data = {k: str(v) for k, v in (doc.get("data") or {}).items()}
    for key, value in (doc.get("stringData") or {}).items():
        data[key] = base64.b64encode(str(value).encode()).decode()
    return data


def check_object(doc: dict[str, Any]) -> None:
    """What the API server would refuse before Dockyard's schema: apiVersion and object names.

    Raises SpecError naming the kind and the field.
    """
    import re

    from dockyard.api import API_VERSION, GROUP, SpecError
    from dockyard.api.schema import DNS_LABEL_PATTERN

    kind = doc.get("kind")
    api_version = doc.get("apiVersion")
    if api_version != API_VERSION:
        served = f"; {GROUP} serves {API_VERSION}" if str(api_version or "").startswith(f"{GROUP}/") else ""
        raise SpecError(f"{kind} apiVersion", f"{api_version!r} is not {API_VERSION!r}{served}")
    meta = doc.get("metadata")
    if not isinstance(meta, dict):
        raise SpecError(f"{kind} metadata", "is required (a mapping with at least name)")
    for key in ("name", "namespace"):
        value = meta.get(key)
        if value is None and key == "namespace":
            continue
        if not isinstance(value, str) or not value:
            raise SpecError(f"{kind} metadata.{key}", "is required")
        if len(value) > 63 or not re.match(DNS_LABEL_PATTERN, value):
            raise SpecError(f"{kind} metadata.{key}",
                            f"{value!r} is not a valid name: lowercase letters, digits and '-', starting and "
                            "ending with a letter or digit, at most 63 characters")


def _cmd_render(args: argparse.Namespace) -> int:
    import yaml

    from dockyard.api import SpecError
    from dockyard.cli import yaml_problem
    from dockyard.controller.reconcile import events_url_from_environment
    from dockyard.render import RenderInput, render_registry
    from dockyard.render.replication import PolicyInput, render_policy

    try:
        with open(args.file) if args.file != "-" else sys.stdin as f:
            docs = [d for d in yaml.safe_load_all(f) if d]
    except (OSError, yaml.YAMLError) as e:
        print(f"dockyard render: {args.file}: {yaml_problem(e)}", file=sys.stderr)
        return 2
    secrets = {d["metadata"]["name"]: _secret_data(d) for d in docs
               if isinstance(d, dict) and d.get("kind") == "Secret" and (d.get("metadata") or {}).get("name")}
    objects: list[dict[str, Any]] = []
    try:
        registries = [d for d in docs if isinstance(d, dict) and d.get("kind") == "Registry"]
        policies = [d for d in docs if isinstance(d, dict) and d.get("kind") == "ReplicationPolicy"]
        if not registries and not policies:
            raise SpecError("kind", "no Registry or ReplicationPolicy in the file")
        for doc in registries + policies:
            check_object(doc)
        events_url = events_url_from_environment()
        for doc in registries:
            objects.extend(render_registry(RenderInput.from_body(doc, image=args.image, secrets=secrets,
                                                                 events_url=events_url)))
        known = {((d.get("metadata") or {}).get("namespace") or "default", d["metadata"]["name"]): d
                 for d in registries}
        for doc in policies:
            try:
                policy = PolicyInput.from_body(doc, registries=known, image=args.image)
            except KeyError as e:
                namespace, name = e.args[0]
                raise SpecError("spec", f"references Registry {namespace}/{name}, which is not in the file; "
                                        "add it to render the policy") from None
            objects.extend(render_policy(policy))
    except SpecError as e:
        print(f"dockyard render: {args.file}: {e}", file=sys.stderr)
        return 2
    sys.stdout.write(yaml.dump_all(objects, Dumper=_make_dumper(), sort_keys=False))
    return 0


def _block_str(dumper: Any, value: str) -> Any:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


def _make_dumper() -> Any:
    import yaml

    class BlockDumper(yaml.SafeDumper):
        """Multi-line strings (the registry config) as readable literal blocks."""

    BlockDumper.add_representer(str, _block_str)
    return BlockDumper


def _cmd_operator_run(args: argparse.Namespace) -> int:
    from dockyard.controller.main import run

    return run(namespaces=args.namespace, all_namespaces=args.all_namespaces,
               liveness=args.liveness, verbose=args.verbose)


def register(sub: Any) -> None:
    render = sub.add_parser("render", help="print the objects the operator would apply for Registries and "
                                           "ReplicationPolicies",
                            description="Print the objects the operator would apply for the Registries and "
                            "ReplicationPolicies in FILE (a policy's registryRef must name a Registry in the "
                            "same file). With DOCKYARD_EVENTS_URL set, as in the operator's Deployment, "
                            "registries are configured to post push events (their token Secrets are not "
                            "printed). Runs started by hand or by pushes are Jobs and are not printed.")
    render.add_argument("-f", "--file", required=True,
                        help="YAML of Registries, ReplicationPolicies and the Secrets they use ('-' for stdin)")
    render.add_argument("--image", default=None, help="registry image (default: the operator's image)")
    render.set_defaults(func=_cmd_render)

    op = sub.add_parser("operator", help="the Kubernetes operator")
    op_sub = op.add_subparsers(dest="operator_command", required=True, metavar="COMMAND",
                               parser_class=type(op))
    run = op_sub.add_parser("run", help="run the operator against the cluster in your kubeconfig")
    scope = run.add_mutually_exclusive_group()
    scope.add_argument("-n", "--namespace", action="append", default=[], help="watch this namespace")
    scope.add_argument("-A", "--all-namespaces", action="store_true", help="watch every namespace")
    run.add_argument("--liveness", default="http://0.0.0.0:8080/healthz", help="liveness endpoint URL")
    run.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    run.set_defaults(func=_cmd_operator_run)
