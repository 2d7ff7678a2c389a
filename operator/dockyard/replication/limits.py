"""The copy engine's limits as the policy writes them (durations, byte quantities) and stall detection.

Rate limits, retry delays and Retry-After parsing are `dockyard.oci.backoff`'s.
"""

from __future__ import annotations

import asyncio
import re
from fractions import Fraction

from dockyard.api.registry import quantity_value
from dockyard.api.replication import BANDWIDTH_MESSAGE

_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)")


def parse_spec_duration(text: str) -> float:
    """`2s`, `500ms`, `1m30s` -> seconds."""
    parts = _DURATION_PART.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"not a duration: {text!r} (use e.g. 2s, 500ms, 1m)")
    scale = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
    return sum(float(n) * scale[u] for n, u in parts)


def parse_bytes(text: str) -> int:
    """A quantity such as `50Mi`, `10M` or `1e6` -> whole bytes, as the API server reads it (no blanks around it,
    which the CRD's pattern refuses too)."""
    try:
        value: Fraction | None = quantity_value(text)
    except ValueError:
        value = None
    if value is None or value < 0:
        raise ValueError(f"not a byte quantity: {text!r} (use e.g. 50Mi)")
    return int(value)


def parse_bandwidth(text: str) -> int:
    """`spec.limits.bandwidth` -> bytes per second, at least 1 (the field is omitted for no limit)."""
    value = parse_bytes(text)
    if value < 1:
        raise ValueError(BANDWIDTH_MESSAGE)
    return value


class Stalled(Exception):
    """No byte moved for the stall timeout."""


class ProgressGuard:
    """Abort a transfer only when it stops moving, never because it is long.

    `async with ProgressGuard(30) as guard:` raises `Stalled` when `guard.tick()` was not
    called for 30 seconds; a 20 GB blob that keeps moving is never cut off.
    """

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._cm: asyncio.Timeout | None = None

    async def __aenter__(self) -> ProgressGuard:
        self._cm = asyncio.timeout_at(asyncio.get_running_loop().time() + self.timeout)
        await self._cm.__aenter__()
        return self

    def tick(self) -> None:
        if self._cm is not None:
            self._cm.reschedule(asyncio.get_running_loop().time() + self.timeout)

    async def __aexit__(self, et: type[BaseException] | None, e: BaseException | None, tb: object) -> bool:
        assert self._cm is not None
        try:
            await self._cm.__aexit__(et, e, tb)  # type: ignore[arg-type]
        except TimeoutError as err:
            raise Stalled(f"no progress for {self.timeout:g}s") from err
        return False
