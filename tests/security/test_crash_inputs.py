"""Issue 13 §7: hostile input to the command line is one line on stderr and exit 2.

Each case is the real console script on a crafted file or argument; none may print a
traceback. Plus the duplicate-collateral check's cost (it was quadratic).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from monitor.alerts.signed_commands import signature
from monitor.config.settings import load_settings
from monitor.errors import UserError
from monitor.snapshot import parse_snapshot
from tests.mqtt_broker import free_port
from tests.security.harness import script

EXAMPLE = Path(__file__).parent.parent.parent / "config" / "examples"
SNAPSHOT = json.loads((EXAMPLE / "binance-cross-two-positions.json").read_text())


def snapshot_with(**changes: object) -> str:
    """The example snapshot with top-level fields replaced, as JSON text."""
    return json.dumps({**SNAPSHOT, **changes})


def overflowing() -> str:
    """Finite inputs whose figures overflow to infinity (contracts x price > 1.8e308)."""
    position = {
        **SNAPSHOT["positions"][0],
        "contracts": 1e300,
        "mark_price": 1e300,
        "entry_price": 1e300,
    }
    return snapshot_with(positions=[position])


def deep(depth: int = 100_000) -> str:
    """JSON nested deeper than the interpreter's recursion limit."""
    return "[" * depth + "]" * depth


def big_int() -> str:
    """An integer of 5 000 digits (over sys.int_info.default_max_str_digits)."""
    text = snapshot_with()
    return text.replace('"amount": 1535443.01', '"amount": ' + "9" * 5000)


def surrogate() -> str:
    """A lone surrogate escaped in an asset name."""
    return snapshot_with(collateral=[{"asset": "USD\\ud800T", "amount": 1.0}]).replace(
        "\\\\ud800", "\\ud800"
    )


Case = Callable[[Path], list[str]]


def snap(text: str, *args: str, command: str = "report") -> Case:
    """`report` or `stress` on a snapshot file holding `text`."""

    def make(tmp: Path) -> list[str]:
        path = tmp / "snap.json"
        path.write_text(text, encoding="utf-8", errors="surrogatepass")
        return [command, "--snapshot", str(path), *args]

    return make


def config(body: bytes, *args: str, command: str = "check") -> Case:
    """A command on a configuration file holding `body`."""

    def make(tmp: Path) -> list[str]:
        path = tmp / "c.toml"
        path.write_bytes(body)
        return [command, "--config", str(path), *args]

    return make


SIM = b'[[accounts]]\nname = "demo"\nexchange = "sim"\n'


def replay_field(tmp: Path) -> list[str]:
    """A replay CSV with a 200 KiB field (csv's field_size_limit is 128 KiB)."""
    path = tmp / "r.csv"
    path.write_text("ts,symbol,price\n0,BTC/USDT:USDT," + "1" * 200_000 + "\n")
    return ["run", "--replay", str(path), "--no-tui", "--duration", "1"]


def state_dir_file(tmp: Path) -> list[str]:
    """`state_dir` naming a file, not a directory."""
    (tmp / "afile").write_text("x")
    path = tmp / "c.toml"
    path.write_text(f'state_dir = "{tmp / "afile"}"\n' + SIM.decode())
    return ["run", "--config", str(path), "--no-tui", "--duration", "1"]


CASES: dict[str, Case] = {
    "report overflow": snap(overflowing(), "--json"),
    "stress overflow": snap(overflowing(), "--json", "--shock", "-10%", command="stress"),
    "snapshot deep nesting": snap(deep()),
    "snapshot 5000-digit int": snap(big_int()),
    "snapshot lone surrogate": snap(surrogate()),
    "replay field over 128 KiB": replay_field,
    "config not UTF-8": config(b'state_dir = "/tmp/\xff\xfe"\n' + SIM),
    "config deep nesting": config(b"x = " + b"[" * 100_000 + b"]" * 100_000 + b"\n"),
    "state_dir is a file": state_dir_file,
}


def run(
    args: list[str], env: dict[str, str] | None = None, stdin: int | None = None
) -> subprocess.CompletedProcess[bytes]:
    """The console script, bounded."""
    return subprocess.run(
        [str(script()), *args],
        capture_output=True,
        timeout=60,
        env={**os.environ, **(env or {})},
        stdin=stdin,
        check=False,
    )


