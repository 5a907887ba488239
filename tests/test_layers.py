"""The map of layers (../shared/design.md), held by reading the code: the C++ includes go only
downward (csrc/base from anywhere), the Python imports go only downward and never in a circle,
and transports are named only in their own layer.

Nothing is built or imported here: the sources are parsed (regular expressions for #include,
the ast module for Python), so a forbidden edge fails this test whatever else is broken."""

from __future__ import annotations

import ast
import os
import re
from typing import Dict, List, Set, Tuple

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CSRC = os.path.join(ROOT, "csrc")
PYTHON = os.path.join(ROOT, "python")

# --- C++ ------------------------------------------------------------------------------------------

# Bottom to top: a file may include headers of its own layer or of layers below it.
CPP_LAYERS = ["base", "bootstrap", "topology", "transport", "reduce", "algorithms", "tuner", "core", "bindings"]
# What core hands the algorithms (design.md: "the exchange engine, the op's context"): the one
# sanctioned upward edge. These headers must not pull the rest of core in with them.
HANDED_TO_ALGORITHMS = {"core/op_context.h", "core/exchange.h"}
# The transport interface: what the rest of the core may see of the transport layer. Concrete
# transports (shm, tcp, ...) are named only inside csrc/transport, in their files and the table.
# The device path's side of cuda_ipc is interface too: the signal pad's layout (which the device
# programs of csrc/algorithms write) and the workspace memory (which core allocates and maps);
# and what `plexus info` may know of UCX (ucx_info.h).
TRANSPORT_INTERFACE = {"transport/transport.h", "transport/transport_set.h", "transport/connection.h",
                       "transport/host_memory.h", "transport/frame.h", "transport/cuda_ipc/cuda_ipc.h",
                       "transport/cuda_ipc/signal_pad.h", "transport/cuda_ipc/workspace.h",
                       "transport/ucx_info.h", "transport/message_port.h"}
SOURCE_EXTENSIONS = (".h", ".cc", ".cu", ".cuh", ".inc")
INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"', re.M)


def cpp_includes() -> Dict[str, List[str]]:
    """csrc-relative path of every source -> the project headers it includes."""
    edges = {}
    for folder, _, files in os.walk(CSRC):
        for name in files:
            if name.endswith(SOURCE_EXTENSIONS):
                path = os.path.join(folder, name)
                with open(path, encoding="utf-8") as f:
                    edges[os.path.relpath(path, CSRC)] = INCLUDE.findall(f.read())
    return edges


def layer_of(path: str) -> str:
    return path.split("/", 1)[0]


def test_every_cpp_source_is_in_a_layer():
    unknown = sorted(p for p in cpp_includes() if layer_of(p) not in CPP_LAYERS)
    assert not unknown, f"sources outside the map's layers {CPP_LAYERS}: {unknown}"


def test_cpp_includes_resolve():
    missing = [(src, h) for src, hs in cpp_includes().items() for h in hs
               if not os.path.exists(os.path.join(CSRC, h))]
    assert not missing, f"includes of files that do not exist (paths are relative to csrc/): {missing}"


def cpp_violations() -> List[Tuple[str, str]]:
    bad = []
    for src, headers in cpp_includes().items():
        mine = layer_of(src)
        for h in headers:
            theirs = layer_of(h)
            if theirs not in CPP_LAYERS:
                continue  # reported by test_every_cpp_source_is_in_a_layer
            if theirs == "base" or CPP_LAYERS.index(theirs) <= CPP_LAYERS.index(mine):
                continue
            if mine == "algorithms" and h in HANDED_TO_ALGORITHMS:
                continue
            bad.append((src, h))
    return bad


def test_cpp_includes_go_down_only():
    bad = cpp_violations()
    assert not bad, "includes that go up the map (" + " > ".join(reversed(CPP_LAYERS)) + "): " + \
        ", ".join(f"{s} -> {h}" for s, h in bad)


def test_what_core_hands_the_algorithms_stands_alone():
    edges = cpp_includes()
    for header in sorted(HANDED_TO_ALGORITHMS):
        assert header in edges, f"{header} is missing"
        pulled = [h for h in edges[header] if layer_of(h) == "core" and h not in HANDED_TO_ALGORITHMS]
        assert not pulled, f"{header} includes {pulled}: the algorithms would see the rest of core through it"


