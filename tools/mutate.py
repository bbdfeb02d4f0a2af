"""`make mutate`: mutation testing of the server's rule modules and the codec (not in CI).

Runs mutmut 3 with the configuration in pyproject.toml ([tool.mutmut]: the modules mutated and
the tests selected), the property tests with fewer examples (hypothesis profile "mutate", see
tests/conftest.py), then prints the score per module and the diff of every surviving mutant.
Mutants live in ./mutants (git-ignored); a second run resumes and retests only what changed.

Usage: python tools/mutate.py [MUTANT_NAME_GLOB ...]
       python tools/mutate.py --codec [MUTANT_NAME_GLOB ...]

`--codec` mutates the codec (wire/codec.py, wire/header.py, wire/varint.py) against its own
tests only (CODEC_TESTS): every server test encodes and decodes, so with the rule modules'
selection each codec mutant would run most of the suite (hours on 2 cores). mutmut reads its
configuration from ./pyproject.toml, so this runs in a copy of the tracked files under
build/mutate-codec whose [tool.mutmut] selects the codec; its mutants stay there between runs.
"""

from __future__ import annotations

import collections
import os
import shutil
import subprocess
import sys
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parent.parent
CODEC_MODULES = (
    "panoseti_daq/wire/codec.py",
    "panoseti_daq/wire/header.py",
    "panoseti_daq/wire/varint.py",
)
CODEC_TESTS = ("tests/test_codec.py", "tests/test_header_codec.py", "tests/test_frames.py")
CODEC_WORKSPACE = ROOT / "build" / "mutate-codec"


def _mutmut(*args: str, capture: bool = False, cwd: Path = ROOT) -> str:
    env = {**os.environ, "HYPOTHESIS_PROFILE": "mutate"}
    result = subprocess.run(
        [sys.executable, "-m", "mutmut", *args],
        cwd=cwd,
        env=env,
        text=True,
        capture_output=capture,
        check=False,
    )
    if capture and result.returncode != 0:
        raise SystemExit(f"mutmut {' '.join(args)} failed:\n{result.stderr}")
    return result.stdout or ""


def _toml_value(value: object) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return str(value)


def codec_workspace() -> Path:
    """build/mutate-codec: the tracked files as they are now, with the [tool.mutmut] section
    of pyproject.toml mutating CODEC_MODULES and selecting CODEC_TESTS (on both backends: the
    codec tests do not use one)."""
    tracked = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True
    ).stdout.decode()
    for name in filter(None, tracked.split("\0")):
        source, target = ROOT / name, CODEC_WORKSPACE / name
        if source.is_file() and (not target.exists() or target.read_bytes() != source.read_bytes()):
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    pyproject = (ROOT / "pyproject.toml").read_text()
    settings = tomllib.loads(pyproject)["tool"]["mutmut"]
    settings["only_mutate"] = list(CODEC_MODULES)
    settings["pytest_add_cli_args_test_selection"] = list(CODEC_TESTS)
    settings["pytest_add_cli_args"] = ["-p", "no:randomly", "-x", "-q", "--timeout=60"]
    section = "\n".join(
        ["[tool.mutmut]", *(f"{key} = {_toml_value(value)}" for key, value in settings.items())]
    )
    start = pyproject.index("[tool.mutmut]")
    end = pyproject.find("\n[", start + 1)
    rest = pyproject[end:] if end >= 0 else "\n"
    (CODEC_WORKSPACE / "pyproject.toml").write_text(pyproject[:start] + section + rest)
    return CODEC_WORKSPACE


def main(argv: list[str]) -> int:
    cwd = ROOT
    if argv[:1] == ["--codec"]:
        argv = argv[1:]
        cwd = codec_workspace()
    children = str(max(1, os.cpu_count() or 1))
    _mutmut("run", "--max-children", children, *argv, cwd=cwd)
    statuses: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    survivors = []
    for line in _mutmut("results", "--all", "true", capture=True, cwd=cwd).splitlines():
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
        print(_mutmut("show", name, capture=True, cwd=cwd))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
