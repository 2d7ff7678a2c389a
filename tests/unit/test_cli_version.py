"""`dockyard --version`."""

from __future__ import annotations

import subprocess
import sys

from dockyard.cli import version


def test_version_prints_the_installed_version() -> None:
    out = subprocess.run([sys.executable, "-m", "dockyard.cli", "--version"], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"dockyard {version()}"
    assert version()[0].isdigit()