def test_transports_are_named_only_in_their_layer():
    bad = [(s, h) for s, hs in cpp_includes().items() for h in hs
           if layer_of(h) == "transport" and layer_of(s) != "transport" and h not in TRANSPORT_INTERFACE]
    assert not bad, "concrete transports included outside csrc/transport (use the interface " + \
        f"{sorted(TRANSPORT_INTERFACE)}): " + ", ".join(f"{s} -> {h}" for s, h in bad)


def test_the_checker_sees_a_forbidden_edge(monkeypatch):
    fake = {"bootstrap/rendezvous.h": ["transport/tcp.h", "base/error.h"], "algorithms/ring.cc": ["core/exchange.h"],
            "algorithms/tree.cc": ["core/communicator.h"]}
    monkeypatch.setattr(__import__(__name__), "cpp_includes", lambda: fake)
    assert cpp_violations() == [("bootstrap/rendezvous.h", "transport/tcp.h"), ("algorithms/tree.cc", "core/communicator.h")]


# --- Python ---------------------------------------------------------------------------------------

# Bottom to top (module names relative to `plexus`; a package stands for its submodules unless
# one of them is listed on its own). A module may import its own level or below.
PY_LEVELS: List[Set[str]] = [
    {"_C", "_ops", "_work", "_stores", "_rendezvous", "topology", "_topo_describe", "_topo_schema", "tuning",
     "_trace", "_cma", "_ucx"},
    {"_arrays", "device.arrays"},  # array adapters: numpy, torch, cupy -> one buffer view
    {"device"},  # the device paths: CUDA IPC, the pipeline, staging
    {"_collectives"},  # the one collective layer
    {"", "distributed", "torch_backend"},  # the public API ("": the package itself) and the torch backend
    {"cli", "bench"},  # commands
]


def python_modules() -> Dict[str, str]:
    """Dotted module name -> file, for every module of the plexus package."""
    mods = {}
    base = os.path.join(PYTHON, "plexus")
    for folder, _, files in os.walk(base):
        for name in files:
            if name.endswith(".py"):
                rel = os.path.relpath(os.path.join(folder, name), PYTHON)[:-3].replace(os.sep, ".")
                mods[rel[:-len(".__init__")] if rel.endswith(".__init__") else rel] = os.path.join(folder, name)
    return mods


def python_imports() -> Dict[str, Set[str]]:
    """Module -> the plexus modules it imports anywhere in its body (lazy imports too)."""
    mods = python_modules()
    known = set(mods) | {"plexus._C"}
    edges: Dict[str, Set[str]] = {}
    for mod, path in mods.items():
        package = mod if path.endswith("__init__.py") else mod.rsplit(".", 1)[0]
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read(), path)
        out: Set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                out |= {a.name for a in node.names if a.name.split(".")[0] == "plexus"}
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    parts = package.split(".")
                    origin = ".".join(parts[:len(parts) - node.level + 1])
                    origin = f"{origin}.{node.module}" if node.module else origin
                else:
                    origin = node.module or ""
                if origin.split(".")[0] != "plexus":
                    continue
                for a in node.names:  # `from pkg import submodule` imports the submodule
                    sub = f"{origin}.{a.name}"
                    out.add(sub if sub in known else origin)
        out.discard(mod)
        edges[mod] = {m for m in out if m in known}
    return edges


def py_level(mod: str) -> int:
    name = mod[len("plexus."):] if mod.startswith("plexus.") else ""
    best = None
    for level, names in enumerate(PY_LEVELS):
        for n in names:
            if name == n or (n and name.startswith(n + ".")):
                if best is None or len(n) > best[1]:
                    best = (level, len(n))
    if best is None:
        raise AssertionError(f"{mod} is on no level of the map: add it to PY_LEVELS in {__file__}")
    return best[0]


def test_python_imports_go_down_only():
    bad = [(m, d) for m, deps in python_imports().items() for d in deps if py_level(d) > py_level(m)]
    assert not bad, "imports that go up the map: " + ", ".join(f"{m} -> {d}" for m, d in sorted(bad))


def cycles(edges: Dict[str, Set[str]]) -> List[List[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on: Set[str] = set()
    found: List[List[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_no_python_import_cycles():
    found = cycles(python_imports())
    assert not found, f"import cycles (each a set of modules that import each other): {found}"


def test_the_checkers_see_cycles_and_upward_imports():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert py_level("plexus.device.arrays") < py_level("plexus.device.ipc") < py_level("plexus._collectives")
    assert py_level("plexus.torch_backend.ops") > py_level("plexus._collectives")
    with pytest.raises(AssertionError, match="on no level"):
        py_level("plexus.somewhere_new")


def test_python_map_covers_every_module():
    for mod in python_modules():
        py_level(mod)
