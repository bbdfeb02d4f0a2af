"""Running a DAQ node unattended (spec §16: R-OPS-1 .. R-OPS-3), as an operator does it:
`python -m panoseti_daq.serve` in a subprocess, fed by Hashpipe sockets or uploads, read by the
grpcio reference client (tests/reference.py), its log read line by line."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from google.protobuf import empty_pb2

from panoseti_daq._bundled import NGC7331_PH256
from panoseti_daq.config import HpIoConfig
from panoseti_daq.server.app import DaqDataServer
from panoseti_daq.server.hp_io_checks import HpIoRefused, check_hp_io
from tests.helpers import REAL_PH, one_line_exit_2, serve_refused, server_process, upload
from tests.reference import modules
from tests.test_interop_grpcio import reference_image
from tests.test_shutdown import LogLines

pb2, pb2_grpc = modules()

# Server processes, each started and stopped here: a few seconds each under load.
pytestmark = pytest.mark.timeout(60)


def _serve(cwd: Path, *args: str, config: dict | None = None) -> subprocess.CompletedProcess:
    """`serve` on 127.0.0.1 that is expected to refuse to start: it must exit by itself."""
    return serve_refused(cwd, "--host", "127.0.0.1", *args, config=config)


def _first_reply(port: int, timeout_s: float = 20.0):
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb2_grpc.DaqDataStub(channel)
        request = pb2.StreamImagesRequest(
            stream_movie_data=True, stream_pulse_height_data=True, update_interval_seconds=0
        )
        replies = stub.StreamImages(request, timeout=timeout_s)
        try:
            return next(replies)
        finally:
            replies.cancel()


# -- R-OPS-1 --------------------------------------------------------------------------------


def test_a_node_fed_by_hashpipe_sockets_streams_with_serve_init(short_tmp):
    """R-OPS-1: `serve --init hp_io_config.json` on a node fed only by Hashpipe sockets: the
    frames replayed into its socket reach a grpcio client that never called InitHpIo."""
    (short_tmp / "node_data").mkdir()
    hp_io = short_tmp / "hp_io.json"
    hp_io.write_text(json.dumps({"data_dir": "node_data", "update_interval_seconds": 0.1}))
    template = str(short_tmp / "hp.{dp_name}.sock")
    config = {
        "acquisition_methods": {
            "uds": {"enabled": True, "data_products": ["ph256"], "socket_path_template": template}
        },
        "daq_active_check": [],
    }
    with server_process(short_tmp, "--init", str(hp_io), config=config) as (process, port, _):
        log = LogLines(process.stderr)
        log.start()
        log.wait_for("hp_io initialised from", 20)
        replayed = subprocess.Popen(
            [
                *(sys.executable, "-m", "panoseti_daq.replay", "--socket-template", template),
                *("--rate", "20", "--loop", str(NGC7331_PH256)),
            ],
            stderr=subprocess.DEVNULL,
        )
        try:
            reply = _first_reply(port)
        finally:
            replayed.terminate()
            replayed.wait(10)
    assert reply.pano_image.module_id == 254
    assert reply.pano_image.type == pb2.PanoImage.PULSE_HEIGHT


@pytest.mark.anyio
async def test_the_init_hp_io_key_makes_an_upload_fed_node_serve(base_config, short_tmp):
    """R-OPS-1: the config key `init_hp_io` (a path) initialises hp_io at start: uploads
    stream to clients without InitHpIo."""
    (short_tmp / "uploads").mkdir()
    path = short_tmp / "hp_io.json"
    path.write_text(
        json.dumps({"data_dir": str(short_tmp / "uploads"), "update_interval_seconds": 1})
    )
    config = base_config.replace(init_hp_io=path, daq_active_check=())
    async with DaqDataServer(config, host="127.0.0.1", port=0, uds="") as server:
        assert server.core.hp_io_valid
        await upload(server, REAL_PH[:1])
        assert server.stats()["frames_in"]


def test_serve_init_failure_stops_before_listening(short_tmp):
    """R-OPS-1: a missing --init file, and one InitHpIo would refuse: one line naming the
    file and the reason, exit 2, never "listening"."""
    one_line_exit_2(_serve(short_tmp, "--init", "missing.json"), "--init missing.json", "not found")
    (short_tmp / "rec").mkdir()
    (short_tmp / "hp.json").write_text(
        json.dumps({"data_dir": "nowhere", "update_interval_seconds": 1})
    )
    one_line_exit_2(
        _serve(short_tmp, "--init", "hp.json"), "--init hp.json", "'nowhere' does not exist"
    )


def test_an_init_that_fails_after_the_checks_is_one_line_too(short_tmp):
    """R-OPS-1: a configuration that passes the checks but does not start (the simulation in
    mode "uds" without the socket ingest) stops the server cleanly: one line naming the file
    and the reason, exit 2, no traceback."""
    (short_tmp / "sim.json").write_text(
        json.dumps({"simulate_daq": True, "update_interval_seconds": 0.1})
    )
    config = {"simulate_daq_cfg": {"simulation_mode": "uds", "data_dir": str(short_tmp / "s")}}
    result = _serve(short_tmp, "--port", "0", "--uds", "", "--init", "sim.json", config=config)
    assert result.returncode == 2, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last == (
        "panoseti_daq.serve: --init sim.json: hp_io configuration failed: hp_io failed to "
        "start: simulation mode 'uds' needs acquisition_methods.uds enabled"
    )
    assert "Traceback" not in result.stderr


def test_the_inactive_daq_answer_says_where_it_looked_and_where_a_marker_belongs(
    base_config, short_tmp, monkeypatch
):
    """R-INIT-4, R-OPS-1: a marker beside the module directories (`touch rec/module_224.daq-
    active`) is not where the check looks; the answer names the resolved directory, the run
    directories it looked in, and where that marker belongs."""
    rec = short_tmp / "rec"
    run = rec / "module_224" / "obs_RECORD.start_2026-01-01T00_00_00Z.runtype_x.pffd"
    run.mkdir(parents=True)
    (rec / "module_224.daq-active").touch()
    monkeypatch.chdir(short_tmp)
    config = base_config.replace(daq_active_check=("marker",))
    with pytest.raises(HpIoRefused) as info:
        check_hp_io(HpIoConfig(data_dir="rec", update_interval_seconds=1), config)
    message = info.value.message
    assert message.startswith("no active DAQ under 'rec' (checked: marker): ")
    assert f"{rec}/module_<id>/<run>/" in message
    assert f"{rec}/module_224.daq-active is not in a run directory" in message
    assert f"e.g. {run}/" in message
    (run / "module_224.daq-active").touch()
    assert check_hp_io(
        HpIoConfig(data_dir="rec", update_interval_seconds=1), config
    ).data_dir == str(rec)


def test_a_file_named_like_a_module_directory_does_not_hide_the_answer(base_config, short_tmp):
    """R-INIT-4: a regular file `module_1` beside a misplaced marker: the answer is still "no
    active DAQ" naming where the marker belongs (it said the data_dir was not a directory)."""
    rec = short_tmp / "rec"
    run = rec / "module_224" / "obs_RECORD.start_2026-01-01T00_00_00Z.runtype_x.pffd"
    run.mkdir(parents=True)
    (rec / "module_1").write_text("not a directory")
    (rec / "module_224.daq-active").touch()
    config = base_config.replace(daq_active_check=("marker",))
    with pytest.raises(HpIoRefused) as info:
        check_hp_io(HpIoConfig(data_dir=str(rec), update_interval_seconds=1), config)
    assert info.value.message.startswith(f"no active DAQ under '{rec}' (checked: marker): ")
    assert f"e.g. {run}/" in info.value.message


