"""daq_config.json and network_config.json: which DAQ nodes to talk to, and how (R-CFG-3).

A DAQ node is named by its `ip_addr` in daq_config.json; that name is what `hosts` arguments
take. Its gRPC target is that address on port 50051, unless
- network_config.json has a node with the same ip_addr whose port_forwarding.status is true:
  then the client connects to its gw_ip (the gRPC port stays 50051; `port` there is SSH's);
- the node names another port, as `host:port` or with a `port` key (several servers on one
  machine);
- ip_addr is `unix:///path`: a Unix-socket server.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["DEFAULT_PORT", "DaqNode", "load_daq_nodes", "parse_module_ids"]

DEFAULT_PORT = 50051
# The keys each object may have (R-CFG-3), with the JSON types they take; besides ours, the keys
# the original's tools write into these files.
_DAQ_KEYS: dict[str, tuple[type, ...]] = {
    "daq_nodes": (list,),
    "head_node_data_dir": (str,),
    "head_node_ip_addr": (str,),
    "comments": (str,),
}
_DAQ_NODE_KEYS: dict[str, tuple[type, ...]] = {
    "ip_addr": (str,),
    "port": (int,),
    "data_dir": (str,),
    "module_ids": (str, int, list),
    "user_name": (str,),
    "comments": (str,),
}
_NET_KEYS: dict[str, tuple[type, ...]] = {"daq_nodes": (list,), "comments": (str,)}
_NET_NODE_KEYS: dict[str, tuple[type, ...]] = {
    "ip_addr": (str,),
    "port_forwarding": (dict,),
    "comments": (str,),
}
_FORWARDING_KEYS: dict[str, tuple[type, ...]] = {
    "status": (bool,),
    "gw_ip": (str,),
    "port": (int,),
}
_JSON_NAMES = {str: "a string", int: "an integer", bool: "true or false", list: "a list"}
_JSON_NAMES[dict] = "an object"


def _check_keys(
    obj: Mapping[str, Any], allowed: dict[str, tuple[type, ...]], where: str, prefix: str = ""
) -> None:
    """ValueError naming the first unknown key or value of a wrong JSON type, and the file."""
    for key, value in obj.items():
        name = f"{prefix}{key!r}" if not prefix else f"{prefix}.{key}"
        types = allowed.get(key)
        if types is None:
            raise ValueError(f"{where}: unknown key {name if prefix else repr(key)}")
        # JSON has no bools among its integers; null is "not given".
        wrong_bool = isinstance(value, bool) and bool not in types
        if value is not None and (wrong_bool or not isinstance(value, types)):
            kinds = " or ".join(_JSON_NAMES[t] for t in types)
            shown = name if prefix else repr(key)
            raise ValueError(f"{where}: {shown} must be {kinds}, not {value!r}")


@dataclass(frozen=True)
class DaqNode:
    """One DAQ node: its name, where its server listens, and its data."""

    name: str
    host: str | None
    port: int | None
    path: str | None = None
    data_dir: str | None = None
    module_ids: tuple[int, ...] = ()
    user_name: str | None = None

    @property
    def target(self) -> str:
        return f"unix://{self.path}" if self.path else f"{self.host}:{self.port}"


def _load(source: str | os.PathLike[str] | Mapping[str, Any], what: str) -> tuple[Any, str]:
    if isinstance(source, Mapping):
        return dict(source), f"<{what} dict>"
    path = Path(source).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    try:
        return json.loads(path.read_text()), str(path)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON: {exc}") from None


def parse_module_ids(value: Any, where: str) -> tuple[int, ...]:
    """Module ids as a list of ints or "0-127,200" style ranges."""
    if value is None or value == "":
        return ()
    if isinstance(value, int) and not isinstance(value, bool):
        return (value,)
    items = value if isinstance(value, list) else str(value).split(",")
    ids: list[int] = []
    for item in items:
        text = str(item).strip()
        try:
            if "-" in text:
                low, high = (int(part) for part in text.split("-", 1))
                if high < low:
                    raise ValueError
                ids.extend(range(low, high + 1))
            else:
                ids.append(int(text))
        except ValueError:
            raise ValueError(f"{where}: 'module_ids' has an invalid entry {item!r}") from None
    return tuple(ids)


def _forwarding(network: Any, where: str) -> dict[str, str]:
    """ip_addr -> gw_ip for the network nodes with port forwarding on."""
    if network is None:
        return {}
    if not isinstance(network, Mapping):
        raise ValueError(f"{where}: must be a JSON object")
    _check_keys(network, _NET_KEYS, where)
    nodes = network.get("daq_nodes", [])
    if not isinstance(nodes, list):
        raise ValueError(f"{where}: 'daq_nodes' must be a list")
    gateways = {}
    for index, node in enumerate(nodes):
        if not isinstance(node, Mapping) or "ip_addr" not in node:
            raise ValueError(f"{where}: daq_nodes[{index}] has no 'ip_addr'")
        _check_keys(node, _NET_NODE_KEYS, where, f"daq_nodes[{index}]")
        forwarding = node.get("port_forwarding") or {}
        _check_keys(forwarding, _FORWARDING_KEYS, where, f"daq_nodes[{index}].port_forwarding")
        if forwarding.get("status") is True:
            if not forwarding.get("gw_ip"):
                raise ValueError(f"{where}: daq_nodes[{index}].port_forwarding has no 'gw_ip'")
            gateways[str(node["ip_addr"])] = str(forwarding["gw_ip"])
    return gateways


def _address(name: str, node: Mapping[str, Any], gateway: str | None, where: str):
    if name.startswith("unix://"):
        return None, None, name[len("unix://") :]
    host, port = name, node.get("port", DEFAULT_PORT)
    if name.count(":") == 1:  # host:port (an IPv6 address has several colons)
        host, port_text = name.split(":")
        try:
            port = int(port_text)
        except ValueError:
            raise ValueError(f"{where}: 'ip_addr' {name!r} has an invalid port") from None
    elif name.startswith("[") and "]:" in name:
        host, port_text = name[1:].split("]:")
        port = int(port_text)
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        raise ValueError(f"{where}: 'port' of {name!r} must be 1..65535, not {port!r}")
    return gateway or host, port, None


def load_daq_nodes(
    daq_config: str | os.PathLike[str] | Mapping[str, Any],
    network_config: str | os.PathLike[str] | Mapping[str, Any] | None = None,
) -> dict[str, DaqNode]:
    """name -> DaqNode from daq_config and network_config (R-CLI-1, R-CFG-3)."""
    daq, where = _load(daq_config, "daq_config")
    network, net_where = (
        (None, "") if network_config is None else _load(network_config, "network_config")
    )
    if not isinstance(daq, Mapping) or "daq_nodes" not in daq:
        raise ValueError(f"{where}: missing key 'daq_nodes'")
    nodes = daq["daq_nodes"]
    if not isinstance(nodes, list) or not nodes:
        raise ValueError(f"{where}: 'daq_nodes' must be a non-empty list")
    _check_keys(daq, _DAQ_KEYS, where)
    gateways = _forwarding(network, net_where)
    result: dict[str, DaqNode] = {}
    for index, node in enumerate(nodes):
        if not isinstance(node, Mapping) or not node.get("ip_addr"):
            raise ValueError(f"{where}: daq_nodes[{index}] has no 'ip_addr'")
        _check_keys(node, _DAQ_NODE_KEYS, where, f"daq_nodes[{index}]")
        name = str(node["ip_addr"])
        host, port, path = _address(name, node, gateways.get(name), f"{where} daq_nodes[{index}]")
        result[name] = DaqNode(
            name=name,
            host=host,
            port=port,
            path=path,
            data_dir=node.get("data_dir"),
            module_ids=parse_module_ids(node.get("module_ids"), f"{where} daq_nodes[{index}]"),
            user_name=node.get("user_name"),
        )
    return result