def assert_one_line(proc: subprocess.CompletedProcess[bytes]) -> None:
    """Exit 2, one stderr line starting with the program name, no traceback."""
    err = proc.stderr.decode(errors="replace")
    assert "Traceback" not in err, err[-3000:]
    assert proc.returncode == 2, (proc.returncode, err[-3000:])
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err[-3000:]
    assert lines[0].startswith("margin-monitor: "), lines


def listen_config(tmp: Path, port: int) -> Path:
    """A sim config with the command endpoint on [::1]:port."""
    path = tmp / "c.toml"
    path.write_text(
        f'state_dir = "{tmp / "state"}"\n'
        + SIM.decode()
        + '[mqtt]\ncommand_secret = "k3y-k3y-k3y"\n'
        + f'[notify]\ncommand_listen = "[::1]:{port}"\n'
    )
    return path


class TestOneLine:
    """Each crash input of the issue: exit 2 with one line."""

    @pytest.mark.parametrize("name", list(CASES))
    def test_case(self, name: str, tmp_path: Path) -> None:
        """Test that the input is refused with one line and exit 2."""
        proc = run(CASES[name](tmp_path))
        assert_one_line(proc)

    def test_command_listen_ipv6(self, tmp_path: Path) -> None:
        """Test that command_listen = "[::1]:port" listens (the brackets were passed to
        getaddrinfo), and that a port already taken is one line, exit 2."""
        with socket.socket(socket.AF_INET6) as taken:
            try:
                taken.bind(("::1", 0))
            except OSError:
                pytest.skip("no IPv6 loopback on this machine")
            taken.listen()
            port = taken.getsockname()[1]
            assert_one_line(
                run(
                    [
                        "run",
                        "--config",
                        str(listen_config(tmp_path, port)),
                        "--no-tui",
                        "--duration",
                        "1",
                    ]
                )
            )
        ok = run(
            [
                "run",
                "--config",
                str(listen_config(tmp_path, free_port())),
                "--no-tui",
                "--duration",
                "1",
            ]
        )
        assert ok.returncode == 0, ok.stderr.decode()[-2000:]

    def test_credential_file_not_utf8(self, tmp_path: Path) -> None:
        """Test that a non-UTF-8 credential file is one line naming it."""
        creds = tmp_path / "creds"
        creds.mkdir()
        (creds / "accounts__main__api_key").write_bytes(b"\xff\xfe")
        cfg = tmp_path / "c.toml"
        cfg.write_text('[[accounts]]\nname = "main"\nexchange = "binanceusdm"\nsecret = "s"\n')
        proc = run(
            ["check", "--offline", "--config", str(cfg)], env={"CREDENTIALS_DIRECTORY": str(creds)}
        )
        assert_one_line(proc)
        assert b"accounts__main__api_key" in proc.stderr

    def test_credential_file_unreadable(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Test that an unreadable credential file (PermissionError) is one UserError line
        naming the file (in process: root, which runs these tests here, reads a 0000 file)."""
        creds = tmp_path / "creds"
        creds.mkdir()
        secret = creds / "mqtt__command_secret"
        secret.write_text("k")
        cfg = tmp_path / "c.toml"
        cfg.write_text(SIM.decode())
        monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
        real = Path.read_text

        def read_text(self: Path, *args: object, **kwargs: object) -> str:
            if self == secret:
                raise PermissionError(13, "Permission denied", str(self))
            return real(self, *args, **kwargs)  # type: ignore[arg-type]

        monkeypatch.setattr(Path, "read_text", read_text)
        with pytest.raises(UserError) as caught:
            load_settings(cfg)
        text = str(caught.value)
        assert "mqtt__command_secret" in text
        assert "permission denied" in text
        assert "\n" not in text

    @pytest.mark.parametrize("command", [["stress", "--json", "--shock", "-10%"], ["report"]])
    def test_closed_stdout(self, command: list[str], tmp_path: Path) -> None:
        """Test that `... | head` (stdout closed early) is one line, not BrokenPipeError."""
        path = EXAMPLE / "binance-cross-two-positions.json"
        args = [str(script()), command[0], "--snapshot", str(path), *command[1:]]
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert proc.stdout is not None
        proc.stdout.close()  # `head` exited before reading
        _, err = proc.communicate(timeout=60)
        assert_one_line(subprocess.CompletedProcess(args, proc.returncode, b"", err))

    def test_run_closed_stdout(self, tmp_path: Path) -> None:
        """Test that `run --no-tui | head` is one line when the reader goes away."""
        cfg = tmp_path / "c.toml"
        cfg.write_text(f'state_dir = "{tmp_path / "state"}"\n' + SIM.decode())
        args = [str(script()), "run", "--config", str(cfg), "--no-tui", "--duration", "3"]
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert proc.stdout is not None
        proc.stdout.readline()
        proc.stdout.close()
        _, err = proc.communicate(timeout=60)
        assert_one_line(subprocess.CompletedProcess(args, proc.returncode, b"", err))


class TestLinearChecks:
    """Validation cost grows with the input, not its square."""

    def test_duplicate_collateral_check_is_linear(self) -> None:
        """Test that 40 000 distinct collateral entries parse in well under a second
        (41 s when each asset was counted in the whole list)."""
        data = {
            **SNAPSHOT,
            "collateral": [{"asset": f"A{i}", "amount": 1.0} for i in range(40_000)],
        }
        started = time.process_time()
        snapshot = parse_snapshot(data, "big.json")
        assert len(snapshot.collateral) == 40_000
        assert time.process_time() - started < 5.0  # generous: ~0.2 s here


DEEP = "[" * 5000 + "]" * 5000


class TestHostileEnvelope:
    """Signed-command envelopes that raised inside the HTTP handler (HTTP 500, unaudited)."""

    @pytest.mark.parametrize(
        ("raw", "reason"),
        [
            (
                json.dumps({"body": DEEP, "ts": 100, "sig": signature(b"k", 100, DEEP)}),
                "body is nested too deeply",
            ),
            ('{"body": "{}", "ts": 1' + "0" * 400 + ', "sig": "00"}', "numeric 'ts'"),
            ("[" * 5000 + "]" * 5000, "nested too deeply"),
            ('{"body": "{}", "ts": 100, "sig": "\u00e9' + "0" * 63 + '"}', "bad signature"),
        ],
    )
    async def test_refused_and_audited(self, raw: str, reason: str, tmp_path: Path) -> None:
        """Test that the endpoint answers 403 with the reason and the refusal is audited."""
        import aiohttp

        from monitor.alerts.command_http import serve_commands
        from monitor.alerts.pipeline import AlertPipeline
        from monitor.core.alert_config import AlertConfig
        from monitor.store import Store

        pipeline = AlertPipeline(Store(tmp_path / "a.db"), AlertConfig(), command_secret=b"k")
        port = free_port()
        runner = await serve_commands(
            lambda body, source: pipeline.handle_command(body, now=100.0, source=source),
            f"127.0.0.1:{port}",
        )
        try:
            async with (
                aiohttp.ClientSession() as http,
                http.post(f"http://127.0.0.1:{port}/command", data=raw.encode("utf-8")) as resp,
            ):
                assert resp.status == 403
                assert reason in (await resp.json())["error"]
        finally:
            await runner.cleanup()
        [row] = pipeline.store.audit_trail(kind="command_refused")
        assert row.payload["source"] == "http:127.0.0.1"


class TestLogStreamLost:
    """Only a pipe's reader leaving stops the daemon; a lost journald socket does not."""

    @pytest.mark.parametrize("piped", [True, False])
    def test_broken_log_stream(self, piped: bool, monkeypatch: pytest.MonkeyPatch) -> None:
        """Test that a broken pipe on stdout stops the process (SIGTERM, exit 2 later) only
        when stdout is a pipe, and logging goes quietly to /dev/null either way."""
        import logging

        from monitor.ops import logs

        class Broken:
            def write(self, text: str) -> int:
                raise BrokenPipeError

            def flush(self) -> None:
                raise BrokenPipeError

        kills: list[int] = []
        discards: list[bool] = []
        monkeypatch.setattr(logs, "_stdout_is_pipe", lambda: piped)
        monkeypatch.setattr(logs, "discard_stdout", lambda: discards.append(True))
        monkeypatch.setattr(logs.os, "kill", lambda pid, sig: kills.append(sig))
        monkeypatch.setattr(logs, "OUTPUT_CLOSED", logs.threading.Event())
        handler = logs._Handler(Broken())  # type: ignore[arg-type]
        for _ in range(3):
            handler.handle(logging.LogRecord("x", logging.ERROR, __file__, 1, "m", None, None))
        assert discards == [True]
        assert len(kills) == (1 if piped else 0)
        assert logs.OUTPUT_CLOSED.is_set() is piped
