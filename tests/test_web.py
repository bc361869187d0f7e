"""Tests for monitor/channels/web.py: the `/api/status` document, the status page in a browser.

The browser is Debian's chromium driven by playwright (`executable_path`, nothing downloaded);
the daemon runs in-process, wired by `daemon.build_sinks` exactly as `margin-monitor run`
wires it, with the metrics listener on a free loopback port and a source whose ticks the test
sends. Screenshots at 1280x800 and at phone width are written to build/screenshots/.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from monitor.channels.web import HISTORY_SPAN, HISTORY_STEP, AccountView, StatusSink, status_json
from monitor.config.settings import load_settings
from monitor.core.model import AccountSnapshot, Event, MarginReport, PriceTick, ShockToLiquidation
from monitor.daemon.supervisor import run_daemon
from monitor.daemon.wiring import build_sinks
from monitor.ops.metrics import MetricsSink
from monitor.sources.sim import SimVenue

ROOT = Path(__file__).resolve().parent.parent
SHOTS = ROOT / "build" / "screenshots"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
BTC = "BTC/USDT:USDT"


def _report(ratio: float, shock: ShockToLiquidation | None = None) -> MarginReport:
    balance = 100.0 / ratio if math.isfinite(ratio) else -5.0  # a wiped-out pool: ratio inf
    return MarginReport(
        account="a",
        currency="USDT",
        wallet_balance=balance,
        unrealized_pnl=0.0,
        margin_balance=balance,
        initial_margin=200.0,
        maintenance_margin=100.0,
        margin_ratio=ratio,
        margin_level=1 / ratio,
        free_collateral=balance - 200.0,
        liquidated=not math.isfinite(ratio),
        positions=(),
        shock_to_liquidation=shock,
    )


class TestAccountView:
    def test_history_is_downsampled_and_bounded(self) -> None:
        """Test that history keeps one point per HISTORY_STEP over one hour only."""
        view = AccountView()
        t = 1000.0
        for i in range(int(2 * HISTORY_SPAN)):  # a report per second for two hours
            view.observe(_report(0.1 + i * 1e-5), t + i)
        assert len(view.history) <= HISTORY_SPAN / HISTORY_STEP + 1
        last_t, last_r = view.history[-1]
        assert last_r == pytest.approx(0.1 + (2 * HISTORY_SPAN - 1) * 1e-5)
        assert view.history[0][0] >= last_t - HISTORY_SPAN
        gaps = [b[0] - a[0] for a, b in zip(view.history, list(view.history)[1:], strict=False)]
        assert min(gaps) >= HISTORY_STEP

    def test_a_spike_between_points_is_kept(self) -> None:
        """Test that a step's point holds its worst ratio, not only its last one."""
        view = AccountView()
        for t, ratio in ((0.0, 0.2), (1.0, 0.6), (2.0, 0.3), (HISTORY_STEP, 0.25)):
            view.observe(_report(ratio), t)
        assert list(view.history) == [(0.0, 0.6), (HISTORY_STEP, 0.25)]

    def test_last_shock_survives_a_skipped_solve(self) -> None:
        """Test that a report without a shock solve keeps the last shock on the page."""
        view = AccountView()
        view.observe(_report(0.2, ShockToLiquidation(down=-0.12, up=None)), 10.0)
        view.observe(_report(0.3), 11.0)
        doc = status_json({"a": view}, 12.0, {})
        assert doc["accounts"][0]["report"]["shock_to_liquidation"] == {"down": -0.12, "up": None}
        assert doc["accounts"][0]["report"]["margin_ratio"] == 0.3


class TestStatusJson:
    def test_document_shape(self) -> None:
        """Test the documented fields: blind source, alerts by account, strict-JSON infinity."""
        gone, fine = AccountView(), AccountView()
        gone.observe(_report(math.inf), 5.0)
        fine.observe(_report(0.25), 5.0)
        alerts = [
            {
                "account": "gone",
                "rule": "margin_ratio",
                "level": "emergency",
                "since": 4.0,
                "value": "inf",
                "acknowledged": False,
            }
        ]
        doc = status_json(
            {"gone": gone, "fine": fine, "new": AccountView()},
            6.0,
            {"gone": "source down: bad key"},
            alerts=alerts,
            silences=[
                {"id": "s1", "account": None, "rule": None, "until": 99.0, "up_to": "warning"}
            ],
        )
        text = json.dumps(doc, allow_nan=False)  # strict JSON or this raises
        by_name = {a["name"]: a for a in json.loads(text)["accounts"]}
        assert list(by_name) == ["fine", "gone", "new"]
        assert by_name["gone"]["source"] == {"state": "blind", "reason": "source down: bad key"}
        assert by_name["gone"]["report"]["margin_ratio"] == "inf"
        assert by_name["gone"]["history"] == [[5.0, "inf"]]
        assert by_name["gone"]["alerts"][0]["level"] == "emergency"
        assert by_name["fine"]["alerts"] == []
        assert by_name["new"]["report"] is None
        assert doc["silences"][0]["up_to"] == "warning"


class _Feed:
    """The demo book's account, whose ticks the test sends (None ends the stream)."""

    def __init__(self) -> None:
        self.account = "demo"
        self.queue: asyncio.Queue[Event | None] = asyncio.Queue()
        self._sim = SimVenue("demo")

    async def fetch_snapshot(self) -> AccountSnapshot:
        return await self._sim.fetch_snapshot()

    def venue_drift(self) -> float | None:
        return None

    async def events(self) -> AsyncIterator[Event]:
        while (event := await self.queue.get()) is not None:
            yield event

    async def close(self) -> None:
        await self._sim.close()


