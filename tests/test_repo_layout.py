"""Where the test harness lives, checked: the e2e driver, cluster access and the fault scenarios sit under tests/,
the product (src/kuberec, the pipelines, the components) never imports the tests or the benchmarks, the tests never
import the benchmarks (the benchmarks may import the tests' scenarios), and pipelines/ holds pipelines and their
runner only."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

pytestmark = pytest.mark.fast  # no JVM, no training, no server: part of `make test-fast`

REPO = Path(__file__).resolve().parents[1]
PRODUCT = ("src/kuberec", "pipelines", "components")
PIPELINE_RUNNER = ("__init__.py", "run.py")


def _imported(path: Path) -> list[str]:
    """Every module the file imports, at the top or inside a function (relative imports stay in their package)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append(node.module)
    return found


def _imports_from(path: Path, package: str) -> list[str]:
    return [name for name in _imported(path) if name == package or name.startswith(package + ".")]


def _modules(*folders: str) -> list[Path]:
    return sorted(path for folder in folders for path in (REPO / folder).rglob("*.py"))


def test_tests_never_import_the_benchmarks():
    offenders = {str(path.relative_to(REPO)): _imports_from(path, "benchmarks") for path in _modules("tests")}
    assert not {path: names for path, names in offenders.items() if names}, \
        "a test imports a benchmark; move what both need under tests/ (e.g. tests/scenarios) and import it from there"


@pytest.mark.parametrize("package", ["tests", "benchmarks"])
def test_the_product_never_imports_the_tests_or_the_benchmarks(package):
    offenders = {str(path.relative_to(REPO)): _imports_from(path, package) for path in _modules(*PRODUCT)}
    assert not {path: names for path, names in offenders.items() if names}


def test_pipelines_holds_only_pipelines_and_their_runner():
    """Each module besides the runner is a pipeline, as `pipelines.run.load_pipeline` finds it: `<name>.py` defining
    `<name>_pipeline` under @dsl.pipeline. A system test or a driver of its own goes under tests/ (make e2e's:
    tests/e2e)."""
    from pipelines.run import PIPELINES

    folder = REPO / "pipelines"
    assert all((folder / name).is_file() for name in PIPELINE_RUNNER)
    assert not [path for path in folder.iterdir() if path.is_dir() and path.name != "__pycache__"]
    modules = sorted(path for path in folder.glob("*.py") if path.name not in PIPELINE_RUNNER)
    assert sorted(path.stem for path in modules) == sorted(PIPELINES), \
        "pipelines/ holds a module that is no pipeline of pipelines.run (a system test goes under tests/)"
    for path in modules:
        pipelines = [node.name for node in ast.parse(path.read_text()).body
                     if isinstance(node, ast.FunctionDef) and any(
                         ast.unparse(d.func if isinstance(d, ast.Call) else d) == "dsl.pipeline"
                         for d in node.decorator_list)]
        assert pipelines == [f"{path.stem}_pipeline"], \
            f"pipelines/{path.name} is not a pipeline (no {path.stem}_pipeline under @dsl.pipeline)"


def test_make_e2e_runs_the_driver_under_tests():
    recipe = (REPO / "Makefile").read_text().split("\ne2e:", 1)[1].split("\n\n", 1)[0]
    assert "/bin/python -m tests.e2e.driver " in recipe, recipe
    assert (REPO / "tests" / "e2e" / "cluster_access.py").is_file()
