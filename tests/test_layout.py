"""The package's imports flow one way: io → data → model → scoring → serve → export / train (docs/layout.md)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "multitask"
SHARED = {"errors", "labels", "checks"}  # conventions and checks every stage may use
ORDER = ["io", "data", "model", "scoring", "serve"]
# What each part may import from multitask, besides itself.
ALLOWED = {stage: SHARED | set(ORDER[:index]) for index, stage in enumerate(ORDER)}
ALLOWED |= {"export": SHARED | set(ORDER), "train": SHARED | set(ORDER), "errors": set(), "labels": set(),
            "checks": {"errors", "io"}}


def imported_parts(path: Path) -> set[str]:
    """The first name under `multitask.` of every import in `path` (lazy imports inside functions too)."""
    parts = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names = ([alias.name for alias in node.names] if isinstance(node, ast.Import)
                 else [node.module] if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 else [])
        parts |= {name.split(".")[1] for name in names if name.startswith("multitask.")}
    return parts


def test_every_stage_imports_only_the_stages_below_it():
    wrong = []
    for part, allowed in ALLOWED.items():
        files = sorted((PACKAGE / part).rglob("*.py")) if (PACKAGE / part).is_dir() else [PACKAGE / f"{part}.py"]
        assert files, part
        for path in files:
            for other in imported_parts(path) - allowed - {part}:
                wrong.append(f"{path.relative_to(PACKAGE.parent)} imports multitask.{other}")
    assert not wrong, "\n".join(wrong)


def test_the_rule_sees_lazy_imports(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from multitask.train.trainer import X\n    import multitask.serve.predict\n")
    assert imported_parts(module) == {"train", "serve"}


def test_a_module_of_the_flat_layout_says_where_it_went():
    import importlib

    import pytest

    with pytest.raises(ModuleNotFoundError, match=r"'multitask.modeling': it moved to 'multitask.model.modeling'"):
        importlib.import_module("multitask.modeling")
    with pytest.raises(ModuleNotFoundError, match="No module named 'multitask.nothing_like_it'$"):
        importlib.import_module("multitask.nothing_like_it")  # an unknown name: the usual error


def test_every_moved_module_exists_at_its_new_place():
    from multitask._moved import MOVED

    for old, new in MOVED.items():
        assert (PACKAGE / (new.replace(".", "/") + ".py")).is_file(), (old, new)
        assert not (PACKAGE / f"{old}.py").exists(), old  # else the old name still imports and the map is stale
