"""`margin-monitor snapshot` and the live part of `check`, against loopback fake venues.

The configuration is a real TOML file read by monitor.config.settings, with the fake's URLs in the
account's `ccxt` table and the keys in the environment (never in the file).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from monitor.cli.app import main
from monitor.cli.live import check_account
from monitor.config.settings import load_settings
from monitor.core.margin import report as margin
from monitor.errors import UserError
from monitor.snapshot import parse_snapshot
from monitor.sources.exchange import ExchangeSource
from tests.fakes import binance, bingx, bybit, hyperliquid, mexc, weex
from tests.fakes.base import FakeVenue


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return (
            "{" + ", ".join(f"{json.dumps(k)} = {_toml_value(v)}" for k, v in value.items()) + "}"
        )
    raise TypeError(type(value))


def write_config(path: Path, name: str, fake: FakeVenue) -> Path:
    """One live account pointed at the fake; `ccxt` as an inline table."""
    path.write_text(
        "[[accounts]]\n"
        f"name = {json.dumps(name)}\n"
        f"exchange = {json.dumps(fake.venue)}\n"
        "poll_interval = 1.0\n"
        "stale_after = 10.0\n"
        f"ccxt = {_toml_value(fake.ccxt_config())}\n",
        encoding="utf-8",
    )
    return path


def set_keys(monkeypatch: pytest.MonkeyPatch, name: str, key: str, secret: str) -> None:
    prefix = f"MARGIN_MONITOR__ACCOUNTS__{name.upper()}__"
    monkeypatch.setenv(prefix + "API_KEY", key)
    monkeypatch.setenv(prefix + "SECRET", secret)


@pytest.fixture
async def binance_fake() -> AsyncIterator[binance.FakeBinanceUsdm]:
    fake = binance.FakeBinanceUsdm()
    fake.account.positions[("BTCUSDT", "BOTH")] = binance.BinancePosition("BTCUSDT", 0.5, 59_000.0)
    async with fake:
        yield fake


@pytest.fixture
def multi_assets(
    binance_fake: binance.FakeBinanceUsdm, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Path:
    """The config of a Binance multi-assets account holding 0.1 BTC (mark 61,250)."""
    binance_fake.account.multi_assets = True  # a BTC balance is margin only in this mode
    binance_fake.account.assets["BTC"] = 0.1
    binance_fake.account.multi_assets = True  # BTC is margin only in Multi-Assets Mode
    binance_fake.account.marks["BTCUSDT"] = 61_250.0
    set_keys(monkeypatch, "main", binance.API_KEY, binance.SECRET)
    return write_config(tmp_path / "live.toml", "main", binance_fake)


class TestSnapshotCommand:
    async def test_writes_a_snapshot_the_report_reads(
        self,
        binance_fake: binance.FakeBinanceUsdm,
        tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """Test that `snapshot -o FILE` writes the live account in the snapshot contract."""
        config = write_config(tmp_path / "live.toml", "main", binance_fake)
        set_keys(monkeypatch, "main", binance.API_KEY, binance.SECRET)
        out = tmp_path / "snap.json"
        args = ["snapshot", "--config", str(config), "--account", "main", "-o", str(out)]
        code = await asyncio.to_thread(main, args)
        assert code == 0
        data = json.loads(out.read_text(encoding="utf-8"))
        snapshot = parse_snapshot(data, str(out))
        assert snapshot.venue == "binanceusdm"
        (position,) = snapshot.positions
        assert (position.symbol, position.side, position.contracts) == (
            "BTC/USDT:USDT",
            "long",
            0.5,
        )
        assert margin.report(snapshot).margin_ratio == pytest.approx(
            binance_fake.account.venue_margin_ratio(), rel=1e-4
        )
        assert binance.SECRET not in out.read_text(encoding="utf-8")

    async def test_unwritable_output_is_one_line(
        self,
        binance_fake: binance.FakeBinanceUsdm,
        tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        """Test that an -o path that cannot be written is one line naming it and why."""
        config = write_config(tmp_path / "live.toml", "main", binance_fake)
        set_keys(monkeypatch, "main", binance.API_KEY, binance.SECRET)
        out = tmp_path / "a-directory"
        out.mkdir()
        args = ["snapshot", "--config", str(config), "--account", "main", "-o", str(out)]
        code = await asyncio.to_thread(main, args)
        assert code == 2
        err = capsys.readouterr().err.strip()
        assert err == f"margin-monitor: -o {out}: cannot write (is a directory)"

    async def test_unknown_account_is_one_line(
        self,
        binance_fake: binance.FakeBinanceUsdm,
        tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        """Test that a wrong --account name is a one-line error listing the accounts."""
        config = write_config(tmp_path / "live.toml", "main", binance_fake)
        set_keys(monkeypatch, "main", binance.API_KEY, binance.SECRET)
        args = ["snapshot", "--config", str(config), "--account", "nope"]
        code = await asyncio.to_thread(main, args)
        assert code == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1
        assert "'nope'" in err
        assert "main" in err

    async def test_rejected_keys_are_one_line(
        self,
        binance_fake: binance.FakeBinanceUsdm,
        tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        """Test that rejected keys give exit 2 and one line naming the fix, not a traceback."""
        config = write_config(tmp_path / "live.toml", "main", binance_fake)
        set_keys(monkeypatch, "main", "wrong", "wrong")
        args = ["snapshot", "--config", str(config), "--account", "main"]
        code = await asyncio.to_thread(main, args)
        assert code == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1
        assert "rejected the keys" in err
        assert "wrong" not in err.split("(")[0]


class TestCheckAccount:
    async def test_binance_keys_can_trade_or_not(
        self,
        binance_fake: binance.FakeBinanceUsdm,
        tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """Test that check reads Binance's canTrade and reports the wallet."""
        config = write_config(tmp_path / "live.toml", "main", binance_fake)
        set_keys(monkeypatch, "main", binance.API_KEY, binance.SECRET)
        account = load_settings(config).accounts[0]
        line = await check_account(account)
        assert "keys can trade" in line
        assert "USDT 10000" in line
        binance_fake.account.can_trade = False
        assert "read-only" in await check_account(account)

    async def test_multi_assets_collateral_is_priced_as_run_prices_it(
        self, multi_assets: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Test that `check` prices BTC collateral by BTC/USDT:USDT (no spot market), as
        `snapshot` and `run` do (issue 19: one collateral-pricing rule for all three)."""
        config, tmp_path = multi_assets, multi_assets.parent
        code = await asyncio.to_thread(main, ["check", "--config", str(config)])
        out = capsys.readouterr().out
        assert code == 0, out
        assert "BTC 0.1 @ 61250 USDT" in out
        snap = tmp_path / "snap.json"
        args = ["snapshot", "--config", str(config), "--account", "main", "-o", str(snap)]
        assert await asyncio.to_thread(main, args) == 0
        data = json.loads(snap.read_text(encoding="utf-8"))
        (btc,) = [c for c in parse_snapshot(data, str(snap)).collateral if c.asset == "BTC"]
        assert (btc.amount, btc.price) == (0.1, 61_250.0)
        source = ExchangeSource(load_settings(config).accounts[0])
        try:
            markets = await (await source.open()).load_markets()
        finally:
            await source.close()
        assert "BTC/USDT:USDT" in markets
        assert "BTC/USDT" not in markets

    async def test_bybit_read_only_key(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Test that check reads Bybit's readOnly flag from /v5/user/query-api."""
        async with bybit.FakeBybit() as fake:
            fake.account.read_only = True
            config = write_config(tmp_path / "live.toml", "uta", fake)
            set_keys(monkeypatch, "uta", bybit.API_KEY, bybit.SECRET)
            account = load_settings(config).accounts[0]
            line = await check_account(account)
        assert "read-only (readOnly=1)" in line

    async def test_bad_keys_raise_user_error(
        self,
        binance_fake: binance.FakeBinanceUsdm,
        tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """Test that rejected keys are a UserError naming the settings to fix."""
        config = write_config(tmp_path / "live.toml", "main", binance_fake)
        set_keys(monkeypatch, "main", "wrong", "wrong")
        account = load_settings(config).accounts[0]
        with pytest.raises(UserError, match="api_key/secret"):
            await check_account(account)


class TestCheckExitCodes:
    """`check`: 0 all good, 1 valid configuration but a live check failed, 2 bad config."""

    async def test_rejected_keys_exit_1(
        self,
        binance_fake: binance.FakeBinanceUsdm,
        tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """Test that check exits 1 and prints FAILED for rejected keys, 0 with good ones."""
        import os
        import sys

        config = write_config(tmp_path / "live.toml", "main", binance_fake)
        exe = str(Path(sys.executable).parent / "margin-monitor")
        results = {}
        for key in ("wrong", binance.API_KEY):
            set_keys(monkeypatch, "main", key, binance.SECRET)
            proc = await asyncio.create_subprocess_exec(
                exe,
                "check",
                "--config",
                str(config),
                env=dict(os.environ),
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            out, _ = await asyncio.wait_for(proc.communicate(), 60)
            results[key] = (proc.returncode, out.decode())
        code, out = results["wrong"]
        assert code == 1, out
        assert "  check main: FAILED: " in out
        code, out = results[binance.API_KEY]
        assert code == 0, out
        assert "  check main: binanceusdm ok" in out


async def check_line(
    fake: FakeVenue,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    key: str,
    secret: str,
    *,
    password: str | None = None,
) -> str:
    """`check`'s live line for an account `acct` on the running fake with these keys."""
    config = write_config(tmp_path / "live.toml", "acct", fake)
    set_keys(monkeypatch, "acct", key, secret)
    if password is not None:
        monkeypatch.setenv("MARGIN_MONITOR__ACCOUNTS__ACCT__PASSWORD", password)
    return await check_account(load_settings(config).accounts[0])


class TestTradePermission:
    @pytest.mark.parametrize(
        ("rights", "says"),
        [
            (["coor", "coow", "stor"], "keys can trade"),
            (["coor", "stor"], "read-only (authorities ['coor', 'stor'] lack coow)"),
        ],
    )
    async def test_bitget_authorities(
        self, rights: list[str], says: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Test that check reads a Bitget key's futures order-write authority (coow)."""
        from tests.fakes import bitget

        async with bitget.FakeBitget() as fake:
            fake.account.authorities = rights
            config = write_config(tmp_path / "live.toml", "bg", fake)
            set_keys(monkeypatch, "bg", bitget.API_KEY, bitget.SECRET)
            monkeypatch.setenv("MARGIN_MONITOR__ACCOUNTS__BG__PASSWORD", bitget.PASSWORD)
            line = await check_account(load_settings(config).accounts[0])
        assert says in line

    @pytest.mark.parametrize(
        ("agents", "says"),
        [
            (
                {hyperliquid.AGENT: hyperliquid.API_KEY},
                f"keys can trade (approved API wallet {hyperliquid.AGENT})",
            ),
            (
                {},
                f"read-only (the private key's address {hyperliquid.AGENT} is not an approved "
                f"API wallet of {hyperliquid.API_KEY}: userRole 'missing')",
            ),
            ({hyperliquid.AGENT: "0x" + "cd" * 20}, "userRole 'agent'"),
        ],
    )
    async def test_hyperliquid_agent_role(
        self,
        agents: dict[str, str],
        says: str,
        tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """Test that check trusts a Hyperliquid key only as an agent the wallet approved."""
        async with hyperliquid.FakeHyperliquid() as fake:
            fake.account.agents = agents
            line = await check_line(
                fake, tmp_path, monkeypatch, hyperliquid.API_KEY, hyperliquid.SECRET
            )
        assert says in line

    @pytest.mark.parametrize(
        ("hours", "says"),
        [
            (24, f"keys can trade (approved API wallet {hyperliquid.AGENT})"),
            (-1, f"read-only (API wallet {hyperliquid.AGENT} 'bot' expired "),
        ],
    )
    async def test_hyperliquid_named_agent_expiry(
        self, hours: int, says: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Test that an approved named Hyperliquid agent past its validUntil is read-only."""
        async with hyperliquid.FakeHyperliquid() as fake:
            valid_until = int((time.time() + hours * 3600) * 1000)
            fake.account.named_agents = {hyperliquid.AGENT: ("bot", valid_until)}
            line = await check_line(
                fake, tmp_path, monkeypatch, hyperliquid.API_KEY, hyperliquid.SECRET
            )
        assert says in line

    async def test_hyperliquid_wallet_own_key_and_no_key(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Test that the wallet's own key can trade and the address alone is read-only."""
        async with hyperliquid.FakeHyperliquid() as fake:
            own = await check_line(
                fake, tmp_path, monkeypatch, hyperliquid.AGENT, hyperliquid.SECRET
            )
            monkeypatch.delenv("MARGIN_MONITOR__ACCOUNTS__ACCT__SECRET")
            alone = await check_account(load_settings(tmp_path / "live.toml").accounts[0])
        assert "keys can trade (the private key is the wallet's own)" in own
        assert "keys read-only (no private key: the wallet address alone can only read)" in alone

    async def test_hyperliquid_malformed_key_is_one_line(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Test that a Hyperliquid secret that is no private key is the one-line key error."""
        async with hyperliquid.FakeHyperliquid() as fake:
            with pytest.raises(UserError) as caught:
                await check_line(fake, tmp_path, monkeypatch, hyperliquid.API_KEY, "0xnot-a-key")
        text = str(caught.value)
        assert len(text.splitlines()) == 1
        assert "rejected the keys" in text
        assert "secret is not a 0x-prefixed" in text
        assert "not-a-key" not in text

    @pytest.mark.parametrize(
        ("codes", "says"),
        [
            ([2, 3], "keys can trade"),
            ([1, 2], "read-only (permissions [1, 2] lack 3, perpetual futures trading)"),
        ],
    )
    async def test_bingx_api_permissions(
        self, codes: list[int], says: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Test that check reads a BingX key's perpetual futures trading permission (3)."""
        async with bingx.FakeBingx() as fake:
            fake.account.permissions = codes
            line = await check_line(fake, tmp_path, monkeypatch, bingx.API_KEY, bingx.SECRET)
        assert says in line

    @pytest.mark.parametrize("venue", ["mexc", "weex"])
    async def test_unpublished_permission_is_said(
        self, venue: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Test that MEXC and WEEX keys are said to have no published trade permission."""
        fake: FakeVenue = mexc.FakeMexc() if venue == "mexc" else weex.FakeWeex()
        keys = (mexc.API_KEY, mexc.SECRET) if venue == "mexc" else (weex.API_KEY, weex.SECRET)
        async with fake:
            line = await check_line(fake, tmp_path, monkeypatch, *keys, password=weex.PASSWORD)
        assert line.endswith(
            f"keys trade permission not published by {venue.upper()} "
            "(a read-only key is refused at order time)"
        )

    @pytest.mark.parametrize("venue", ["bingx", "mexc", "weex"])
    async def test_revoked_key_is_one_line(
        self, venue: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Test that a revoked BingX, MEXC or WEEX key is the one-line key error."""
        fake_class = {"bingx": bingx.FakeBingx, "mexc": mexc.FakeMexc, "weex": weex.FakeWeex}
        async with fake_class[venue]() as fake:
            with pytest.raises(UserError) as caught:
                await check_line(
                    fake,
                    tmp_path,
                    monkeypatch,
                    "revoked-key",
                    "revoked-secret",
                    password="whatever",
                )
        text = str(caught.value)
        assert len(text.splitlines()) == 1
        assert f"accounts.acct: {venue} rejected the keys" in text
        assert "revoked-secret" not in text
