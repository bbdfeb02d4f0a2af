"""The README's recipes run as written, and the manual's links hold (R-OPS-1, R-OPS-4).

Every shell block of the README's "Two commands" (but `make` itself, which is this suite) and
quick starts runs, in order, as one shell session would: in a scratch directory beside the
checkout's `.venv`, `panoseti_daq/` and `examples/`. Only the ports (50123, 9417) and the
Hashpipe socket paths are replaced, by free ones, so that the run touches nothing else on the
machine. The deployment block (`# as root`) needs root and systemd: tests/test_deploy.py checks
what it installs instead. A Python block whose first line names a file (`# my_script.py: ...`)
is saved under that name, as the README says.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
from pathlib import Path

import pytest

from panoseti_daq.server.process import free_port

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
FENCE = re.compile(r"^```(\w*)\n(.*?)^```$", re.M | re.S)
RUN_SECTIONS = ("Two commands", "Quick start for a scientist", "Quick start for an operator")


def _sections(text: str) -> dict[str, str]:
    parts = re.split(r"^## (.+)$", text, flags=re.M)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def _recipes() -> tuple[str, dict[str, str]]:
    """The shell session of the README's recipes, and the files its Python blocks name."""
    sections = _sections(README.read_text())
    shell, files = [], {}
    for name in RUN_SECTIONS:
        for kind, body in FENCE.findall(sections[name]):
            first = body.splitlines()[0]
            if kind == "python" and (named := re.match(r"# ([\w.]+\.py)\b", first)):
                files[named.group(1)] = body
            elif kind == "bash" and not first.startswith(("make ", "# as root")):
                shell.append(body)
    return "\n".join(shell), files


def test_the_readme_is_short_and_names_no_rule_ids():
    text = README.read_text()
    assert len(text.splitlines()) <= 300
    assert not re.search(r"\bR-[A-Z]+-\d+", text)


def _slug(heading: str) -> str:
    """GitHub's anchor of a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


@pytest.mark.parametrize("page", [README, *DOCS], ids=lambda p: p.name)
def test_every_link_of_the_manual_resolves(page):
    """Relative links to files that exist, anchors to headings that exist."""
    for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
        if re.match(r"\w+://", target):
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        assert file.exists(), f"{page.name}: {target}: no such file"
        if anchor:
            headings = re.findall(r"^#+ (.+)$", file.read_text(), flags=re.M)
            assert anchor in {_slug(h) for h in headings}, f"{page.name}: {target}: no heading"


@pytest.mark.timeout(400)
def test_the_readme_recipes_run_as_written(tmp_path):
    """Stream, record, plot, script, replay a recording; nodes fed by files, Hashpipe sockets
    and uploads, with metrics: each command as the README shows it, exit status 0."""
    script, files = _recipes()
    assert "panoseti-daq my_daq_config.json --record rec" in script
    assert "--init hp_io_config.json" in script and "panoseti_daq.replay" in script
    for name in (".venv", "panoseti_daq", "examples", "deploy"):
        (tmp_path / name).symlink_to(ROOT / name)
    for name, body in files.items():
        (tmp_path / name).write_text(body)
    port, metrics = free_port(), free_port()
    script = script.replace("50123", str(port)).replace(":9417", f":{metrics}")
    script = script.replace("--metrics-port 9417", f"--metrics-port {metrics}")
    script = script.replace("/tmp/hashpipe_grpc", str(tmp_path / "hp"))
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    env["MPLBACKEND"] = "Agg"
    process = subprocess.Popen(
        ["bash", "-e", "-c", script],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = process.communicate(timeout=360)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
        else:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)  # anything the script left running
    assert process.returncode == 0, output[-6000:]
    assert "Traceback" not in output, output[-6000:]
    assert "recorded" in output and (tmp_path / "rec" / "module_224").is_dir()
    assert (tmp_path / "panoseti_plots" / "phdist.png").stat().st_size > 0
    assert (tmp_path / "panoseti_plots" / "preview.png").stat().st_size > 0
    assert re.search(r"^224 (MOVIE|PULSE_HEIGHT) ", output, re.M), output[-6000:]
    assert 'source="upload"' in output
    assert "module 254 ph256: frames=" in output  # the socket- and upload-fed nodes