async def _api(base: str) -> dict[str, Any]:
    async with aiohttp.ClientSession() as session, session.get(f"{base}/api/status") as resp:
        assert resp.status == 200
        doc: dict[str, Any] = await resp.json()
        return doc


@pytest.fixture
def chromium() -> Path:
    """Debian's chromium; `make test` installs it (.ci/deps), so its absence is a failure."""
    assert CHROMIUM.exists(), "chromium missing: apt-get install -y chromium (.ci/deps)"
    return CHROMIUM


class TestStatusPage:
    async def test_browser_shows_the_demo_and_follows_a_tick(
        self, tmp_path: Path, chromium: Path
    ) -> None:
        """Test that chromium loads the page, shows the demo, redraws within 2 s of a tick."""
        from playwright.async_api import async_playwright

        settings = load_settings(
            None,
            state_dir=tmp_path,
            metrics={"enabled": True, "port": 0},
            actions={"simulated": False},
            alerts={"warning": 0.12, "critical": 0.3, "emergency": 0.5, "band": 0.01},
        )
        feed = _Feed()
        sinks = build_sinks(settings, False, {"demo": feed})
        assert any(isinstance(s, StatusSink) for s in sinks)
        metrics = next(s for s in sinks if isinstance(s, MetricsSink))
        daemon = asyncio.create_task(
            run_daemon(
                settings,
                settings.accounts,
                sinks,
                sources=[feed],
                finite=True,
                handle_signals=False,
            )
        )
        try:
            async with asyncio.timeout(10):
                while metrics.address is None:  # noqa: ASYNC110 - set once, no event to await
                    await asyncio.sleep(0.05)
            base = f"http://127.0.0.1:{metrics.address[1]}"
            async with async_playwright() as pw:
                browser = await pw.chromium.launch(
                    executable_path=str(chromium), args=CHROMIUM_ARGS
                )
                page = await browser.new_page(viewport={"width": 1280, "height": 800})
                requests: list[str] = []
                page.on("request", lambda r: requests.append(r.url))
                await page.goto(f"{base}/")
                ratio = page.locator('article[data-account="demo"] dd.ratio')
                await ratio.wait_for(timeout=10_000)
                before = await ratio.text_content()
                assert before is not None
                assert before.endswith(" %")
                assert (
                    await page.locator('article[data-account="demo"] h2').text_content() == "demo"
                )
                # the tick: BTC (the book's largest long) drops 8 %
                sent = time.monotonic()
                await feed.queue.put(PriceTick("demo", BTC, 58_880.0, time.time()))
                await page.wait_for_function(
                    "old => document.querySelector('article[data-account=\"demo\"] dd.ratio')"
                    ".textContent !== old",
                    arg=before,
                    timeout=2_000,
                )
                elapsed = time.monotonic() - sent
                after = await ratio.text_content()
                doc = await _api(base)
                shown = doc["accounts"][0]["report"]["margin_ratio"]
                assert after == f"{shown * 100:.2f} %"
                assert elapsed < 2.0
                # a crash through the thresholds: the badge and the alert list follow
                await feed.queue.put(PriceTick("demo", BTC, 55_000.0, time.time()))
                alerts = page.locator('article[data-account="demo"] ul.alerts li')
                await page.wait_for_function(
                    "() => document.querySelector('article[data-account=\"demo\"] ul.alerts li')"
                    ".textContent.includes('margin ratio since')",
                    timeout=5_000,
                )
                doc = await _api(base)
                level = doc["accounts"][0]["level"]
                assert level in {"warning", "critical", "emergency"}
                badge = page.locator('article[data-account="demo"] .badge')
                assert await badge.text_content() == f"Level: {level}"
                texts = await alerts.all_text_contents()
                assert any(t.startswith(f"{level.upper()}: margin ratio since ") for t in texts)
                liq = page.locator('article[data-account="demo"] td.liq')
                assert await liq.count() == len(doc["accounts"][0]["report"]["positions"]) == 3
                # accessible: language, labelled chart, header cells, no overflow on a phone
                assert await page.get_attribute("html", "lang") == "en"
                label = await page.locator("svg.spark").get_attribute("aria-label")
                assert label is not None
                assert label.startswith("Margin ratio of demo over the last 1 minute(s): from ")
                assert await page.locator("th[scope=col]").count() == 8
                SHOTS.mkdir(parents=True, exist_ok=True)
                await page.screenshot(path=str(SHOTS / "status-1280x800.png"), full_page=True)
                await page.set_viewport_size({"width": 390, "height": 844})
                await page.wait_for_timeout(300)
                width = await page.evaluate("document.documentElement.scrollWidth")
                assert width <= 390
                await page.screenshot(path=str(SHOTS / "status-390x844.png"), full_page=True)
                await browser.close()
            assert requests
            assert all(url.startswith(base) for url in requests), requests
        finally:
            await feed.queue.put(None)
            async with asyncio.timeout(30):
                await daemon
        assert (SHOTS / "status-1280x800.png").stat().st_size > 10_000
        assert (SHOTS / "status-390x844.png").stat().st_size > 10_000
