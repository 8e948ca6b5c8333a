"""The house rules of docs/ARCHITECTURE.md, checked on the source: layers import only downwards, modules
stay under 400 lines, every public function and class has a docstring."""
from __future__ import annotations

import ast
import importlib
import inspect
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# docs/ARCHITECTURE.md's table: a unit may import units of a lower rank (and itself), never an equal or
# higher one. Rank 0 units are independent of each other.
RANK = {"jax_unlearn.data": 0, "jax_unlearn.models": 0, "jax_unlearn.metrics": 0, "converters": 1,
        "jax_unlearn.engine": 1, "jax_unlearn.methods": 2, "jax_unlearn.jobs": 3, "jax_unlearn.evaluation": 4,
        "jax_unlearn.leaderboard": 5, "jax_unlearn.demo": 5, "jax_unlearn.kaggle": 5, "jax_unlearn.cli": 6}
MAX_LINES = 400
SOURCES = sorted([*(ROOT / "jax_unlearn").rglob("*.py"), *(ROOT / "converters").rglob("*.py")])


def _module(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")


def _unit(module: str) -> str | None:
    return next((u for u in sorted(RANK, key=len, reverse=True) if module == u or module.startswith(u + ".")), None)


def test_every_module_belongs_to_a_layer():
    assert [m for m in map(_module, SOURCES) if m != "jax_unlearn" and _unit(m) is None] == []


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_go_down_the_layers(path):
    me = _unit(_module(path))
    upward = []
    for node in ast.walk(ast.parse(path.read_text())):  # function-level (lazy) imports included
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            targets = [node.module] if node.module != "jax_unlearn" else [f"jax_unlearn.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        else:
            continue
        for target in targets:
            unit = _unit(target)
            if me and unit and unit != me and RANK[unit] >= RANK[me]:
                upward.append(f"line {node.lineno}: {target}")
    assert upward == [], f"{me} (rank {RANK.get(me)}) imports a unit of equal or higher rank"


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_modules_stay_small(path):
    assert len(path.read_text().splitlines()) < MAX_LINES


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_public_functions_and_classes_have_docstrings(path):
    module = importlib.import_module(_module(path))
    missing = [name for name, obj in vars(module).items()
               if not name.startswith("_") and (inspect.isfunction(obj) or inspect.isclass(obj))
               and getattr(obj, "__module__", None) == module.__name__ and not (obj.__doc__ or "").strip()]
    assert missing == []
