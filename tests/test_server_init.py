"""InitHpIo and the server state (spec §4, §6: R-STATE-*, R-INIT-*)."""

from __future__ import annotations

import anyio
import anyio.lowlevel
import pytest
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from tests.helpers import init_hp_io, movie_frame, next_reply, open_stream, upload, wait_until

pytestmark = pytest.mark.anyio


async def expect_init_error(server, data_dir, status, match, **kwargs):
    with pytest.raises(GRPCError) as info:
        await init_hp_io(server, data_dir, **kwargs)
    assert info.value.status == status, info.value
    assert match in info.value.message
    assert not server.core.hp_io_valid


async def test_interval_below_minimum(make_server, run_dir):
    """R-INIT-1."""
    async with make_server() as server:
        await expect_init_error(server, run_dir, Status.INVALID_ARGUMENT, ">= 0.01", interval=0.001)


async def test_missing_data_dir(make_server, short_tmp):
    """R-INIT-2: 'does not exist' in the details."""
    async with make_server() as server:
        await expect_init_error(
            server, short_tmp / "nope", Status.INVALID_ARGUMENT, "does not exist"
        )


async def test_data_dir_outside_allowed_roots(make_server, tmp_path, short_tmp, run_dir):
    """R-INIT-3, R-WIRE-5: PERMISSION_DENIED for any path outside allowed_data_roots; the
    details list the allowed roots."""
    async with make_server(allowed_data_roots=(short_tmp, run_dir)) as server:
        await expect_init_error(server, tmp_path, Status.PERMISSION_DENIED, "outside the allowed")
        await expect_init_error(
            server,
            "/etc",
            Status.PERMISSION_DENIED,
            f"data_dir '/etc' is outside the allowed data roots ({short_tmp}, {run_dir})",
        )


async def test_inactive_daq(make_server, run_dir):
    """R-INIT-4, R-WIRE-5: no marker, no recent write, no Hashpipe: FAILED_PRECONDITION, the
    details naming the checks made."""
    for marker in run_dir.rglob("*.daq-active"):
        marker.unlink()
    async with make_server(daq_active_check=("marker", "recent_write")) as server:
        await expect_init_error(
            server,
            run_dir,
            Status.FAILED_PRECONDITION,
            f"no active DAQ under '{run_dir}' (checked: marker, recent_write)",
        )


async def test_recent_write_counts_as_active(make_server, run_dir):
    """R-INIT-4: a data file changed in the last 10 s means the DAQ is active."""
    for marker in run_dir.rglob("*.daq-active"):
        marker.unlink()
    (next(run_dir.glob("module_1/*")) / "start_x.dp_img16.bpp_2.module_1.seqno_0.pff").touch()
    async with make_server(daq_active_check=("recent_write",)) as server:
        assert (await init_hp_io(server, run_dir)).success


async def test_non_force_with_active_readers(make_server, run_dir):
    """R-INIT-5: the details name the number of active readers; nothing changes."""
    async with make_server() as server:
        assert (await init_hp_io(server, run_dir)).success
        before = server.core.hp_io
        async with open_stream(server), open_stream(server):
            with pytest.raises(GRPCError) as info:
                await init_hp_io(server, run_dir, force=False, interval=0.5)
        assert info.value.status == Status.FAILED_PRECONDITION
        assert "2 StreamImages client(s) active" in info.value.message
        assert server.core.hp_io is before and server.core.hp_io_valid


async def test_non_force_with_one_reader_is_refused(make_server, run_dir):
    """R-INIT-5: one reader is enough to refuse a non-forced InitHpIo; the details say so."""
    async with make_server() as server:
        assert (await init_hp_io(server, run_dir)).success
        async with open_stream(server):
            with pytest.raises(GRPCError) as info:
                await init_hp_io(server, run_dir, force=False, interval=0.5)
        assert info.value.status == Status.FAILED_PRECONDITION
        assert info.value.message == (
            "1 StreamImages client(s) active; use force=true to reconfigure anyway"
        )


async def test_init_during_shutdown_is_unavailable(make_server, run_dir):
    """R-STOP-1: once the server is shutting down, InitHpIo is refused with UNAVAILABLE."""
    async with make_server() as server:
        server.core.begin_shutdown()
        with pytest.raises(GRPCError) as info:
            await init_hp_io(server, run_dir)
        assert (info.value.status, info.value.message) == (
            Status.UNAVAILABLE,
            "server shutting down",
        )


async def test_non_force_without_readers_succeeds(make_server, run_dir):
    """R-INIT-5, R-INIT-6: with no readers a non-forced InitHpIo reconfigures."""
    async with make_server() as server:
        assert (await init_hp_io(server, run_dir, force=False)).success
        assert (await init_hp_io(server, run_dir, force=False, interval=0.2)).success
        assert server.core.hp_io.update_interval_seconds == 0.2


