"""daq_config.json / network_config.json loading for the clients (R-CFG-3, R-CLI-1)."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from panoseti_daq._bundled import BUNDLED_CONFIG_DIR
from panoseti_daq.client import DaqNode, load_daq_nodes
from panoseti_daq.client.targets import DEFAULT_PORT, parse_module_ids

BUNDLED = BUNDLED_CONFIG_DIR


def test_bundled_simulate_configs_name_one_local_node():
    """R-CFG-3: the bundled client configs reach a server on 127.0.0.1:50051 (and its socket)."""
    nodes = load_daq_nodes(
        BUNDLED / "daq_config_grpc_simulate.json", BUNDLED / "network_config_grpc_simulate.json"
    )
    assert list(nodes) == ["127.0.0.1"]
    node = nodes["127.0.0.1"]
    assert (node.host, node.port, node.path) == ("127.0.0.1", DEFAULT_PORT, None)
    assert node.module_ids == tuple(range(256))
    uds = load_daq_nodes(BUNDLED / "daq_config_grpc_simulate_uds.json")
    assert uds["unix:///tmp/daq_data.sock"].path == "/tmp/daq_data.sock"


def test_paths_and_dicts_give_the_same_nodes(tmp_path):
    """R-CLI-1: configs as paths (str or Path) or as dicts."""
    daq = {"daq_nodes": [{"ip_addr": "10.0.0.5", "data_dir": "/mnt/panoseti"}]}
    path = tmp_path / "daq_config.json"
    path.write_text(json.dumps(daq))
    assert load_daq_nodes(daq) == load_daq_nodes(path) == load_daq_nodes(str(path))
    node = load_daq_nodes(daq)["10.0.0.5"]
    assert node == DaqNode("10.0.0.5", "10.0.0.5", DEFAULT_PORT, data_dir="/mnt/panoseti")
    assert node.target == "10.0.0.5:50051"


def test_port_forwarding_connects_to_the_gateway_on_the_grpc_port():
    """R-CFG-3: status true -> gw_ip; the gRPC port stays 50051 (`port` there is SSH's)."""
    daq = {"daq_nodes": [{"ip_addr": "10.0.0.5"}, {"ip_addr": "10.0.0.6"}]}
    network = {
        "daq_nodes": [
            {"ip_addr": "10.0.0.5", "port_forwarding": {"status": True, "gw_ip": "gw", "port": 22}},
            {"ip_addr": "10.0.0.6", "port_forwarding": {"status": False, "gw_ip": "gw"}},
        ]
    }
    nodes = load_daq_nodes(daq, network)
    assert nodes["10.0.0.5"].target == "gw:50051"
    assert nodes["10.0.0.6"].target == "10.0.0.6:50051"


def test_other_ports_and_unix_sockets():
    """R-CFG-3: `host:port`, a `port` key (several servers on one machine), `unix://`."""
    daq = {
        "daq_nodes": [
            {"ip_addr": "127.0.0.1:50052"},
            {"ip_addr": "localhost", "port": 50053},
            {"ip_addr": "unix:///tmp/x.sock"},
            {"ip_addr": "[::1]:50054"},
        ]
    }
    nodes = load_daq_nodes(daq)
    assert [n.target for n in nodes.values()] == [
        "127.0.0.1:50052",
        "localhost:50053",
        "unix:///tmp/x.sock",
        "::1:50054",
    ]


def test_missing_file_is_file_not_found(tmp_path):
    """R-CLI-1: a missing config file raises FileNotFoundError."""
    with pytest.raises(FileNotFoundError):
        load_daq_nodes(tmp_path / "nope.json")
    with pytest.raises(FileNotFoundError):
        load_daq_nodes({"daq_nodes": [{"ip_addr": "a"}]}, tmp_path / "net.json")


@pytest.mark.parametrize(
    ("daq", "key"),
    [
        ({}, "daq_nodes"),
        ({"daq_nodes": []}, "daq_nodes"),
        ({"daq_nodes": {"ip_addr": "a"}}, "daq_nodes"),
        ({"daq_nodes": [{"data_dir": "/x"}]}, "ip_addr"),
        ({"daq_nodes": [{"ip_addr": ""}]}, "ip_addr"),
        ({"daq_nodes": [{"ip_addr": "a", "port": 0}]}, "port"),
        ({"daq_nodes": [{"ip_addr": "a:http"}]}, "port"),
        ({"daq_nodes": [{"ip_addr": "a", "module_ids": "3-1"}]}, "module_ids"),
    ],
)
def test_bad_daq_config_names_key_and_file(tmp_path, daq, key):
    """R-CLI-1: ValueError naming the key and the file."""
    path = tmp_path / "daq_config.json"
    path.write_text(json.dumps(daq))
    with pytest.raises(ValueError, match=key) as info:
        load_daq_nodes(path)
    assert str(path) in str(info.value)


def test_bad_network_config_names_key_and_file(tmp_path):
    """R-CFG-3: forwarding on without a gateway is an error naming gw_ip and the file."""
    path = tmp_path / "network_config.json"
    path.write_text(
        json.dumps({"daq_nodes": [{"ip_addr": "a", "port_forwarding": {"status": True}}]})
    )
    with pytest.raises(ValueError, match="gw_ip") as info:
        load_daq_nodes({"daq_nodes": [{"ip_addr": "a"}]}, path)
    assert str(path) in str(info.value)


def test_invalid_json_is_a_value_error(tmp_path):
    path = tmp_path / "daq_config.json"
    path.write_text("{not json")
    with pytest.raises(ValueError, match=r"daq_config\.json"):
        load_daq_nodes(path)


@given(st.lists(st.tuples(st.integers(0, 300), st.integers(0, 20)), max_size=6))
def test_module_id_ranges_expand(ranges):
    """R-CFG-3: "0-127" style ranges, comma separated, equal the listed ids."""
    text = ",".join(f"{low}-{low + span}" if span else str(low) for low, span in ranges)
    expected = tuple(i for low, span in ranges for i in range(low, low + span + 1))
    assert parse_module_ids(text, "test") == expected
    assert parse_module_ids(list(expected), "test") == expected


@pytest.mark.parametrize(
    ("daq", "net", "key", "which"),
    [
        ({"daq_nodes": [{"ip_addr": "a", "modul_ids": [1]}]}, None, "modul_ids", "daq"),
        ({"daq_node": [], "daq_nodes": [{"ip_addr": "a"}]}, None, "daq_node", "daq"),
        ({"daq_nodes": [{"ip_addr": "a", "data_dir": 3}]}, None, "data_dir", "daq"),
        ({"daq_nodes": [{"ip_addr": 7}]}, None, "ip_addr", "daq"),
        ({"daq_nodes": [{"ip_addr": "a", "user_name": 1}]}, None, "user_name", "daq"),
        ({"daq_nodes": [{"ip_addr": "a", "module_ids": True}]}, None, "module_ids", "daq"),
        ({"daq_nodes": [{"ip_addr": "a"}], "head_node_ip_addr": 1}, None, "head_node_ip", "daq"),
        (
            {"daq_nodes": [{"ip_addr": "a"}]},
            {"daq_nodes": [{"ip_addr": "a", "port_forwardin": {}}]},
            "port_forwardin",
            "net",
        ),
        (
            {"daq_nodes": [{"ip_addr": "a"}]},
            {"daq_nodes": [{"ip_addr": "a", "port_forwarding": {"status": "on"}}]},
            "status",
            "net",
        ),
        (
            {"daq_nodes": [{"ip_addr": "a"}]},
            {"daq_nodes": [{"ip_addr": "a", "port_forwarding": {"gw": "b"}}]},
            "gw",
            "net",
        ),
        ({"daq_nodes": [{"ip_addr": "a"}]}, {"nodes": []}, "nodes", "net"),
    ],
)
def test_unknown_keys_and_wrong_types_name_key_and_file(tmp_path, daq, net, key, which):
    """R-CFG-3: an unknown key or a wrong type in daq_config or network_config is an error
    naming the key and the file (it used to be ignored: `modul_ids` streamed every module)."""
    daq_path, net_path = tmp_path / "daq_config.json", tmp_path / "network_config.json"
    daq_path.write_text(json.dumps(daq))
    net_path.write_text(json.dumps(net or {"daq_nodes": []}))
    with pytest.raises(ValueError, match=key) as info:
        load_daq_nodes(daq_path, net_path)
    assert str(daq_path if which == "daq" else net_path) in str(info.value)


def test_keys_the_originals_tools_write_are_accepted(tmp_path):
    """R-CFG-3: head_node_data_dir, head_node_ip_addr, user_name and comments load."""
    daq = {
        "head_node_data_dir": "/data",
        "head_node_ip_addr": "10.0.0.1",
        "comments": "two nodes",
        "daq_nodes": [
            {"ip_addr": "10.0.0.2", "user_name": "panoseti", "data_dir": "/d", "module_ids": []},
        ],
    }
    net = {
        "daq_nodes": [
            {"ip_addr": "10.0.0.2", "port_forwarding": {"status": False, "gw_ip": "", "port": 22}}
        ]
    }
    nodes = load_daq_nodes(daq, net)
    assert nodes["10.0.0.2"].user_name == "panoseti"
