"""Tests that the exchange source's reconciler stops when cancelled (issue 7 fault matrix).

Found by the fault matrix with protective actions: SIGINT landing as the venue announced an
order's fill left the daemon hung in shutdown (killed after 10 s). On Python 3.11,
`asyncio.wait_for` returns the inner result and drops the caller's cancellation when both
happen in one loop iteration (cpython#86296, fixed in 3.12), so the reconciler's wait for a
stream trigger swallowed the TaskGroup's only cancel and looped on.
"""

from __future__ import annotations

import asyncio

import pytest

from tests.fakes.binance import FakeBinanceUsdm
from tests.test_exchange_binance import fake, make_source  # noqa: F401 - the fixture


class TestReconcilerCancel:
    async def test_cancel_as_a_stream_trigger_arrives_stops_the_loop(
        self,
        fake: FakeBinanceUsdm,  # noqa: F811 - the fixture
    ) -> None:
        """Test that a cancel in the same loop iteration as a stream trigger is not lost."""
        source = make_source(fake, reconcile=10.0)
        await source.open()
        try:
            loop = asyncio.create_task(source._reconcile_loop())
            for _ in range(500):  # the first read, within 5 s
                if fake.count("/fapi/v3/account"):
                    break
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.2)  # now waiting for a trigger (10 s away)
            source._dirty.set()  # a position update from the stream ...
            loop.cancel()  # ... and the shutdown, in one iteration
            done, _ = await asyncio.wait({loop}, timeout=2.0)
            assert done, "the reconciler swallowed its cancellation and kept running"
            with pytest.raises(asyncio.CancelledError):
                loop.result()
        finally:
            if not loop.done():
                loop.cancel()
            await source.close()
