"""The import graph reads train -> models -> nn -> ops and train -> data (STYLE.md, "The shape of the
repository"); no package outside models/ branches on a model's name."""

import ast
import re
from pathlib import Path

import pytest

import fastgan
from fastgan.models import REGISTRY

PACKAGE = Path(fastgan.__file__).parent
# package -> the fastgan packages it must not import (directly or as `from ..x import`).
FORBIDDEN = {
    "ops": {"nn", "models", "data", "train"},
    "nn": {"models", "data", "train"},
    "models": {"data", "train"},
    "data": {"models", "train", "nn", "ops"},
    "metrics": {"train"},
}


def _imported_packages(path: Path) -> set[str]:
    """The fastgan sub-packages a module imports, resolving relative imports."""
    module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    parts = module.split(".")
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = parts[: len(parts) - node.level] + (node.module.split(".") if node.module else [])
                names = [".".join(base)] + [".".join(base + [a.name]) for a in node.names]
            else:
                names = [node.module or ""] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        for name in names:
            if name.startswith("fastgan.") and len(name.split(".")) > 1:
                found.add(name.split(".")[1])
    return found


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_lower_layers_never_import_upper_ones(package):
    for path in sorted((PACKAGE / package).rglob("*.py")):
        wrong = _imported_packages(path) & FORBIDDEN[package]
        assert not wrong, f"{path.relative_to(PACKAGE.parent)} imports fastgan.{', fastgan.'.join(sorted(wrong))}"


def test_the_checker_sees_relative_and_absolute_imports(tmp_path):
    # A planted violation of each form, so the test above cannot pass by seeing nothing.
    planted = PACKAGE / "data" / "_planted_for_test.py"
    try:
        planted.write_text("from ..train import loop\nimport fastgan.models.base\n")
        assert _imported_packages(planted) >= {"train", "models"}
    finally:
        planted.unlink()


def test_no_model_name_tests_outside_models():
    names = "|".join(re.escape(name) for name in REGISTRY)
    pattern = re.compile(rf"""[=!]=\s*["']({names})["']|["']({names})["']\s*[=!]=|\.model\s*[=!]=""")
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.parent.name == "models":
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            assert not pattern.search(line), f"{path.relative_to(PACKAGE.parent)}:{number} tests a model's name"
