"""`make e2e` fails when every end-to-end test skipped (no cluster, no root): nothing was tested."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs make")


def make_e2e(tests: Path) -> subprocess.CompletedProcess[str]:
    # -o: the virtualenv stamp counts as up to date, so make never reinstalls anything here.
    return subprocess.run(["make", "-s", "-o", ".venv/.installed", "e2e", f"E2E_TESTS={tests}"], cwd=REPO,
                          capture_output=True, text=True, timeout=120)


def suite(tmp_path: Path, body: str) -> Path:
    tests = tmp_path / "e2e_stand_in"
    tests.mkdir()
    (tests / "test_stand_in.py").write_text("import os\nimport pytest\n\n" + body)
    return tests


def test_all_skipped_fails(tmp_path: Path) -> None:
    out = make_e2e(suite(tmp_path, "def test_a():\n    pytest.skip('no cluster')\n\n"
                                   "def test_b():\n    pytest.skip('no cluster')\n"))
    assert out.returncode != 0
    assert "every end-to-end test was skipped" in out.stderr


def test_some_ran_passes(tmp_path: Path) -> None:
    out = make_e2e(suite(tmp_path, "def test_a():\n    assert os.environ['DOCKYARD_E2E'] == '1'\n\n"
                                   "def test_b():\n    pytest.skip('needs RWX')\n"))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "skipped" not in out.stderr


def test_a_failure_still_fails(tmp_path: Path) -> None:
    out = make_e2e(suite(tmp_path, "def test_a():\n    assert False\n"))
    assert out.returncode != 0
    assert "every end-to-end test was skipped" not in out.stderr
