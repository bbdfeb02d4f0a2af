"""The simulation through the whole server: InitHpIo, both modes, restart, cleanup (spec §9)."""

from __future__ import annotations

from dataclasses import replace

import anyio
import numpy as np
import pytest

from panoseti_daq import AsyncDaqClient, pff
from panoseti_daq.config import UdsIngestConfig
from panoseti_daq.server.simulation import source_frames
from tests.conftest import daq_config

pytestmark = pytest.mark.anyio


def sources(config):
    movie, ph = source_frames(config.simulate_daq_cfg)
    return {("MOVIE", f.frame_number): f for f in movie}, {
        ("PULSE_HEIGHT", i): f for i, f in enumerate(ph)
    }


async def collect(client, count):
    images = []
    with anyio.fail_after(30):
        async for image in client.stream_images(None, True, True, 0.0, wait_for_ready=True):
            images.append(image)
            if len(images) == count:
                return images
    return images


@pytest.mark.parametrize("mode", ["rpc", "filesystem", "uds"])
async def test_simulated_frames_equal_the_source(make_server, base_config, short_tmp, mode):
    """R-SIM-1 .. R-SIM-4, R-SIM-6, R-INIT-8: frames keep the source's headers and pixels;
    module ids remapped; in each simulation mode."""
    sim = replace(
        base_config.simulate_daq_cfg,
        simulation_mode=mode,
        sim_module_ids=(7, 9),
        frame_rate_hz=40.0,
    )
    ingest = UdsIngestConfig(
        enabled=mode == "uds", socket_path_template=str(short_tmp / "sim.{dp_name}.sock")
    )
    async with make_server(simulate_daq_cfg=sim, uds_ingest=ingest) as server:
        async with AsyncDaqClient(daq_config(server)) as client:
            assert await client.init_sim()
            images = await collect(client, 24)
        # Counted under the way they entered the hub (the uds simulation is a socket sender).
        sources = {source for _, _, source in server.hub.frames_in}
        assert sources == {"socket" if mode == "uds" else "simulation"}
        movie, _ = source_frames(sim)
        ph256 = {int(h["pkt_num"]): p for h, p in ((f.header, f.pixels) for f in _ph(sim))}
        assert {i["module_id"] for i in images} == {7, 9}
        for image in images:
            header = image["header"]
            if image["type"] == "MOVIE":
                source = movie[int(header["quabo_0"]["pkt_num"]) - 30000]
                np.testing.assert_array_equal(image["image_array"], source.pixels)
                assert header["quabo_0"]["pkt_nsec"] == source.header["quabo_0"]["pkt_nsec"]
            else:
                np.testing.assert_array_equal(image["image_array"], ph256[int(header["pkt_num"])])
    assert not list(sim.data_dir.rglob("*.pff"))  # R-SIM-2: removed on stop


def _ph(sim):
    return source_frames(sim)[1]


async def test_restart_through_init_hp_io_and_nothing_left_on_disk(
    make_server, base_config, run_dir
):
    """R-INIT-6, R-SIM-2: simulation -> real run -> simulation again; files go when it stops."""
    sim = replace(base_config.simulate_daq_cfg, frames_per_pff=5, frame_rate_hz=50.0)
    async with make_server(simulate_daq_cfg=sim) as server:
        async with AsyncDaqClient(daq_config(server)) as client:
            assert await client.init_sim()
            await collect(client, 12)
            files = sorted(p.name for p in sim.data_dir.rglob("*.pff"))
            assert any(pff.DataFileName.parse(n).seqno >= 1 for n in files), files  # every 5
            hp_io = {"data_dir": str(run_dir), "update_interval_seconds": 0.05, "force": True}
            assert await client.init_hp_io(None, hp_io)
            assert not sim.data_dir.exists() or not list(sim.data_dir.rglob("*.pff"))
            assert await client.init_sim()
            assert len(await collect(client, 4)) == 4
    assert not list(sim.data_dir.rglob("*")) if sim.data_dir.exists() else True
