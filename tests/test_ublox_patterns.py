"""Capture and poll patterns: start-of-name regexes, their limits, and the backtracking check
that keeps a client's regex from stalling the server (R-UBX-CAP-1/2)."""

from __future__ import annotations

import json
import select
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from panoseti_daq.ublox.patterns import (
    MAX_PATTERN_LENGTH,
    MAX_PATTERNS,
    PatternError,
    compile_patterns,
)
from panoseti_daq.ublox.protocol import POLLABLE_NAMES


@pytest.mark.parametrize(
    ("patterns", "name", "expected"),
    [
        (["TIM"], "TIM-TP", True),
        (["TIM"], "TIM-SVIN", True),
        (["TP"], "TIM-TP", False),
        (["TIM-TP$"], "TIM-TP", True),
        (["TIM-TP$"], "TIM-TPX", False),
        (["NAV-TIMEUTC", "TIM"], "NAV-TIMEUTC", True),
        ([], "ACK-ACK", True),
        ([".*UTC"], "NAV-TIMEUTC", True),
    ],
)
def test_patterns_match_at_the_start_of_the_name(patterns, name, expected):
    """R-UBX-CAP-2: re.match semantics; no patterns selects everything."""
    pattern_set = compile_patterns(patterns)
    assert pattern_set.matches(name) is expected
    assert pattern_set.matches(name) is expected  # remembered answer, same result


def test_pattern_errors_name_the_pattern_and_the_problem():
    """R-UBX-CAP-1: invalid regex, too many patterns, a pattern too long."""
    with pytest.raises(PatternError, match=r"pattern 'TIM\(' is not a valid regular expression"):
        compile_patterns(["NAV", "TIM("])
    with pytest.raises(PatternError, match=f"65 patterns given; at most {MAX_PATTERNS}"):
        compile_patterns(["TIM"] * 65)
    compile_patterns(["TIM"] * MAX_PATTERNS)
    with pytest.raises(PatternError, match=f"257 characters long; at most {MAX_PATTERN_LENGTH}"):
        compile_patterns(["A" * 257])
    compile_patterns(["A" * MAX_PATTERN_LENGTH])


@pytest.mark.parametrize(
    "pattern",
    [
        "((N|NA|[A-Z]|-|\\d)*)*!",  # 15 s on UNKNOWN-7701-NOMINAL without the check
        "(.*)*X",
        "([A-Z0-9-]|[A-Z0-9-])*X",
        "(a+){2}",
        ".*.*.*.*.*.*.*.*.*.*.*!",
        "(A)?" * 18,
        "(A|B)" * 18,
    ],
)
def test_patterns_that_could_stall_the_server_are_refused(pattern):
    """R-UBX-CAP-1 (and the rule that bad input never disturbs other clients): a pattern whose
    backtracking could explode is refused with a reason, before it runs on any name."""
    with pytest.raises(PatternError, match="could take too long to match: it "):
        compile_patterns(["TIM", pattern])


@pytest.mark.parametrize(
    "pattern",
    [
        "TIM",
        "TIM-TP$",
        "NAV-(TIMEUTC|CLOCK)$",
        ".*UTC",
        "(?:TIM|NAV)-.*",
        "NAV2?-TIME(UTC|GPS)",
        "\\w+-\\w+$",
        "[A-Z]{3}-TP",
        "[*+?(]*X",
        "\\(*",
        "(ab){3}",
        "a{,3}",
        "a{",
        ".*.*.*.*!",
    ],
)
def test_ordinary_patterns_are_accepted(pattern):
    """R-UBX-CAP-1/2: what a client writes for message names passes the backtracking check."""
    compile_patterns([pattern])


NAMES = [*POLLABLE_NAMES, "UNKNOWN-7701-NOMINAL", "A" * 32, "NAV-" + "N" * 28]
regex_atoms = st.sampled_from([".", "A", "N", "-", "\\w", "[A-Z]", "\\d", "NA"])
regexes = st.recursive(
    regex_atoms,
    lambda inner: st.one_of(
        st.builds(lambda a, b: a + b, inner, inner),
        st.builds(lambda a, b: f"({a}|{b})", inner, inner),
        st.builds(
            lambda a, q: f"(?:{a}){q}", inner, st.sampled_from(["*", "+", "?", "{2,}", "*?"])
        ),
    ),
    max_leaves=12,
)


# The matching runs in a child process: a pattern that backtracks for minutes cannot be
# interrupted inside the regex engine, and must fail this test, not hang the run.
_MATCHER = """
import json, sys, time
from panoseti_daq.ublox.protocol import compile_patterns
names = json.loads(sys.stdin.readline())
for line in sys.stdin:
    compiled = compile_patterns([json.loads(line)])
    started = time.perf_counter()
    for name in names:
        compiled.matches(name)
    print(time.perf_counter() - started, flush=True)
"""


class MatchTimer:
    """time_all(pattern): seconds the child takes to try `pattern` on every name, or None after
    5 s (the child is then killed and a fresh one started)."""

    def __init__(self) -> None:
        self.child: subprocess.Popen[str] | None = None

    def _start(self) -> subprocess.Popen[str]:
        child = subprocess.Popen(
            [sys.executable, "-c", _MATCHER],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert child.stdin is not None
        child.stdin.write(json.dumps(NAMES) + "\n")
        return child

    def time_all(self, pattern: str) -> float | None:
        if self.child is None:
            self.child = self._start()
        child = self.child
        assert child.stdin is not None and child.stdout is not None
        child.stdin.write(json.dumps(pattern) + "\n")
        child.stdin.flush()
        ready, _, _ = select.select([child.stdout], [], [], 5.0)
        if ready:
            return float(child.stdout.readline())
        self.close()
        return None

    def close(self) -> None:
        if self.child is not None:
            self.child.kill()
            self.child.wait()
            self.child = None


@pytest.fixture(scope="module")
def match_timer():
    timer = MatchTimer()
    try:
        yield timer.time_all
    finally:
        timer.close()


@settings(max_examples=300, deadline=None)
@given(regexes)
def test_accepted_patterns_match_every_name_quickly(match_timer, pattern):
    """R-UBX-CAP-1: any pattern the check accepts decides every name of up to 32 characters in
    well under a second in all (it runs on the server's event loop)."""
    try:
        compile_patterns([pattern + "!"])
    except PatternError:
        return
    elapsed = match_timer(pattern + "!")
    assert elapsed is not None, f"{pattern!r} still matching after 5 s"
    assert elapsed < 0.5, pattern
