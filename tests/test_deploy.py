"""deploy/ stays true (R-OPS-1, R-OPS-2): the systemd unit runs `serve` with a config and
`--init` and stops within the grace period, its configuration files load, and the Prometheus
scrape and Grafana dashboard name only metrics the server exports."""

from __future__ import annotations

import configparser
import json
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import anyio
import pytest

from panoseti_daq.config import load_hp_io_config, load_server_config
from panoseti_daq.serve import parse_args
from panoseti_daq.server.app import DaqDataServer
from tests.helpers import movie_frame, next_reply, open_stream, upload
from tests.test_metrics import scrape

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
UNIT = DEPLOY / "panoseti-daq.service"


def _unit() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(UNIT.read_text().replace("\\\n", " "))
    return parser


def _serve_argv() -> list[str]:
    argv = shlex.split(_unit()["Service"]["ExecStart"])
    assert argv[1:3] == ["-m", "panoseti_daq.serve"], argv
    return argv[3:]


def test_the_unit_runs_serve_with_a_config_and_init_and_stops_by_sigterm_in_time():
    """R-OPS-1: `--config` and `--init`; restart on failure but not on a configuration error
    (exit 2); SIGTERM, waited for longer than the server's own stop takes."""
    service = _unit()["Service"]
    args = parse_args(_serve_argv())
    assert args.config == "/etc/panoseti_daq/daq_data_server_config.json"
    assert args.init == "/etc/panoseti_daq/hp_io_config.json"
    assert args.metrics_port == 9417
    assert service["Restart"] == "on-failure"
    assert service["RestartPreventExitStatus"] == "2"
    assert service["KillSignal"] == "SIGTERM"
    config = load_server_config(DEPLOY / "daq_data_server_config.json")
    # DaqDataServer._stop: the streams' grace period, the listeners' close (as long again),
    # then the sources' stop.
    stop_s = 2 * config.shutdown_grace_period + config.hp_io_stop_timeout
    assert float(service["TimeoutStopSec"]) > stop_s
    assert config.uds_path is not None
    assert config.uds_path.startswith("/run/panoseti_daq/")  # its RuntimeDirectory
    assert service["RuntimeDirectory"] == "panoseti_daq"
    assert load_hp_io_config(DEPLOY / "hp_io_config.json").data_dir in {
        str(root) for root in config.allowed_data_roots
    }


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze here")
def test_systemd_analyze_verify_accepts_the_unit(tmp_path):
    """The unit as systemd reads it, with ExecStart pointing at this checkout's Python."""
    root = Path(__file__).resolve().parent.parent
    unit = tmp_path / UNIT.name
    unit.write_text(UNIT.read_text().replace("/opt/panoseti_daq", str(root)))
    result = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "panoseti-daq" not in result.stderr, result.stderr


def _dashboard_metrics() -> set[str]:
    text = (DEPLOY / "grafana-dashboard.json").read_text()
    dashboard = json.loads(text)
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    exprs.append(dashboard["templating"]["list"][0]["query"])
    return {name for expr in exprs for name in re.findall(r"\b(?:panoseti_daq|process)_\w+", expr)}


@pytest.mark.anyio
async def test_the_dashboard_and_the_scrape_name_only_exported_metrics(base_config):
    """Every series the Grafana dashboard queries is in a real scrape of a server with a
    client and frames; the Prometheus job scrapes the unit's metrics port at /metrics."""
    async with DaqDataServer(base_config, host="127.0.0.1", port=0, uds="", metrics_port=0) as s:
        await s.init_hp_io(load_hp_io_config_sim())
        async with open_stream(s) as stream:
            await upload(s, [movie_frame(1, 0)])
            await next_reply(stream)
            exported = set(await anyio.to_thread.run_sync(scrape, s.metrics_port))
    wanted = _dashboard_metrics()
    assert wanted
    assert not wanted - exported, sorted(wanted - exported)
    prometheus = (DEPLOY / "prometheus.yml").read_text()
    assert "metrics_path: /metrics" in prometheus
    assert re.search(r'"[\w.-]+:9417"', prometheus)


def load_hp_io_config_sim():
    from panoseti_daq.config import BUNDLED_CONFIG_DIR

    return load_hp_io_config(BUNDLED_CONFIG_DIR / "hp_io_config_simulate.json")
