"""Dependencies run one way (README: Layout; docs/architecture.md), and no import cycle anywhere. Read from the
source with `ast`, so an import hidden inside a function, or one made only for type checking, counts as much as
one at the top of a module.

Lowest first: protos and common; datagen (video/ and ctp/ apart, joined by the generator, served by service/);
trainer. A room is a dotted prefix: a package or a module."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("protos", "common", "datagen", "trainer")
# room (a folder, or a module without .py) -> the only rooms it may import (itself included)
ONLY = {
    "protos": ("protos",),
    "common": ("common",),
    "datagen": ("protos", "common", "datagen"),
    "datagen/video": ("common", "datagen/video"),  # video files in, frames out: no CtP, no service
    "datagen/ctp": ("common", "datagen/ctp"),  # the game: no video I/O, no service
}
# room -> rooms it may not import
NOT = {
    "datagen/service/server": ("datagen/service/client",),
    "datagen/service/client": ("datagen/service/server",),
}


def modules() -> dict[str, Path]:
    """Every project module by dotted name (a package by its own name), generated gRPC code aside."""
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if path.name.endswith(("_pb2.py", "_pb2_grpc.py")):
                continue
            parts = path.relative_to(ROOT).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imports(name: str, source: str, known: set[str], is_package: bool = False) -> set[tuple[int, str]]:
    """(line, project module) of every import in module `name`: `from a import b` is module a.b when that
    exists, else a; an import of a name that is no module stands for the closest enclosing module."""

    def closest(dotted: str) -> str | None:
        while dotted and dotted not in known:
            dotted = dotted.rpartition(".")[0]
        return dotted or None

    found = set()
    here = name.split(".") if is_package else name.split(".")[:-1]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(here[: len(here) - node.level + 1] + ([base] if base else []))
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        else:
            continue
        found |= {(node.lineno, module) for module in map(closest, targets) if module and module != name}
    return found


def graph() -> dict[str, set[tuple[int, str]]]:
    mods = modules()
    return {name: imports(name, path.read_text(), set(mods), path.name == "__init__.py") for name, path in mods.items()}


def inside(module: str, room: str) -> bool:
    dotted = room.replace("/", ".")
    return module == dotted or module.startswith(dotted + ".")


def allowed(room: str, target: str) -> bool:
    if room in ONLY and not any(inside(target, other) for other in ONLY[room]):
        return False
    return not any(inside(target, other) for other in NOT.get(room, ()))


@pytest.mark.parametrize("room", [*ONLY, *NOT])
def test_no_room_imports_one_it_may_not(room):
    edges, paths = graph(), modules()
    assert any(inside(m, room) for m in edges), f"no modules found in {room}"
    wrong = [
        f"{paths[m].relative_to(ROOT)}:{line} imports {target}"
        for m, targets in sorted(edges.items())
        if inside(m, room)
        for line, target in sorted(targets)
        if not allowed(room, target)
    ]
    assert not wrong, "imports against the layering: " + "; ".join(wrong)


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = stack[stack.index(v) :]
            del stack[stack.index(v) :]
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycle():
    edges = {m: {target for _, target in targets} for m, targets in graph().items()}
    assert not cycles(edges), f"import cycles: {cycles(edges)}"


def test_the_check_sees_lazy_relative_and_type_checking_imports():
    # datagen's service CLI once imported the trainer inside a function; the trainer's reporting and its loop
    # once imported each other, one side only `if TYPE_CHECKING:`. Both are found.
    known = {"low", "low.room", "low.room.logs", "high", "high.loop", "high.remote"}
    source = (
        "from . import logs\nimport numpy\nif TYPE_CHECKING:\n    from high.loop import Trainer\n\n"
        "def run():\n    from high.remote import RemoteSource\n"
    )
    assert imports("low.room.cli", source, known) == {(1, "low.room.logs"), (4, "high.loop"), (7, "high.remote")}
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
    assert not allowed("datagen/video", "datagen.ctp.plan") and allowed("datagen/video", "common.atomic")
    assert not allowed("datagen/service/client", "datagen.service.server.work_queue")
