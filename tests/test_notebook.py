"""The demo notebook's code cells run, in order, inside a running asyncio loop as in Jupyter.

This is also the blocking client used from within a running event loop (a Jupyter cell).
"""

from __future__ import annotations

import ast
import asyncio
import json
import os
from pathlib import Path

import matplotlib
import pytest

matplotlib.use("Agg")

NOTEBOOK = Path(__file__).resolve().parent.parent / "examples" / "daq_data_client_demo.ipynb"


@pytest.mark.timeout(30)  # a server process for the module, then every cell
@pytest.mark.parametrize("own_server", [False, True])
def test_notebook_cells_run_in_a_running_loop(live_server, monkeypatch, capsys, own_server):
    """With PANOSETI_DAQ_CONFIG the notebook uses those servers (and leaves their simulation
    alone); without it, it starts a server of its own on a free port and stops it at the end."""
    daq, net, tmp = live_server
    if own_server:
        monkeypatch.delenv("PANOSETI_DAQ_CONFIG", raising=False)
        monkeypatch.delenv("PANOSETI_NET_CONFIG", raising=False)
        monkeypatch.setenv("TMPDIR", str(tmp / "own"))
        (tmp / "own").mkdir(exist_ok=True)
    else:
        monkeypatch.setenv("PANOSETI_DAQ_CONFIG", str(daq))
        monkeypatch.setenv("PANOSETI_NET_CONFIG", str(net))
    cells = [
        "".join(cell["source"])
        for cell in json.loads(NOTEBOOK.read_text())["cells"]
        if cell["cell_type"] == "code"
    ]
    namespace: dict = {"__name__": "__notebook__"}

    async def kernel() -> None:
        assert asyncio.get_running_loop()  # the kernel's loop runs, as in Jupyter
        for source in cells:
            code = compile(source, "<cell>", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
            result = eval(code, namespace)
            if asyncio.iscoroutine(result):
                await result

    asyncio.run(kernel())
    out = capsys.readouterr().out
    assert "valid hosts:" in out and "daqdata.DaqData" in out
    assert out.count("PULSE_HEIGHT") + out.count("MOVIE") >= 10
    assert "async client received 5 pulse-height images" in out
    assert len(namespace["images"]) == 10
    assert namespace["previewer"].images and namespace["distribution"].counts
    if own_server:
        assert "started a server of our own on 127.0.0.1:" in out
        assert namespace["own_server"].returncode == 0  # stopped by the last cell
        assert not list((tmp / "own").glob("panoseti_daq_sim_*"))
    else:
        assert namespace["own_server"] is None
        assert os.environ["PANOSETI_DAQ_CONFIG"] == str(daq)
