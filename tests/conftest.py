from __future__ import annotations

from typing import Any

import pytest

from actors import virtual_time_backend

# Real-clock backends and virtual-clock backends. A virtual clock jumps to the next deadline whenever every task
# is blocked, so an hour of timers runs in milliseconds and time-based assertions are exact.
_BACKENDS = ("asyncio", "trio")
_VIRTUAL = ("asyncio+virtual", "trio+virtual")


@pytest.fixture(params=_BACKENDS)
def anyio_backend(request: pytest.FixtureRequest) -> Any:
    """Every async test runs on both backends; a missing trio fails loudly instead of skipping."""
    name: str = request.param
    if name.endswith("+virtual"):
        return virtual_time_backend(name.removesuffix("+virtual"))
    return name


#: Mark an async test (or class) to run on a virtual clock, on asyncio and on trio.
virtual_time = pytest.mark.parametrize("anyio_backend", _VIRTUAL, indirect=True)
