"""`python -m panoseti_daq.serve` refuses listen arguments it cannot honour: one line naming the
problem, exit code 2, no traceback, and it never starts listening on something else."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


def _serve(tmp_path, *args, settings=None, timeout=20):
    argv = [sys.executable, "-m", "panoseti_daq.serve", *args]
    if settings is not None:
        path = tmp_path / "c.json"
        path.write_text(json.dumps(settings))
        argv += ["--config", str(path)]
    # A server that starts anyway would run until the timeout: the test then fails.
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (("--port", "99999", "--uds", ""), ("--port", "99999", "0..65535")),
        (("--port", "99999", "--host", "127.0.0.1", "--uds", ""), ("--port", "99999")),
        (("--port", "-2", "--uds", ""), ("--port", "-2")),
        (("--port", "70000", "--host", "::1"), ("--port", "70000")),
        (("--port", "-1", "--uds", ""), ("nothing to listen on",)),
        (("--port", "-1", "--uds", "/nonexistent_dir_pdaq/x.sock"), ("/nonexistent_dir_pdaq",)),
        (("--port", "-1", "--uds", "/tmp/" + "x" * 120 + ".sock"), ("--uds", "too long")),
    ],
)
def test_bad_listen_arguments_exit_2(tmp_path, args, words):
    """Listen options: out-of-range ports (also with --host, where they used to raise
    OverflowError, and without, where they wrapped modulo 65536), a socket in a missing
    directory, and no listener at all."""
    result = _serve(tmp_path, *args)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1, result.stderr
    assert all(word in lines[0] for word in words), lines[0]
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("settings", "args", "words"),
    [
        ({"port": 99999}, ("--uds", ""), ("'port'", "65535")),
        ({"port": -1}, ("--uds", ""), ("'port'",)),
        (
            {"unix_domain_socket": "unix:///nonexistent_dir_pdaq/d.sock"},
            ("--port", "-1"),
            ("'unix_domain_socket'", "/nonexistent_dir_pdaq"),
        ),
        ({"unix_domain_socket": ""}, ("--port", "-1"), ("nothing to listen on",)),
    ],
)
def test_bad_listen_settings_in_the_config_file_exit_2(tmp_path, settings, args, words):
    """The same checks for the config file's `port` and `unix_domain_socket`, naming the key
    and the file."""
    result = _serve(tmp_path, *args, settings=settings)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1, result.stderr
    assert all(word in lines[0] for word in words), lines[0]
    if "'" in words[0]:
        assert str(tmp_path / "c.json") in lines[0]


def test_serve_takes_the_start_up_objects_out_of_the_collectors_passes():
    """What `serve` does once listening: the objects of start-up (modules, descriptor pools,
    configuration) are frozen, so that no later collection of the old generations walks them
    (the stall of every stream that this caused is measured by `make bench`, not here)."""
    import gc

    from panoseti_daq.server.app import freeze_startup_objects

    assert gc.get_freeze_count() == 0
    try:
        freeze_startup_objects()
        assert gc.get_freeze_count() > 10_000
    finally:
        gc.unfreeze()
