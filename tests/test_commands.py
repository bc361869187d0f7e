"""`margin-monitor report` / `stress` as a user runs them: the installed console script."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from monitor.cli.report import parse_shock
from monitor.errors import UserError

EXAMPLES = Path(__file__).resolve().parent.parent / "config" / "examples"
SCRIPT = shutil.which("margin-monitor", path=str(Path(sys.executable).parent))


def run(*args: str) -> subprocess.CompletedProcess[str]:
    assert SCRIPT, "the margin-monitor console script is not installed in this venv"
    return subprocess.run([SCRIPT, *args], capture_output=True, text=True, timeout=60, check=False)


class TestReport:
    def test_json_report_of_the_faq_example(self) -> None:
        """Test that report --json prints the contract with the FAQ's liquidation prices."""
        out = run(
            "report", "--snapshot", str(EXAMPLES / "binance-cross-two-positions.json"), "--json"
        )
        assert out.returncode == 0, out.stderr
        data = json.loads(out.stdout)
        prices = [p["liquidation_price"] for p in data["positions"]]
        assert prices == pytest.approx([26_316.89, 1_153.26], rel=1e-4)
        assert data["shock_to_liquidation"]["down"] < 0

    def test_table_report(self) -> None:
        """Test that the default output is a readable table naming ratio and positions."""
        out = run("report", "--snapshot", str(EXAMPLES / "seed-article.json"))
        assert out.returncode == 0, out.stderr
        assert "margin ratio" in out.stdout
        assert "53.57%" in out.stdout
        assert "ETH/USDT:USDT" in out.stdout

    @pytest.mark.parametrize(
        ("content", "message"),
        [
            ('{"account": "a"', "is not valid JSON"),
            (
                '{"account": "a", "currency": "USDT", "collateral": [], "positions": '
                '[{"symbol": "X", "side": "long", "contracts": -1, "entry_price": 1, '
                '"mark_price": 1}]}',
                "positions[0].contracts is -1",
            ),
        ],
    )
    def test_bad_file_is_one_line_and_exit_2(
        self, tmp_path: Path, content: str, message: str
    ) -> None:
        """Test that a bad snapshot gives exit code 2 and one line, never a traceback."""
        path = tmp_path / "bad.json"
        path.write_text(content)
        out = run("report", "--snapshot", str(path))
        assert out.returncode == 2
        assert message in out.stderr
        assert len(out.stderr.strip().splitlines()) == 1
        assert "Traceback" not in out.stderr


class TestStress:
    def test_shock_and_price_scenarios(self) -> None:
        """Test that stress reports each scenario; a BTC fall to its LP reaches ratio 1."""
        out = run(
            "stress",
            "--snapshot",
            str(EXAMPLES / "binance-cross-two-positions.json"),
            "--shock",
            "-5%",
            "--price",
            "BTC/USDT:USDT=26316.8933",
            "--json",
        )
        assert out.returncode == 0, out.stderr
        data = json.loads(out.stdout)
        shock, prices = data["scenarios"]
        assert shock["shock"] == pytest.approx(-0.05)
        assert shock["report"]["margin_ratio"] > data["base"]["margin_ratio"]
        assert prices["report"]["margin_ratio"] == pytest.approx(1.0, rel=1e-6)

    def test_beta_weighted(self) -> None:
        """Test that --beta adds the beta-weighted shock to liquidation."""
        out = run(
            "stress",
            "--snapshot",
            str(EXAMPLES / "btc-collateral-demo.json"),
            "--beta",
            "--shock",
            "-10%",
            "--json",
        )
        assert out.returncode == 0, out.stderr
        data = json.loads(out.stdout)
        assert data["beta_weighted_shock_to_liquidation"]["down"] is not None
        assert data["scenarios"][0]["beta_weighted"] is True

    @pytest.mark.parametrize(
        ("args", "message"),
        [
            (("--shock", "ten"), "--shock 'ten' is not a move like -10% or -0.1"),
            (("--shock", "-150%"), "moves prices to zero or below"),
            (("--price", "DOGE/USDT:USDT=1"), "DOGE/USDT:USDT is not in the snapshot"),
            (("--price", "BTC/USDT:USDT"), "is not SYMBOL=PRICE"),
        ],
    )
    def test_bad_arguments(self, args: tuple[str, ...], message: str) -> None:
        """Test that bad CLI arguments give one line naming the argument, exit 2."""
        out = run("stress", "--snapshot", str(EXAMPLES / "seed-article.json"), *args)
        assert out.returncode == 2
        assert message in out.stderr
        assert "Traceback" not in out.stderr


class TestParseShock:
    @pytest.mark.parametrize(
        ("text", "value"), [("-10%", -0.1), ("-0.1", -0.1), ("+25%", 0.25), ("5", 5.0)]
    )
    def test_forms(self, text: str, value: float) -> None:
        """Test the accepted spellings of a shock."""
        assert parse_shock(text) == pytest.approx(value)

    def test_rejects_minus_100(self) -> None:
        """Test that −100 % is refused (prices at zero)."""
        with pytest.raises(UserError):
            parse_shock("-100%")
