"""The package's layers, read from its source: every import points down, and none goes round.

Each module of panoseti_daq belongs to one layer (LAYERS, lowest first, as in
docs/architecture.md); a module may import its own layer and those LAYERS lets it. Imports
are read with `ast` from every module, including imports inside functions (they run too, only
later) and excluding `if TYPE_CHECKING:` blocks (they never run). The loop-free layers (the
data model, the wire, the viewer tools and the UbloxControl protocol) must not import an event
loop, grpclib or HTTP/2, directly or through another module of the package.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "panoseti_daq"

# Layer -> the modules in it (dotted names under panoseti_daq; a name covers its submodules).
LAYERS: dict[str, tuple[str, ...]] = {
    "model": (
        "_bundled",
        "_generated",
        "config",
        "errors",
        "frames",
        "logs",
        "messages",
        "pff",
        "products",
        "synthetic",
        "timestamps",
    ),
    "wire": ("wire",),
    "ublox-protocol": (
        "ublox.chip_model",
        "ublox.errors",
        "ublox.fanout",
        "ublox.patterns",
        "ublox.protocol",
        "ublox.records",
        "ublox.settings",
    ),
    "viewer": ("viewer", "plots", "ublox.plot", "ublox.table"),
    "glue": ("_grpclib",),
    "client": ("client", "ublox.client"),
    "server": ("server", "ublox.port", "ublox.init_steps", "ublox.controller", "ublox.service"),
    "entry": (
        "__init__",
        "cli",
        "demo",
        "replay",
        "serve",
        "ublox.__init__",
        "ublox.cli",
        "ublox.demo",
        "ublox.simulator",
    ),
}
# What each layer may import besides itself: always lower layers.
MAY_IMPORT: dict[str, set[str]] = {
    "model": set(),
    "wire": {"model"},
    "ublox-protocol": {"model"},
    "viewer": {"model", "wire", "ublox-protocol"},
    "glue": {"model", "wire"},
    "client": {"model", "wire", "glue", "ublox-protocol"},
    "server": {"model", "wire", "glue", "ublox-protocol"},
    "entry": {"model", "wire", "ublox-protocol", "viewer", "glue", "client", "server"},
}
LOOP_FREE = ("model", "wire", "ublox-protocol", "viewer")
# Libraries that bring an event loop, grpclib or HTTP/2 with them.
LOOP_LIBRARIES = {"anyio", "asyncio", "grpclib", "h2", "hpack", "sniffio", "trio", "trio_asyncio"}


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts)


def _layer_of(module: str) -> str:
    name = module.removeprefix("panoseti_daq").removeprefix(".")
    if (PACKAGE / name.replace(".", "/") / "__init__.py").is_file():
        name = f"{name}.__init__".lstrip(".")  # a package: its __init__ module
    matches = [
        (len(member), layer)
        for layer, members in LAYERS.items()
        for member in members
        if name == member or name.startswith(member + ".")
    ]
    if not matches:
        raise AssertionError(f"{module} is in no layer of tests/test_layers.py: add it")
    return max(matches)[1]  # the most specific entry


def _runtime_nodes(tree: ast.Module) -> list[ast.stmt]:
    """The statements that run: everything but `if TYPE_CHECKING:` bodies."""
    kept: list[ast.stmt] = []

    def visit(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                visit(node.orelse)
                continue
            kept.append(node)

    visit(tree.body)
    return kept


def _imports(path: Path, modules: set[str]) -> set[str]:
    """What the module at `path` imports when it runs: dotted names, ours resolved to modules."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    if path.name == "__init__.py":
        name = name.removesuffix(".__init__")
        package = name
    found: set[str] = set()
    for statement in _runtime_nodes(ast.parse(path.read_text(), str(path))):
        for node in ast.walk(statement):
            if isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                for alias in node.names:  # `from . import pff` imports the module pff
                    candidate = f"{target}.{alias.name}"
                    found.add(candidate if candidate in modules else target)
    return found


def _graph() -> dict[str, set[str]]:
    paths = {
        (_module_name(p).removesuffix(".__init__")): p
        for p in PACKAGE.rglob("*.py")
        if "_generated" not in p.parts
    }
    modules = set(paths)
    return {name: _imports(path, modules) for name, path in paths.items()}


GRAPH = _graph()
OURS = {m for m in GRAPH}


def _ours(target: str) -> str | None:
    """The module of ours that `target` names (a module, or a package's __init__), if any."""
    if not target.startswith("panoseti_daq"):
        return None
    while target and target not in OURS:
        if target.startswith("panoseti_daq._generated"):
            return "panoseti_daq._generated"
        target = target.rpartition(".")[0]
    return target or None


def test_every_module_is_in_a_layer():
    for module in GRAPH:
        _layer_of(module)


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_imports_point_down(module):
    """A module imports its own layer and the layers below it, never above or beside."""
    layer = _layer_of(module)
    wrong = []
    for target in sorted(GRAPH[module]):
        ours = _ours(target)
        if ours is None:
            continue
        other = _layer_of(ours)
        if other != layer and other not in MAY_IMPORT[layer]:
            wrong.append(f"{target} ({other})")
    assert not wrong, f"{module} ({layer}) imports {', '.join(wrong)}"


def _closure(module: str) -> set[str]:
    seen: set[str] = set()
    todo = [module]
    while todo:
        current = todo.pop()
        for target in GRAPH.get(current, ()):
            ours = _ours(target)
            key = ours if ours is not None else target
            if key not in seen:
                seen.add(key)
                if ours is not None:
                    todo.append(ours)
    return seen


@pytest.mark.parametrize(
    "module", sorted(m for m in GRAPH if _layer_of(m) in LOOP_FREE), ids=lambda m: m
)
def test_loop_free_layers_load_no_event_loop_or_grpclib(module):
    """The data model, the wire, the viewer tools and the ublox protocol, with everything they
    import from the package: no anyio, trio, asyncio, grpclib or HTTP/2."""
    loaded = {name.split(".")[0] for name in _closure(module)}
    assert not loaded & LOOP_LIBRARIES, f"{module} loads {sorted(loaded & LOOP_LIBRARIES)}"


def test_no_import_goes_round():
    """No circle of imports between modules (Tarjan's strongly connected components)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles: list[list[str]] = []
    edges = {m: {o for t in GRAPH[m] if (o := _ours(t)) and o in GRAPH} - {m} for m in GRAPH}

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in edges[node]:
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    assert not circles, f"import circles: {circles}"


def test_only_the_glue_imports_trio_asyncio_or_grpclib_internals():
    """trio-asyncio, and grpclib's protocol and stream internals, only in panoseti_daq._grpclib."""
    internal = ("trio_asyncio", "grpclib.protocol", "grpclib.stream", "h2", "hyperframe")
    outside = defaultdict(list)
    for module, targets in GRAPH.items():
        if _layer_of(module) == "glue":
            continue
        for target in targets:
            if target.startswith(internal):
                outside[module].append(target)
    assert not outside, dict(outside)


def test_the_checks_can_fail():
    """The layer test sees a wrong import: a wire module importing the client is caught."""
    layer = _layer_of("panoseti_daq.wire.codec")
    assert _layer_of("panoseti_daq.client.aio") not in MAY_IMPORT[layer]
    assert "panoseti_daq.wire.varint" in {_ours(t) for t in GRAPH["panoseti_daq.wire.codec"]}


def test_at_most_17_modules_at_the_top():
    top = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(top) <= 17, top
