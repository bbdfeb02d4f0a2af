"""Shared fixtures: real DaqData servers on loopback TCP and temporary Unix sockets.

- `make_server(**config_changes)`: an async context manager starting a DaqDataServer in this
  process on 127.0.0.1 with a free port and a Unix socket in a fresh short temp dir; yields the
  server (`.port`, `.uds_path`, `.hub`, `.core`, `.config`). It always shuts the server down.
- `run_dir`: a data_dir with one module and an active-DAQ marker, inside the allowed roots.
- `daq_config(server)`: a daq_config dict naming that server by TCP.
- `chip`, `ublox_server(**changes)`: a simulated ZED-F9T, and make_server with UbloxControl's
  test settings (devices on /dev/pts allowed) changed.
Async tests use the anyio pytest plugin (`@pytest.mark.anyio`); `anyio_backend` runs each on
asyncio and on trio.
"""

from __future__ import annotations

import contextlib
import faulthandler
import json
import os
import shutil
import sys
import tempfile
import threading
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import settings

from panoseti_daq.config import ServerConfig
from panoseti_daq.server import DaqDataServer
from panoseti_daq.ublox.simulator import SimulatedF9t
from panoseti_daq.wire import header as header_codec
from tests.helpers import server_process
from tests.ublox_helpers import TEST_SETTINGS

# `make mutate` (tools/mutate.py) runs every mutant's tests: fewer examples per property there.
MUTATE_EXAMPLES = 20
settings.register_profile("mutate", max_examples=MUTATE_EXAMPLES, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


def examples(count: int) -> int:
    """`count` examples for a property test that sets its own number; under `make mutate`
    (the "mutate" profile) at most that profile's, which an explicit number would override."""
    if os.environ.get("HYPOTHESIS_PROFILE") == "mutate":
        return min(count, MUTATE_EXAMPLES)
    return count


@pytest.fixture(autouse=True)
def empty_header_caches():
    """Every test starts with the header codec's plans and templates not yet made: what it
    asserts does not depend on the tests before it, and under `make mutate` (whose runner
    forks each mutant from a process that has already run the tests, caches filled) the code
    that makes them runs with the mutant."""
    for cache in (
        header_codec._flat_plans,
        header_codec._nested_plans,
        header_codec._templates,
        header_codec._general_parses,
    ):
        cache.clear()


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request):
    return request.param


@pytest.fixture
def short_tmp():
    """A temp dir with a short path (Unix socket paths are limited to ~107 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="pdaq", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def base_config(short_tmp):
    defaults = ServerConfig.defaults()
    return defaults.replace(
        simulate_daq_cfg=replace(defaults.simulate_daq_cfg, data_dir=short_tmp / "sim"),
        allowed_data_roots=(short_tmp,),
        daq_active_check=("marker",),
        server_name="test-node",
        shutdown_grace_period=2.0,
    )


@pytest.fixture
def make_server(base_config, short_tmp):
    counter = iter(range(1000))

    @contextlib.asynccontextmanager
    async def start(**changes):
        config = base_config.replace(**changes)
        uds = str(short_tmp / f"s{next(counter)}.sock")
        async with DaqDataServer(config, host="127.0.0.1", port=0, uds=uds) as server:
            yield server

    return start


@pytest.fixture
def run_dir(short_tmp):
    """data_dir/module_1/obs_TEST.pffd with a daq-active marker (R-INIT-4)."""
    data_dir = short_tmp / "data"
    run = data_dir / "module_1" / "obs_TEST.start_2024-07-25T04:34:06Z.runtype_test.pffd"
    run.mkdir(parents=True)
    (run / "module_1.daq-active").touch()
    return data_dir


def daq_config(*servers, unix: bool = False) -> dict:
    nodes = []
    for server in servers:
        target = f"unix://{server.uds_path}" if unix else f"127.0.0.1:{server.port}"
        nodes.append({"ip_addr": target})
    return {"daq_nodes": nodes}


@pytest.fixture(scope="module")
def live_server():
    """One server in simulation mode for all examples, with daq/network configs naming it;
    its directory is removed once the server has stopped."""
    with (
        tempfile.TemporaryDirectory(prefix="pdaqex", dir="/tmp") as name,
        server_process(Path(name), "--init-sim") as (_, port, _uds),
    ):
        tmp = Path(name)
        daq = tmp / "daq_config.json"
        daq.write_text(json.dumps({"daq_nodes": [{"ip_addr": f"127.0.0.1:{port}"}]}))
        net = tmp / "network_config.json"
        net.write_text(
            json.dumps(
                {
                    "daq_nodes": [
                        {"ip_addr": f"127.0.0.1:{port}", "port_forwarding": {"status": False}}
                    ]
                }
            )
        )
        yield daq, net, tmp


_TRIO_TIMER = pytest.StashKey[threading.Timer]()


def _on_trio(item) -> bool:
    callspec = getattr(item, "callspec", None)
    return callspec is not None and callspec.params.get("anyio_backend") == "trio"


def pytest_timeout_set_timer(item, settings):
    """Every test has a deadline (pytest-timeout, default 10 s). Its signal method raises from a
    SIGALRM handler inside the running event loop: asyncio and plain tests fail and the run goes
    on, but a trio run interrupted that way hangs. On trio, a timer thread names the test, dumps
    every thread's stack and ends the run instead."""
    if not _on_trio(item) or settings.timeout <= 0:
        return None

    def expire() -> None:
        capture = item.config.pluginmanager.getplugin("capturemanager")
        if capture is not None:
            capture.suspend_global_capture(in_=True)  # as pytest-timeout's thread method does
        sys.stderr.write(f"\n+++ Timeout ({settings.timeout:g} s): {item.nodeid} +++\n")
        faulthandler.dump_traceback(file=sys.stderr)
        sys.stderr.flush()
        os._exit(1)

    timer = threading.Timer(settings.timeout, expire)
    timer.daemon = True
    timer.start()
    item.stash[_TRIO_TIMER] = timer
    return True


def pytest_timeout_cancel_timer(item):
    timer = item.stash.get(_TRIO_TIMER, None)
    if timer is None:
        return None
    timer.cancel()
    del item.stash[_TRIO_TIMER]
    return True


# -- UbloxControl ----------------------------------------------------------------------------
@pytest.fixture
def chip():
    """A simulated ZED-F9T on a pseudo-terminal, 10 epochs a second."""
    with SimulatedF9t(period_s=0.1) as simulated:
        yield simulated


@pytest.fixture
def ublox_server(make_server):
    """`ublox_server(**changes)`: make_server with the tests' ublox_control settings changed."""

    def start(**changes):
        return make_server(ublox_control=replace(TEST_SETTINGS, **changes))

    return start
