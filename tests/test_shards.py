"""Tests for monitor/daemon/shards.py: `--shard auto` from a pod's ordinal and `shard-plan`."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from monitor.cli.app import main
from monitor.config.settings import AccountSettings
from monitor.daemon.shards import INDEX_ENV, SHARDS_ENV, auto_shard, plan, select_shard
from monitor.errors import UserError

NAMES = [f"acct-{i:02d}" for i in range(40)]


def write_config(path: Path, names: list[str]) -> Path:
    path.write_text("".join(f'[[accounts]]\nname = "{n}"\nexchange = "sim"\n\n' for n in names))
    return path


class TestAutoShard:
    def test_ordinal_from_the_downward_api_variable(self) -> None:
        """Test that the pod-index variable gives shard ordinal + 1 of N."""
        env = {INDEX_ENV: "0", SHARDS_ENV: "3"}
        assert auto_shard(env, "whatever") == "1/3"
        assert auto_shard({INDEX_ENV: "2", SHARDS_ENV: "3"}, "x") == "3/3"

    def test_ordinal_from_the_statefulset_hostname(self) -> None:
        """Test that without the variable the hostname <name>-<k> gives the ordinal."""
        assert auto_shard({SHARDS_ENV: "4"}, "margin-monitor-3") == "4/4"
        assert auto_shard({SHARDS_ENV: "4"}, "mm-eu-1-0") == "1/4"
        assert auto_shard({SHARDS_ENV: "4", INDEX_ENV: ""}, "margin-monitor-1") == "2/4"

    def test_variable_wins_over_the_hostname(self) -> None:
        """Test that the downward-API ordinal is preferred to the hostname's."""
        assert auto_shard({SHARDS_ENV: "3", INDEX_ENV: "1"}, "margin-monitor-2") == "2/3"

    @pytest.mark.parametrize(
        ("env", "host", "message"),
        [
            ({}, "margin-monitor-0", rf"^--shard auto: {SHARDS_ENV} is not set; set it"),
            ({SHARDS_ENV: "0"}, "margin-monitor-0", rf"{SHARDS_ENV} is '0'; set it"),
            ({SHARDS_ENV: "three"}, "margin-monitor-0", rf"{SHARDS_ENV} is 'three'"),
            ({SHARDS_ENV: "3"}, "laptop", r"no pod ordinal: .* hostname 'laptop' does not end"),
            ({SHARDS_ENV: "3"}, "web-x", r"no pod ordinal"),
            ({SHARDS_ENV: "3", INDEX_ENV: "-1"}, "a-0", rf"{INDEX_ENV} is '-1'; expected .*0..2"),
            ({SHARDS_ENV: "3"}, "margin-monitor-3", r"ordinal 3 \(from hostname .*\) is outside 3"),
            ({SHARDS_ENV: "2", INDEX_ENV: "5"}, "a-0", rf"ordinal 5 \(from {INDEX_ENV}\)"),
        ],
    )
    def test_bad_environment_is_one_line(
        self, env: dict[str, str], host: str, message: str
    ) -> None:
        """Test that a missing or wrong ordinal or count is one line naming the fix."""
        with pytest.raises(UserError, match=message) as caught:
            auto_shard(env, host)
        assert "\n" not in str(caught.value)

    def test_run_without_an_ordinal_exits_2_with_one_line(
        self, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
    ) -> None:
        """Test that `run --shard auto` outside a pod stops with one line, exit 2."""
        monkeypatch.delenv(INDEX_ENV, raising=False)
        monkeypatch.setenv(SHARDS_ENV, "3")
        monkeypatch.setattr("monitor.daemon.shards.socket.gethostname", lambda: "laptop")
        config = write_config(tmp_path / "c.toml", NAMES[:3])
        code = main(["run", "--config", str(config), "--no-tui", "--shard", "auto"])
        err = capsys.readouterr().err
        assert code == 2
        assert err.count("\n") == 1
        assert err.startswith("margin-monitor: --shard auto: no pod ordinal")


def accounts(names: list[str]) -> list[AccountSettings]:
    return [AccountSettings(name=n) for n in names]