async def test_failed_configuration_restores_previous(make_server, run_dir, base_config):
    """R-INIT-7: success=false with a message; the previous configuration is restored."""
    from dataclasses import replace

    sim = replace(base_config.simulate_daq_cfg, simulation_mode="uds")
    async with make_server(simulate_daq_cfg=sim) as server:
        assert (await init_hp_io(server, run_dir)).success
        reply = await init_hp_io(server, "", simulate_daq=True)
        assert not reply.success
        assert "acquisition_methods.uds" in reply.error_message
        assert "restored" in reply.error_message
        assert server.core.hp_io_valid and server.core.hp_io.data_dir == str(run_dir.resolve())
        async with open_stream(server) as stream:
            await upload(server, [movie_frame(1, 7)])
            assert (await next_reply(stream)).frame.frame_number == 7


async def test_concurrent_writers_are_serialised(make_server, run_dir):
    """R-STATE-2: writers wait for each other; every one is answered and hp_io ends valid."""
    async with make_server() as server:
        replies = []

        async def writer(interval):
            replies.append(await init_hp_io(server, run_dir, interval=interval))

        async with anyio.create_task_group() as tg:
            for i in range(5):
                tg.start_soon(writer, 0.05 + i / 100)
        assert [r.success for r in replies] == [True] * 5
        assert server.core.hp_io_valid


@pytest.mark.parametrize("scanner_watch", [True, False], ids=["inotify", "polling"])
async def test_scanner_module_whitelist(make_server, run_dir, scanner_watch):
    """R-INIT-9: with module_ids only those modules are scanned (config `scanner_watch`: with
    inotify and by polling)."""
    from panoseti_daq import pff

    async with make_server(scanner_watch=scanner_watch) as server:
        assert (await init_hp_io(server, run_dir, module_ids=[2])).success
        for module in (1, 2):
            run = run_dir / f"module_{module}" / "obs_T"
            run.mkdir(parents=True, exist_ok=True)
            frame = movie_frame(module, 0)
            name = pff.DataFileName("img16", module, 0, 2, "2024-07-25T04_34_46Z").format()
            (run / name).write_bytes(pff.encode_frame(frame.header, frame.pixels, frame.product))
        await wait_until(lambda: (2, "img16") in server.hub.latest)
        assert (1, "img16") not in server.hub.latest
        assert server.hub.frames_in == {(2, "img16", "scanner"): 1}  # counted by source


@pytest.mark.parametrize("form", ["home", "relative"])
async def test_data_dir_is_used_as_resolved(make_server, run_dir, short_tmp, monkeypatch, form):
    """R-INIT-2, R-INIT-9: a data_dir given as `~/...` (the server's home) or relative to the
    server's working directory is checked and scanned as the directory it names, and the stats
    report that directory's absolute path."""
    from panoseti_daq import pff

    monkeypatch.setenv("HOME", str(short_tmp))
    monkeypatch.chdir(short_tmp)
    given = "~/data" if form == "home" else "data"
    async with make_server() as server:
        assert (await init_hp_io(server, given)).success
        assert server.stats()["hp_io"] == str(run_dir.resolve())
        run = run_dir / "module_1" / "obs_T"
        run.mkdir()
        frame = movie_frame(1, 0)
        name = pff.DataFileName("img16", 1, 0, 2, "2024-07-25T04_34_46Z").format()
        (run / name).write_bytes(pff.encode_frame(frame.header, frame.pixels, frame.product))
        await wait_until(lambda: (1, "img16") in server.hub.latest, timeout_s=5)


async def test_uds_simulation_without_the_ingest_fails_naming_it(make_server, base_config):
    """R-INIT-7, R-INIT-8, R-SIM-6: simulating in mode "uds" while the server's Unix-socket
    ingest is off answers success=false, saying what to enable."""
    from dataclasses import replace

    sim = replace(base_config.simulate_daq_cfg, simulation_mode="uds")
    async with make_server(simulate_daq_cfg=sim) as server:
        reply = await init_hp_io(server, "", simulate_daq=True)
    assert not reply.success
    assert reply.error_message == (
        "hp_io failed to start: simulation mode 'uds' needs acquisition_methods.uds enabled"
    )


@pytest.mark.timeout(30)  # a server and its scanner, on a shared machine
async def test_module_link_out_of_the_allowed_roots_is_not_served(
    make_server, run_dir, tmp_path, caplog
):
    """R-INIT-12 through the server: a `module_<id>` link inside the allowed data root that
    points outside it is skipped (with one log line naming it); the module beside it is
    served."""
    from panoseti_daq import pff

    outside = tmp_path / "outside"  # pytest's tmp_path is not under the allowed root
    # Module 1's run is the fixture's (with the marker); module 2's is outside the roots.
    runs = {1: next((run_dir / "module_1").iterdir()), 2: outside / "module_2" / "obs_T"}
    for module, run in runs.items():
        run.mkdir(parents=True, exist_ok=True)
        frame = movie_frame(module, 0)
        name = pff.DataFileName("img16", module, 0, 2, "2024-07-25T04_34_46Z").format()
        (run / name).write_bytes(pff.encode_frame(frame.header, frame.pixels, frame.product))
    (run_dir / "module_2").symlink_to(outside / "module_2")
    async with make_server() as server:
        assert (await init_hp_io(server, run_dir)).success
        await wait_until(lambda: (1, "img16") in server.hub.latest, timeout_s=20)
        await wait_until(lambda: "outside the allowed data roots" in caplog.text, timeout_s=20)
        assert (2, "img16") not in server.hub.latest
    assert f"skipping {run_dir.resolve() / 'module_2'}" in caplog.text
