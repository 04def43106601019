"""Dependencies run one way: trainer -> datagen -> protos (README: Layout). Read from the source with
`ast`, so an import hidden inside a function counts as much as one at the top of a module."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("protos", "datagen", "trainer")
FORBIDDEN = {"protos": {"datagen", "trainer"}, "datagen": {"trainer"}, "trainer": set()}  # the layers above


def imported_packages(source: str, package: str) -> set[tuple[int, str]]:
    """(line, top-level project package) of every import in a module of `package`; a relative import is
    the module's own package."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {(node.lineno, alias.name.split(".")[0]) for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            found.add((node.lineno, package if node.level else (node.module or "").split(".")[0]))
    return {(line, top) for line, top in found if top in PACKAGES}


def modules(package: str) -> list[Path]:
    return sorted(p for p in (ROOT / package).rglob("*.py") if not p.name.endswith(("_pb2.py", "_pb2_grpc.py")))


@pytest.mark.parametrize("package", PACKAGES)
def test_no_package_imports_a_layer_above_it(package):
    assert modules(package), f"no modules found under {package}/"
    wrong = [
        f"{path.relative_to(ROOT)}:{line} imports {top}"
        for path in modules(package)
        for line, top in sorted(imported_packages(path.read_text(), package))
        if top in FORBIDDEN[package]
    ]
    assert not wrong, "imports against the layering: " + "; ".join(wrong)


def test_the_check_sees_lazy_and_relative_imports():
    # datagen/service/cli.py once imported the trainer inside a function: such an import is found.
    source = "from . import jsonlog\nimport numpy\n\ndef run():\n    from trainer.remote import RemoteSource\n"
    assert imported_packages(source, "datagen") == {(1, "datagen"), (5, "trainer")}