class TestPlan:
    @pytest.mark.parametrize("n", range(1, 9))
    def test_every_account_exactly_once_in_the_shards_the_daemon_runs(self, n: int) -> None:
        """Test that for N = 1..8 the plan places every account once, where select_shard does."""
        for m in range(1, 9):
            rows = plan(NAMES, n, m)
            assert sorted(r.account for r in rows) == sorted(NAMES)
            for k in range(1, n + 1):
                ran = {a.name for a in select_shard(accounts(NAMES), f"{k}/{n}")}
                assert ran == {r.account for r in rows if r.source == k}
            for k in range(1, m + 1):
                ran = {a.name for a in select_shard(accounts(NAMES), f"{k}/{m}")}
                assert ran == {r.account for r in rows if r.target == k}

    def test_moves_are_the_accounts_whose_owner_changes(self) -> None:
        """Test that an account moves exactly when the daemon's owner of it changes."""
        for n, m in [(1, 2), (3, 5), (5, 3), (4, 4), (8, 1)]:
            owner_before = {
                a.name: k
                for k in range(1, n + 1)
                for a in select_shard(accounts(NAMES), f"{k}/{n}")
            }
            owner_after = {
                a.name: k
                for k in range(1, m + 1)
                for a in select_shard(accounts(NAMES), f"{k}/{m}")
            }
            moved = {r.account for r in plan(NAMES, n, m) if r.moves}
            assert moved == {a for a in NAMES if owner_before[a] != owner_after[a]}
        assert not any(r.moves for r in plan(NAMES, 4, 4))
        assert all(r.target == 1 for r in plan(NAMES, 8, 1))


class TestShardPlanCommand:
    def test_lists_every_account_with_its_move(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Test that `shard-plan` prints each account once with the shards the daemon uses."""
        names = NAMES[:12]
        config = write_config(tmp_path / "all.toml", names)
        assert main(["shard-plan", "--config", str(config), "--from", "3", "--to", "5"]) == 0
        out = capsys.readouterr().out.splitlines()
        rows = [re.match(r"^  (move|stay)  (\S+) +(\d)/3 -> (\d)/5$", line) for line in out[1:]]
        assert all(rows), out
        got = {r.group(2): (r.group(1), int(r.group(3)), int(r.group(4))) for r in rows if r}
        assert sorted(got) == sorted(names)
        for name, (verb, src, dst) in got.items():
            assert name in {a.name for a in select_shard(accounts(names), f"{src}/3")}
            assert name in {a.name for a in select_shard(accounts(names), f"{dst}/5")}
            assert verb == ("move" if src != dst else "stay")
        moving = sum(v[0] == "move" for v in got.values())
        assert out[0].startswith(f"shard plan 3 -> 5: 12 accounts, {moving} move")

    @pytest.mark.parametrize(
        ("argv", "message"),
        [
            (["--from", "0", "--to", "2"], "margin-monitor: --from 0: the number of shards"),
            (["--from", "2", "--to", "-1"], "margin-monitor: --to -1: the number of shards"),
        ],
    )
    def test_bad_counts_are_one_line(
        self,
        tmp_path: Path,
        capsys: pytest.CaptureFixture[str],
        argv: list[str],
        message: str,
    ) -> None:
        """Test that a shard count below 1 is one line on stderr and exit 2."""
        config = write_config(tmp_path / "all.toml", NAMES[:2])
        assert main(["shard-plan", "--config", str(config), *argv]) == 2
        err = capsys.readouterr().err
        assert err.startswith(message)
        assert err.count("\n") == 1

    def test_live_accounts_need_no_credentials(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Test that the plan of a live config is made without its secrets (names only)."""
        monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
        config = tmp_path / "live.toml"
        config.write_text(
            '[[accounts]]\nname = "main"\nexchange = "binanceusdm"\n'
            '[[accounts]]\nname = "alt"\nexchange = "okx"\n'
        )
        assert main(["shard-plan", "--config", str(config), "--from", "1", "--to", "2"]) == 0
        assert capsys.readouterr().out.startswith("shard plan 1 -> 2: 2 accounts,")

    @pytest.mark.parametrize(
        ("text", "message"),
        [
            (None, r"^margin-monitor: .*missing\.toml: no such file or directory; pass the TOML"),
            ("accounts = [", r"^margin-monitor: c\.toml: invalid TOML: "),
            ("[alerts]\nwarning = 0.5\n", r"c\.toml: accounts: expected \[\[accounts\]\] tables"),
            ("[[accounts]]\nexchange = 'sim'\n", r"c\.toml: accounts: expected \[\[accounts\]\]"),
            ("[[accounts]]\nname = 'a'\n[[accounts]]\nname = 'a'\n", r"a name is used twice"),
        ],
    )
    def test_bad_config_is_one_line(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str | None, message: str
    ) -> None:
        """Test that a missing, broken or account-less config is one line on stderr, exit 2."""
        config = tmp_path / ("missing.toml" if text is None else "c.toml")
        if text is not None:
            config.write_text(text)
        assert main(["shard-plan", "--config", str(config), "--from", "1", "--to", "2"]) == 2
        err = capsys.readouterr().err
        assert re.search(message, err), err
        assert err.count("\n") == 1
