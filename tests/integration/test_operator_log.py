"""The operator's log: every line once, in one format."""

from __future__ import annotations

from pathlib import Path

from tests.integration.kube import ApiServer, wait_for
from tests.integration.operator import running_operator


async def test_each_message_is_logged_once(apiserver: ApiServer, kubeconfig: Path, tmp_path: Path) -> None:
    log = tmp_path / "operator.log"
    async with running_operator(kubeconfig, log) as op:
        def started() -> bool:
            op.check()
            return "Initial authentication has finished" in op.output()
        await wait_for(started, 60, message="the operator logged in")
    lines = log.read_text().splitlines()
    logins = [line for line in lines if "Initial authentication has finished" in line]
    assert len(logins) == 1, "\n".join(logins)
