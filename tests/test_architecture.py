"""The layers: ``core`` at the bottom; ``training``, ``index`` and ``service`` on it; ``simclr`` (the CLI) on top.

- ``core`` imports none of training, index, service, simclr: they meet in it
- ``training`` and ``index`` never import ``service``
- ``service`` and ``index`` never import ``training``
- only ``simclr`` imports all three (nothing below imports ``simclr``)

Checked on the source of every file (each ``import x`` and ``from x import y``, at module level
or inside a function, relative imports resolved), so a lazy import inside a function counts too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = {
    "core": {"training", "index", "service", "simclr"},
    "training": {"service", "simclr"},
    "index": {"training", "service", "simclr"},
    "service": {"training", "simclr"},
}


def imported_modules(path: Path, root: Path = ROOT) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in the file under ``root``."""
    package = path.relative_to(root).with_suffix("").parts[:-1]  # the file's package, for relative imports
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:  # from . import x / from ..deps import y
                parent = ".".join(package[: len(package) - node.level + 1])
                module = f"{parent}.{module}" if module else parent
            found.append((node.lineno, module))
    return found


def violations(layer: str, root: Path = ROOT) -> list[str]:
    out = []
    for path in sorted((root / layer).rglob("*.py")):
        for line, module in imported_modules(path, root):
            if module.split(".")[0] in FORBIDDEN[layer]:
                out.append(f"{path.relative_to(root).as_posix()}:{line} imports {module}")
    return out


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_a_layer_imports_nothing_it_must_not(layer: str) -> None:
    files = list((ROOT / layer).rglob("*.py"))
    assert (ROOT / layer / "__init__.py") in files
    assert violations(layer) == []


def test_the_check_sees_lazy_and_relative_imports(tmp_path: Path) -> None:
    source = ("import os\nfrom .. import deps\nfrom ..state import x\n\n\n"
              "def f():\n    from training.finetune import main\n    import index.faiss_index\n")
    fake = tmp_path / "service" / "routes" / "x.py"
    fake.parent.mkdir(parents=True)
    fake.write_text(source)
    assert [m for _, m in imported_modules(fake, tmp_path)] == ["os", "service", "service.state", "training.finetune", "index.faiss_index"]
    assert violations("service", tmp_path) == ["service/routes/x.py:7 imports training.finetune"]


def test_the_cli_is_where_training_index_and_service_meet() -> None:
    tops = {m.split(".")[0] for path in (ROOT / "simclr").rglob("*.py") for _, m in imported_modules(path)}
    assert {"core", "training", "index", "service"} <= tops