# -- R-OPS-2 --------------------------------------------------------------------------------


def test_a_stats_file_in_a_missing_directory_is_one_line_before_listening(short_tmp):
    """R-OPS-2: it used to log "listening", then die with an ExceptionGroup traceback."""
    result = _serve(short_tmp, "--port", "0", "--uds", "", "--stats-file", "nodir/stats.jsonl")
    one_line_exit_2(result, "--stats-file nodir/stats.jsonl", "directory nodir does not exist")


def test_ports_in_use_are_named_with_their_option_or_key(short_tmp):
    """R-OPS-2: the metrics port and the gRPC port, each named, with the reason."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = _serve(short_tmp, "--port", "0", "--uds", "", "--metrics-port", str(port))
        one_line_exit_2(result, f"metrics port {port} (--metrics-port): address already in use")
        result = _serve(short_tmp, "--port", "0", "--uds", "", config={"metrics_port": port})
        one_line_exit_2(result, f"metrics port {port} ('metrics_port' in {short_tmp / 'c.json'})")
        result = _serve(short_tmp, "--port", str(port), "--uds", "")
        one_line_exit_2(result, f"gRPC port {port} on 127.0.0.1 (--port): address already in use")


def test_a_hashpipe_socket_in_a_missing_directory_is_one_line(short_tmp):
    """R-OPS-2: the Hashpipe ingest's sockets start in the server's task group; a template in
    a missing directory was an ExceptionGroup traceback with exit 1."""
    template = "/nonexistent_dir_pdaq/hp.{dp_name}.sock"
    config = {
        "acquisition_methods": {
            "uds": {"data_products": ["ph256"], "socket_path_template": template}
        }
    }
    result = _serve(short_tmp, "--port", "0", "--uds", "", config=config)
    one_line_exit_2(
        result, "'acquisition_methods.uds.socket_path_template'", "/nonexistent_dir_pdaq"
    )


def test_uds_takes_the_config_keys_unix_url_form(short_tmp):
    """R-OPS-2: `--uds unix:///path`, as `unix_domain_socket` spells it, listens at /path."""
    path = short_tmp / "d.sock"
    process = subprocess.Popen(
        [sys.executable, "-m", "panoseti_daq.serve", "--port", "-1", "--uds", f"unix://{path}"],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        log = LogLines(process.stderr)
        log.start()
        assert f"listening on unix://{path}" in log.wait_for("listening", 20)
        with grpc.insecure_channel(f"unix://{path}") as channel:
            ping = channel.unary_unary(
                "/daqdata.DaqData/Ping",
                request_serializer=empty_pb2.Empty.SerializeToString,
                response_deserializer=empty_pb2.Empty.FromString,
            )
            assert ping(empty_pb2.Empty(), timeout=10) == empty_pb2.Empty()
    finally:
        process.terminate()
        process.wait(20)


# -- R-OPS-3 --------------------------------------------------------------------------------


def test_clients_connecting_and_leaving_are_logged_once_with_peer_and_subscription(short_tmp):
    """R-OPS-3: a grpcio viewer that reads a frame and leaves, and a grpcio uploader: one info
    line each when they come and go, with the peer; grpclib's "Request was cancelled" line
    (no peer) is gone."""
    with server_process(short_tmp, "--init-sim") as (process, port, _):
        log = LogLines(process.stderr)
        log.start()
        log.wait_for("hp_io valid", 20)
        _first_reply(port)
        connected = log.wait_for("stream client 1 (", 20)
        gone = log.wait_for("disconnected: left", 20)
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb2_grpc.DaqDataStub(channel)
            image = reference_image(REAL_PH[0], 3)
            stub.UploadImages(iter([pb2.UploadImageRequest(pano_image=image)]), timeout=10)
        uploaded = log.wait_for("disconnected: done after 1 images", 20)
        process.terminate()
        process.wait(20)
    text = "".join(log.lines)
    assert "INFO" in connected and "connected: movie+ph every 0 s modules all" in connected
    assert "127.0.0.1:" in connected
    assert "stream client 1 (127.0.0.1:" in gone and "left after" in gone and "INFO" in gone
    assert text.count("stream client 1 (") == 2, text
    assert "upload from 127.0.0.1:" in uploaded
    assert text.count("upload from 127.0.0.1:") == 2, text
    assert "Request was cancelled" not in text
    assert "ERROR" not in text and "Traceback" not in text, text
