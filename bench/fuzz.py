"""Fuzz snapshot parsing, payload normalisation and config loading with >= 100 000 inputs.

    .venv/bin/python bench/fuzz.py                  # 30k snapshot + 50k normalize + 20k config
                                                    # + 80k envelope + 20k http (issue 13)
    .venv/bin/python bench/fuzz.py --only envelope --only http   # the security targets
    .venv/bin/python bench/fuzz.py --scale 0.1      # a quick 10k run

Inputs come from tests/faults/fuzz_targets.py with the known crashers included (`harsh`).
A "crash" is anything other than the documented rejection (UserError / MalformedPayload with
a one-line message); crashes are counted and grouped by the line that raised, not shrunk, so
one run gives every figure. Exit status 1 if any crash was seen.
"""

from __future__ import annotations

import argparse
import collections
import logging
import sys
import time
import traceback
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import structlog
from hypothesis import HealthCheck, Phase, given, settings

from tests.faults.fuzz_targets import BadRejection, ConfigChecker, targets
from tests.security.fuzz_targets import EnvelopeChecker, HttpChecker, envelope_inputs, http_inputs

COUNTS = {
    "snapshot": 30_000,
    "normalize": 50_000,
    "config": 20_000,
    "envelope": 80_000,
    "http": 20_000,
}
#: issue 13: signed-command envelopes into the pipeline, raw HTTP into the command port
SECURITY = {"envelope": (envelope_inputs(), EnvelopeChecker), "http": (http_inputs(), HttpChecker)}
CHUNK = 2_000  # examples per Hypothesis run: one long run's bookkeeping grew past 900 MB


def run(
    name: str, count: int
) -> tuple[collections.Counter[str], dict[str, tuple[int, str]], float]:
    checker: Any
    if name in SECURITY:
        strategy, make = SECURITY[name]
        checker = check = make()
    else:
        strategy, check = targets(harsh=True)[name]
        checker = ConfigChecker() if name == "config" else None
    outcomes: collections.Counter[str] = collections.Counter()
    crashes: dict[str, tuple[int, str]] = {}

    def one(data: Any) -> None:
        try:
            outcomes[(checker or check)(data)] += 1
        except Exception as exc:
            frame = traceback.extract_tb(exc.__traceback__)[-1]
            where = f"{type(exc).__name__} at {Path(frame.filename).name}:{frame.lineno}"
            if isinstance(exc, BadRejection):
                where = "rejection whose message is not one line"
            seen, example = crashes.get(where, (0, f"{str(exc)[:160]!r} on {repr(data)[:160]}"))
            if not seen:  # the first of its kind, whole, at once: a long run may be cut off
                print(f"{name}: new crash {where}: {exc!r} on {data!r}", file=sys.stderr)
                traceback.print_exception(exc, limit=-4, file=sys.stderr)
            crashes[where] = (seen + 1, example)
            outcomes["crash"] += 1

    start = time.perf_counter()
    try:
        left = count
        while left > 0:
            n = min(CHUNK, left)
            left -= n
            run_chunk = settings(
                max_examples=n,
                database=None,
                deadline=None,
                phases=[Phase.generate],
                suppress_health_check=list(HealthCheck),
            )(given(strategy)(one))
            run_chunk()
    finally:
        if checker is not None:
            checker.close()
    return outcomes, crashes, time.perf_counter() - start


def main() -> int:
    # the targets log every refusal and aiohttp every bad request: figures only here
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.CRITICAL))
    logging.getLogger("aiohttp").setLevel(logging.CRITICAL)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every count")
    parser.add_argument("--only", choices=sorted(COUNTS), action="append")
    args = parser.parse_args()
    total = 0
    total_crashes = 0
    print(
        f"{'target':<10} {'inputs':>8} {'accepted':>9} {'rejected':>9} {'crashes':>8} "
        f"{'seconds':>8}"
    )
    details: list[str] = []
    for name, base in COUNTS.items():
        if args.only and name not in args.only:
            continue
        outcomes, crashes, seconds = run(name, max(1, int(base * args.scale)))
        n = sum(outcomes.values())
        total += n
        total_crashes += outcomes["crash"]
        print(
            f"{name:<10} {n:>8} {outcomes['accepted']:>9} {outcomes['rejected']:>9} "
            f"{outcomes['crash']:>8} {seconds:>8.1f}",
            flush=True,
        )
        details += [
            f"  {name}: {count} x {where}: {example}"
            for where, (count, example) in sorted(crashes.items())
        ]
    print(f"{'total':<10} {total:>8} {'':>9} {'':>9} {total_crashes:>8}")
    if details:
        print("crashes by raising line (count x where: first example):")
        print("\n".join(details))
    return 1 if total_crashes else 0


if __name__ == "__main__":
    sys.exit(main())
