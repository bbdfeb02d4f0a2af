"""docs/behaviour.md stays true: every rule it lists has an enforcing place and a test.

For each table row `| R-X-N | rule | `module:qualname` | `tests/file.py::test` |`: the module
imports and the qualified name resolves (getattr, step by step); the test file exists, contains
the rule ID and, when named, the test function. Each ID family (R-STREAM, R-INIT, ...) runs
from 1 without gaps across the tables and the "Not yet enforced" list, and no ID is in both.
"""

from __future__ import annotations

import importlib
import re
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "behaviour.md"
ROW = re.compile(
    r"^\| (R-[A-Z]+-\d+) \| [^|]+ \| `([\w.]+):([\w.]+)` \| `(tests/[\w.]+)(?:::(\w+))?` \|$"
)
PENDING = re.compile(r"^\| (R-[A-Z]+-\d+) \| [^|]+ \|$")


def _rows() -> tuple[list[tuple[str, str, str, str, str | None]], list[str]]:
    rows, pending = [], []
    for line in DOC.read_text().splitlines():
        if match := ROW.match(line):
            rows.append(match.groups())
        elif match := PENDING.match(line):
            pending.append(match.group(1))
        elif re.match(r"^\| R-", line):
            raise AssertionError(f"docs/behaviour.md: a row in neither form: {line}")
    return rows, pending


ROWS, PENDING_IDS = _rows()


def test_the_doc_lists_rules():
    assert len(ROWS) > 80


@pytest.mark.parametrize(
    ("rule", "module", "name", "test_file", "test"), ROWS, ids=[r[0] for r in ROWS]
)
def test_rule_has_an_enforcing_place_and_a_test(rule, module, name, test_file, test):
    """Every listed rule: the enforcing module:function exists; its test file names the rule."""
    target = importlib.import_module(module)
    for part in name.split("."):
        assert hasattr(target, part), f"{rule}: {module}:{name} does not exist ({part})"
        target = getattr(target, part)
    path = ROOT / test_file
    assert path.is_file(), f"{rule}: {test_file} does not exist"
    text = path.read_text()
    assert re.search(rf"\b{re.escape(rule)}\b", text), f"{rule}: {test_file} does not name it"
    if test is not None:
        assert re.search(rf"\bdef {test}\(", text), f"{rule}: no {test} in {test_file}"


def test_every_family_is_complete_and_each_id_listed_once():
    listed = [r[0] for r in ROWS] + PENDING_IDS
    assert len(listed) == len(set(listed)), "an ID is listed twice"
    families: dict[str, set[int]] = defaultdict(set)
    for rule in listed:
        family, number = rule.rsplit("-", 1)
        families[family].add(int(number))
    for family, numbers in families.items():
        missing = set(range(1, max(numbers) + 1)) - numbers
        assert not missing, f"{family}: {sorted(missing)} missing from docs/behaviour.md"


SPEC = ROOT.parent / "shared" / "spec" / "daqdata-behaviour.md"


@pytest.mark.skipif(not SPEC.is_file(), reason="the behaviour spec is not beside this checkout")
def test_every_rule_of_the_spec_is_listed():
    """Each rule ID the spec defines (`- R-X-N ...`) has its line in docs/behaviour.md."""
    defined = set(re.findall(r"^- (R-[A-Z]+-\d+)\b", SPEC.read_text(), flags=re.M))
    listed = {r[0] for r in ROWS} | set(PENDING_IDS)
    assert defined, "no rule IDs found in the spec"
    assert not defined - listed, f"not in docs/behaviour.md: {sorted(defined - listed)}"
