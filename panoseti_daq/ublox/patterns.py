"""Capture and poll patterns: which message names a client asks for (R-UBX-CAP-1/2, R-UBX-POLL-2).

Loop-free. A pattern is a Python regex matched at the start of a pyubx2 message name
("TIM-TP"). Beyond the spec's limits (R-UBX-CAP-1), a pattern whose backtracking could stall the
server's event loop, which every client shares, is refused before it runs on any name.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable

__all__ = ["MAX_PATTERNS", "MAX_PATTERN_LENGTH", "PatternError", "PatternSet", "compile_patterns"]

# R-UBX-CAP-1
MAX_PATTERNS = 64
MAX_PATTERN_LENGTH = 256


class PatternError(ValueError):
    """A capture or poll pattern list that breaks R-UBX-CAP-1: the message names the pattern."""


class PatternSet:
    """Compiled capture or poll patterns: a name matches when any pattern matches at its start.

    No patterns matches every name (R-UBX-CAP-2). Results are remembered per name, so a costly
    pattern costs once per message name, not once per message.
    """

    def __init__(self, patterns: tuple[str, ...], compiled: tuple[re.Pattern[str], ...]) -> None:
        self.patterns = patterns
        self._compiled = compiled
        self._seen: dict[str, bool] = {}

    def __repr__(self) -> str:
        return f"PatternSet({list(self.patterns)!r})"

    def matches(self, name: str) -> bool:
        """True when `name` ("TIM-TP") is selected by these patterns."""
        known = self._seen.get(name)
        if known is None:
            known = not self._compiled or any(p.match(name) for p in self._compiled)
            if len(self._seen) < 4096:
                self._seen[name] = known
        return known


# A client's regex runs on the server's event loop, which DaqData shares: a pattern whose
# backtracking explodes ("((N|NA|[A-Z])*)*!" takes 15 s on "UNKNOWN-7701-NOMINAL") would stall
# every client. Beyond R-UBX-CAP-1 a pattern must not repeat a group that itself repeats or has
# alternatives, and its repeats and choice points are bounded so that trying it on any name of up
# to _NAME_LENGTH characters takes at most about _MAX_MATCH_STEPS backtracking steps.
_NAME_LENGTH = 32
_MAX_MATCH_STEPS = 200_000
_COUNTED_REPEAT = re.compile(r"\{(\d*)(,(\d*))?\}")


def _quantifier_at(pattern: str, index: int) -> tuple[int, bool] | None:
    """(length, repeats more than once?) of a quantifier at `index`, or None if there is none."""
    char = pattern[index]
    if char in "*+":
        return 1, True
    if char == "?":
        return 1, False
    if char == "{":
        counted = _COUNTED_REPEAT.match(pattern, index)
        if counted is None or not (counted[1] or counted[2]):
            return None  # a literal brace
        if counted[2]:
            most = counted[3]
            return len(counted[0]), not most or int(most) > 1
        return len(counted[0]), int(counted[1]) > 1
    return None


def _backtracking_risk(pattern: str) -> str | None:
    """Why matching `pattern` could take very long, or None (a scan of the regex's syntax)."""
    repeats = choices = 0
    # Per open group: [contains a repeat, contains a choice (| or ?), has alternatives itself].
    frames = [[False, False, False]]
    closed: list[bool] | None = None  # the group just closed, which a quantifier would repeat
    index = 0
    while index < len(pattern):
        char = pattern[index]
        just_closed, closed = closed, None
        if char == "\\":
            index += 2
        elif char == "[":
            index += 2 if pattern.startswith("^", index + 1) else 1
            index += 1 if pattern.startswith("]", index) else 0
            while index < len(pattern) and pattern[index] != "]":
                index += 2 if pattern[index] == "\\" else 1
            index += 1
        elif char == "(":
            frames.append([False, False, False])
            index += 2 if pattern.startswith("?", index + 1) else 1
        elif char == ")" and len(frames) > 1:
            closed = frames.pop()
            choices += closed[2]
            frames[-1][0] |= closed[0]
            frames[-1][1] |= closed[1]
            index += 1
        elif char == "|":
            frames[-1][1] = frames[-1][2] = True
            index += 1
        elif (quantifier := _quantifier_at(pattern, index)) is not None:
            length, repeating = quantifier
            if repeating:
                if just_closed is not None and (just_closed[0] or just_closed[1]):
                    return (
                        "it repeats a group that itself repeats or has alternatives or "
                        "optional parts"
                    )
                repeats += 1
                frames[-1][0] = True
            else:
                choices += 1
                frames[-1][1] = True
            index += length
            index += 1 if pattern.startswith(("?", "+"), index) else 0  # lazy or possessive
        else:
            index += 1
    choices += frames[0][2]
    if math.comb(_NAME_LENGTH + repeats, repeats) * 2**choices > _MAX_MATCH_STEPS:
        return f"it has {repeats} repeats and {choices} optional parts or alternative groups"
    return None


def compile_patterns(patterns: Iterable[str]) -> PatternSet:
    """Python regexes, each matched at the start of a name (`re.match`); `PatternError` names the
    pattern and the problem when one is invalid, too long, there are too many (R-UBX-CAP-1), or
    its backtracking could stall the server (see `_backtracking_risk`).
    """
    given = list(patterns)
    if len(given) > MAX_PATTERNS:
        raise PatternError(f"{len(given)} patterns given; at most {MAX_PATTERNS} are allowed")
    compiled: list[re.Pattern[str]] = []
    for pattern in given:
        if not isinstance(pattern, str):
            raise PatternError(f"pattern {pattern!r} is not a string")
        if len(pattern) > MAX_PATTERN_LENGTH:
            raise PatternError(
                f"pattern {pattern[:40]!r}... is {len(pattern)} characters long; "
                f"at most {MAX_PATTERN_LENGTH} are allowed"
            )
        try:
            compiled.append(re.compile(pattern))
        except (re.error, RecursionError, OverflowError) as err:
            raise PatternError(
                f"pattern {pattern!r} is not a valid regular expression: {err}"
            ) from err
        risk = _backtracking_risk(pattern)
        if risk is not None:
            raise PatternError(
                f"pattern {pattern!r} could take too long to match: {risk}; simplify it"
            )
    return PatternSet(tuple(given), tuple(compiled))
