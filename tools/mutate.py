"""`make mutate`: mutation testing of the server's rule modules and the codec (not in CI).

Runs mutmut 3 with the configuration in pyproject.toml ([tool.mutmut]: the modules mutated and
the tests selected), the property tests with fewer examples (hypothesis profile "mutate", see
tests/conftest.py), then prints the score per module and the diff of every surviving mutant.
Mutants live in ./mutants (git-ignored); a second run resumes and retests only what changed.

Usage: python tools/mutate.py [MUTANT_NAME_GLOB ...]
"""

from __future__ import annotations

import collections
import os
import subprocess
import sys


def _mutmut(*args: str, capture: bool = False) -> str:
    env = {**os.environ, "HYPOTHESIS_PROFILE": "mutate"}
    result = subprocess.run(
        [sys.executable, "-m", "mutmut", *args],
        env=env,
        text=True,
        capture_output=capture,
        check=False,
    )
    if capture and result.returncode != 0:
        raise SystemExit(f"mutmut {' '.join(args)} failed:\n{result.stderr}")
    return result.stdout or ""


def main(argv: list[str]) -> int:
    children = str(max(1, os.cpu_count() or 1))
    _mutmut("run", "--max-children", children, *argv)
    statuses: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    survivors = []
    for line in _mutmut("results", "--all", "true", capture=True).splitlines():
        name, _, status = line.strip().rpartition(": ")
        if not name:
            continue
        module = name.split(".x_")[0].split(".xǁ")[0]
        statuses[module][status] += 1
        if status in ("survived", "no tests", "timeout", "suspicious"):
            survivors.append((name, status))
    print("\nmodule                               killed / mutants   score")
    total_killed = total = 0
    for module, counts in sorted(statuses.items()):
        killed, count = counts["killed"], sum(counts.values()) - counts["not checked"]
        if count == 0:
            print(f"{module:36} not run")
            continue
        total_killed, total = total_killed + killed, total + count
        print(f"{module:36} {killed:6} / {count:<7}  {killed / count:6.1%}")
    if total:
        print(f"{'all':36} {total_killed:6} / {total:<7}  {total_killed / total:6.1%}")
    print(f"\n{len(survivors)} mutant(s) not killed:")
    for name, status in survivors:
        print(f"\n## {name} ({status})")
        print(_mutmut("show", name, capture=True))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
