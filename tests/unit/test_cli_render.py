"""`dockyard render` refuses bad input with one line naming the problem and exit code 2."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from dockyard.cli import main

REGISTRY = {"apiVersion": "dockyard.dev/v1alpha1", "kind": "Registry",
            "metadata": {"name": "main", "namespace": "registries"},
            "spec": {"storage": {"emptyDir": {"sizeLimit": "1Gi"}}}}


def render(tmp_path: Path, text: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    file = tmp_path / "in.yaml"
    file.write_text(text)
    code = main(["render", "-f", str(file)])
    out, err = capsys.readouterr()
    return code, out, err


def with_(**changes: object) -> str:
    doc = {**REGISTRY, **changes}
    return yaml.safe_dump(doc)


def test_a_valid_registry_renders(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = render(tmp_path, with_(), capsys)
    assert (code, err) == (0, "")
    assert "kind: StatefulSet" in out or "kind: Deployment" in out


@pytest.mark.parametrize(("changes", "expected"), [
    ({"metadata": {"name": "Bad_Name"}}, "Registry metadata.name: 'Bad_Name' is not a valid name"),
    ({"metadata": {"name": "main", "namespace": "Reg"}}, "Registry metadata.namespace: 'Reg' is not a valid name"),
    ({"metadata": {"name": "x" * 64}}, "at most 63 characters"),
    ({"metadata": {}}, "Registry metadata.name: is required"),
    ({"apiVersion": "dockyard.dev/v1"},
     "Registry apiVersion: 'dockyard.dev/v1' is not 'dockyard.dev/v1alpha1'; dockyard.dev serves"),
    ({"apiVersion": None}, "Registry apiVersion: None is not 'dockyard.dev/v1alpha1'"),
])
def test_bad_names_and_versions_are_one_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                        changes: dict[str, object], expected: str) -> None:
    code, out, err = render(tmp_path, with_(**changes), capsys)
    assert code == 2
    assert out == ""
    assert err.count("\n") == 1
    assert err.startswith("dockyard render: ")
    assert expected in err


def test_a_policy_with_a_bad_name_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    policy = {"apiVersion": "dockyard.dev/v1alpha1", "kind": "ReplicationPolicy",
              "metadata": {"name": "Nightly_Mirror"},
              "spec": {"source": {"url": "https://a.example"}, "destination": {"url": "https://b.example"}}}
    code, _, err = render(tmp_path, yaml.safe_dump(policy), capsys)
    assert code == 2
    assert "ReplicationPolicy metadata.name: 'Nightly_Mirror' is not a valid name" in err


@pytest.mark.parametrize(("text", "expected"), [
    ("kind: Registry\nmetadata: {name: main\nspec: {}\n", "line 3, column 5: "),
    ("kind: Registry\nmetadata:\n  name: a: b\n", "line 3, column 10: mapping values are not allowed here"),
])
def test_yaml_syntax_errors_keep_line_and_column(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                 text: str, expected: str) -> None:
    code, out, err = render(tmp_path, text, capsys)
    assert code == 2
    assert out == ""
    assert err.count("\n") == 1
    assert expected in err
    assert str(tmp_path / "in.yaml") in err


def test_the_s3_example_renders_its_bucket_its_secret_and_a_disruption_budget(
        capsys: pytest.CaptureFixture[str]) -> None:
    example = Path(__file__).parents[2] / "examples" / "registry-s3.yaml"
    assert main(["render", "-f", str(example)]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    objs = {d["kind"]: d for d in yaml.safe_load_all(out)}
    assert set(objs) == {"ServiceAccount", "ConfigMap", "Deployment", "Service", "PodDisruptionBudget"}
    config = yaml.safe_load(objs["ConfigMap"]["data"]["config.yaml"])
    assert config["storage"]["s3"] == {"bucket": "images", "endpoint": "http://minio.storage.svc:9000",
                                       "forcePathStyle": True, "insecure": False, "redirect": False,
                                       "credentialsDir": "/etc/dockyard/s3-credentials"}
    deployment = objs["Deployment"]["spec"]
    assert deployment["replicas"] == 3
    assert deployment["strategy"]["type"] == "RollingUpdate"
    volumes = {v["name"]: v for v in deployment["template"]["spec"]["volumes"]}
    assert volumes["s3-credentials"]["secret"]["secretName"] == "s3-credentials"
    assert "persistentVolumeClaim" not in volumes["data"]

