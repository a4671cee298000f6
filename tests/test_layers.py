"""The shape of the package, checked: lower layers never import higher ones, no module imports itself through
others, only the `*commands.py` modules (and `kuberec.cli`, which assembles them) import the CLI or take parsed
arguments (`argparse.Namespace`), and model configs import no TensorFlow."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from kuberec.models import MODELS

pytestmark = pytest.mark.fast  # no JVM, no training, no server: part of `make test-fast`

SRC = Path(__file__).resolve().parents[1] / "src"
# Bottom to top. A module may import its own layer and those below it; the command modules sit above everything.
LAYERS: tuple[tuple[str, ...], ...] = (
    # foundation: errors, how programs end, settings, ports
    ("kuberec", "kuberec.errors", "kuberec.entrypoint", "kuberec.settings", "kuberec.ports"),
    # services: model configs and request checks, the V2 protocol's client, data files, the lake and its feed,
    # MLflow, the champion gate and the run-page reports, where jobs run
    ("kuberec.model_config", "kuberec.model_input", "kuberec.inference", "kuberec.datasets", "kuberec.lake",
     "kuberec.feed", "kuberec.tracking", "kuberec.champion", "kuberec.reports", "kuberec.backends"),
    ("kuberec.ingest", "kuberec.training"),  # the data steps and the training harness
    tuple(f"kuberec.{name}" for name in MODELS),  # the model packages: one per record
    ("kuberec.models",),  # the list of models
    ("kuberec.tuning", "kuberec.serving"),
)


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_command_module(name: str) -> bool:
    return name == "kuberec.cli" or name.rsplit(".", 1)[-1].endswith("commands")


def _layer(name: str) -> int:
    """The layer of a kuberec module: the longest package prefix listed in LAYERS."""
    best, depth = -1, -1
    for index, packages in enumerate(LAYERS):
        for package in packages:
            # The root package holds only itself: a new package must be given a layer, not inherit the lowest.
            inside = name.startswith(package + ".") and package != "kuberec"
            if (name == package or inside) and package.count(".") > depth:
                best, depth = index, package.count(".")
    assert best >= 0, f"{name} is in no layer of tests/test_layers.py"
    return best


def _imports(path: Path) -> list[str]:
    """Every kuberec module the file imports, at the top or inside a function."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            raise AssertionError(f"{path}: relative import; kuberec imports by absolute name")
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found += [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
    return [name for name in found if name == "kuberec" or name.startswith("kuberec.")]


LIBRARY = sorted(path for path in (SRC / "kuberec").rglob("*.py") if not _is_command_module(_module_name(path)))


def test_every_module_sits_in_a_layer():
    for path in (SRC / "kuberec").rglob("*.py"):
        name = _module_name(path)
        if not _is_command_module(name):
            _layer(name)


@pytest.mark.parametrize("path", LIBRARY, ids=lambda path: _module_name(path))
def test_library_modules_never_import_a_higher_layer_or_the_cli(path):
    name = _module_name(path)
    for imported in _imports(path):
        if _is_command_module(imported):
            pytest.fail(f"{name} imports {imported}: only the *commands.py modules may use the command line")
        target = imported if _layer_or_none(imported) is not None else imported.rsplit(".", 1)[0]
        assert _layer(target) <= _layer(name), f"{name} (layer {_layer(name)}) imports {imported} " \
                                               f"(layer {_layer(target)})"
    assert "argparse.Namespace" not in path.read_text(), f"{name} takes parsed arguments; a *commands.py should"


def _layer_or_none(name: str) -> int | None:
    try:
        return _layer(name)
    except AssertionError:
        return None


def test_model_packages_never_know_the_list_of_models():
    for package in MODELS:
        for path in (SRC / "kuberec" / package).rglob("*.py"):
            if _is_command_module(_module_name(path)):
                continue
            assert not any(name.startswith("kuberec.models") for name in _imports(path)), path


def test_configs_tuning_and_the_register_step_import_no_tensorflow_and_no_cli():
    script = ("import sys\n"
              "import kuberec.models, kuberec.tuning.space, kuberec.similarity.config, kuberec.widedeep.config\n"
              "assert 'tensorflow' not in sys.modules, 'TensorFlow imported'\n"
              "import kuberec.similarity.index.build, kuberec.similarity.index.refresh, kuberec.tuning.sweep\n"
              "assert 'kuberec.cli' not in sys.modules, 'the CLI imported'\n")
    completed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr


def _module_or_package(name: str) -> str | None:
    """`name` if it is a kuberec module, else the module it is a name in (`kuberec.tracking.client` -> tracking)."""
    for candidate in (name, name.rsplit(".", 1)[0]):
        path = SRC.joinpath(*candidate.split("."))
        if path.with_suffix(".py").is_file() or (path / "__init__.py").is_file():
            return candidate
    return None


def test_no_import_circle():
    """No module reaches itself through the imports of the modules it imports, lazy imports inside functions
    included: a circle makes import order matter and hides which of two modules is the lower one."""
    graph: dict[str, set[str]] = {}
    for path in (SRC / "kuberec").rglob("*.py"):
        name = _module_name(path)
        graph[name] = {target for imported in _imports(path)
                       if (target := _module_or_package(imported)) and target != name}
    done: set[str] = set()

    def visit(name: str, trail: list[str]) -> None:
        if name in trail:
            pytest.fail("import circle: " + " -> ".join(trail[trail.index(name):] + [name]))
        if name in done:
            return
        for target in sorted(graph.get(name, ())):
            visit(target, trail + [name])
        done.add(name)

    for name in sorted(graph):
        visit(name, [])
