"""The rules of the layout (docs/architecture.md), checked on the source itself: no import
cycle, framework-free science modules, short functions, no benchmark in the package."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "oct_vae"
# The science: imports numpy, torch and small numeric libraries, never Kedro, MLflow or pandas.
SCIENCE = (
    "vae.model", "vae.losses", "vae.scores", "vae.checkpoint", "vae.detector",
    "training.trainer", "training.distributed", "training.batchnorm", "training.device",
    "training.fast_path", "training.cuda_graph",
    "data.phantom", "data.lineage", "data.imaging", "data.kermany",
    "evaluation.metrics", "serving.scoring", "framework.params", "framework.fileio",
)
FRAMEWORKS = ("kedro", "kedro_mlflow", "kedro_datasets", "mlflow", "pandas")
MAX_LINES = 60
# Longer on purpose: declarative pipeline definitions (a list of nodes).
LONG_ALLOWED = {"create_pipeline"}


def _modules() -> dict[str, ast.Module]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        name = ".".join(path.relative_to(SRC).with_suffix("").parts).removesuffix(".__init__")
        out[name] = ast.parse(path.read_text(), str(path))
    return out


def _imports(tree: ast.Module) -> set[str]:
    """Every module imported anywhere in the file, function-level imports included."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return names


def test_no_import_cycle_in_the_package():
    modules = _modules()
    graph = {m: {d for d in _imports(t) if d in modules and d != m} for m, t in modules.items()}
    # a package's __init__ re-exports its modules: importing it is importing them
    state: dict[str, int] = {}

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for d in graph[m]:
            assert state.get(d) != 1, "import cycle: " + " -> ".join([*path, d])
            if d not in state:
                visit(d, [*path, d])
        state[m] = 2

    for m in graph:
        if m not in state:
            visit(m, [m])


def test_science_modules_do_not_import_the_frameworks():
    modules = _modules()
    for name in SCIENCE:
        bad = {i for i in _imports(modules[f"oct_vae.{name}"])
               if i.split(".")[0] in FRAMEWORKS}
        assert not bad, f"oct_vae.{name} imports {sorted(bad)}"


def test_functions_fit_on_a_screen():
    long = []
    for name, tree in _modules().items():
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_LINES and node.name not in LONG_ALLOWED:
                    long.append(f"{name}.{node.name}: {lines} lines")
    assert not long, f"functions over {MAX_LINES} lines:\n" + "\n".join(long)


def test_the_benchmarks_live_outside_the_package():
    assert not (PACKAGE / "bench.py").exists()
    assert (SRC.parent / "benchmarks" / "bench_train.py").exists()
