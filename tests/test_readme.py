"""The README and docs/ as a new user meets them: links that resolve, a quick path that works.

The quick path test follows README's five steps literally: its TOML block and `export` lines
are taken from README.md itself, only the ntfy server is pointed at a local receiver (the
brief: loopback only), so an edit that breaks the steps breaks this test.
"""

from __future__ import annotations

import asyncio
import os
import re
import sys
from pathlib import Path

import pytest

from tests.test_notify import receiver

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
EXE = Path(sys.executable).parent / "margin-monitor"


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lowercase, punctuation dropped, spaces to dashes."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    return {
        _slug(line.lstrip("#")) for line in path.read_text().splitlines() if line.startswith("#")
    }


def _links(path: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)  # code is not a link
    return LINK.findall(text)


class TestLinks:
    def test_readme_links_stay_in_the_repository(self) -> None:
        """Test that no README link points outside the repository."""
        links = _links(README)
        assert len(links) >= 10
        outside = [link for link in links if re.match(r"^[a-z]+:", link) or link.startswith("//")]
        assert outside == []

    @pytest.mark.parametrize("page", [README, *DOCS], ids=lambda p: p.name)
    def test_relative_links_resolve(self, page: Path) -> None:
        """Test that every relative link (and its #anchor) names an existing file and heading."""
        for link in _links(page):
            if re.match(r"^[a-z]+:", link):
                continue
            target_text, _, anchor = link.partition("#")
            target = (page.parent / target_text).resolve() if target_text else page
            assert target.exists(), f"{page.name}: {link} does not exist"
            assert ROOT in target.parents or target == ROOT, f"{page.name}: {link} leaves the repo"
            if anchor:
                assert anchor in _anchors(target), f"{page.name}: {link}: no such heading"

    def test_every_doc_is_linked_from_the_readme(self) -> None:
        """Test that each docs/ page is reachable from the README."""
        linked = {Path(link.partition("#")[0]).name for link in _links(README)}
        assert {p.name for p in DOCS} <= linked

    def test_first_screen_has_the_two_commands(self) -> None:
        """Test that the README's first 20 lines hold `make demo` and `make test`."""
        head = "\n".join(README.read_text().splitlines()[:20])
        assert "make demo" in head
        assert "make test" in head
        ci = (ROOT / ".ci" / "run").read_text()
        assert ci.rstrip().endswith("make test")


class TestQuickPath:
    async def test_five_steps_reach_a_test_push(self, tmp_path: Path) -> None:
        """Test that README's quick path (config, keys, check, notify-test) rings a local ntfy."""
        text = README.read_text()
        quick = text.split("## Your Binance account", 1)[1].split("\n## ", 1)[0]
        toml = re.search(r"```toml\n(.*?)```", quick, re.S)
        assert toml is not None
        exports = dict(re.findall(r"export (MARGIN_MONITOR__\w+)='([^']*)'", quick))
        assert set(exports) == {
            "MARGIN_MONITOR__ACCOUNTS__MAIN__API_KEY",
            "MARGIN_MONITOR__ACCOUNTS__MAIN__SECRET",
        }
        env = {k: v for k, v in os.environ.items() if not k.startswith("MARGIN_MONITOR__")}
        env |= exports
        async with receiver() as rec:
            config = tmp_path / "my.toml"
            config.write_text(
                toml.group(1).replace("ntfy://ntfy.sh/", f"ntfy://127.0.0.1:{rec.port}/")
            )
            outputs = []
            for command in ("check", "notify-test"):
                extra = ["--offline"] if command == "check" else []
                proc = await asyncio.create_subprocess_exec(
                    str(EXE),
                    command,
                    "--config",
                    str(config),
                    *extra,
                    env=env,
                    stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.PIPE,
                )
                out, err = await asyncio.wait_for(proc.communicate(), 60)
                assert proc.returncode == 0, err.decode()
                outputs.append(out.decode())
        assert "main: binanceusdm (production" in outputs[0]
        assert "notify[phone]: ntfy at 127.0.0.1" in outputs[0]
        assert "your-api-key" not in outputs[0] + outputs[1]
        assert "1 of 1 channel(s) delivered the test push" in outputs[1]
        assert len(rec.requests) == 1
        assert b"my-margin-alerts-change-me" in rec.requests[0][2]


class TestCommandsPage:
    def test_every_subcommand_is_documented(self) -> None:
        """Test that docs/commands.md has a row for every `margin-monitor` subcommand."""
        from monitor.cli.app import build_parser

        parser = build_parser()
        sub = next(a for a in parser._actions if a.dest == "command")
        names = set(sub.choices)  # type: ignore[arg-type]
        assert {"run", "check", "notify-test"} <= names
        page = (ROOT / "docs" / "commands.md").read_text()
        missing = [n for n in sorted(names) if f"`margin-monitor {n}" not in page]
        assert missing == []


class TestCodeCitations:
    def test_comments_cite_pages_of_this_repository(self) -> None:
        """Test that the code cites docs/ pages that exist, never notes or a design file
        outside the repository."""
        sources = sorted((ROOT / "monitor").rglob("*.py"))
        assert sources
        cited: set[str] = set()
        for path in sources:
            text = path.read_text()
            assert not re.search(r"\bnotes/[\w-]+\.md|DESIGN\.md", text), path.name
            cited |= set(re.findall(r"\bdocs/([\w-]+\.md)", text))
        assert len(cited) >= 8
        missing = sorted(c for c in cited if not (ROOT / "docs" / c).exists())
        assert missing == []
