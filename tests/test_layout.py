"""The rules of the layout (docs/architecture.md), checked on the source itself: no import
cycle, framework-free science modules, short modules and functions, thin nodes, a dict of
inputs for wide nodes, a small package root, no benchmark in the package."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "oct_vae"
# The science: imports numpy, torch and small numeric libraries, never Kedro, MLflow or pandas.
SCIENCE = (
    "vae.config", "vae.model", "vae.losses", "vae.scores", "vae.checkpoint", "vae.detector",
    "training.config", "training.trainer", "training.steps", "training.batches",
    "training.loss_log", "training.checkpointing", "training.distributed",
    "training.batchnorm", "training.device", "training.fast_path", "training.cuda_graph",
    "data.lineage", "data.imaging", "data.kermany",
    "data.phantom", "data.phantom.config", "data.phantom.fitted", "data.phantom.anatomy",
    "data.phantom.scene", "data.phantom.lesions", "data.phantom.render",
    "data.phantom.generate", "data.phantom.synthetic",
    "evaluation.metrics", "serving.scoring", "serving.cache",
    "framework.params", "framework.parameter_errors", "framework.fileio", "progress",
)
FRAMEWORKS = ("kedro", "kedro_mlflow", "kedro_datasets", "mlflow", "pandas")
MAX_LINES = 40
MAX_MODULE_LINES = 400
MAX_NODE_BODY = 25
MAX_ROOT_MODULES = 10
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


def test_modules_are_short():
    long = [f"{p.relative_to(SRC)}: {n} lines" for p in sorted(PACKAGE.rglob("*.py"))
            if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES]
    assert not long, f"modules over {MAX_MODULE_LINES} lines:\n" + "\n".join(long)


def test_the_package_root_holds_few_modules():
    root = sorted(p.name for p in PACKAGE.glob("*.py") if p.name != "__init__.py")
    assert len(root) <= MAX_ROOT_MODULES, f"{len(root)} modules at the root: {root}"
    for kedro_file in ("settings.py", "pipeline_registry.py", "__main__.py"):
        assert kedro_file in root, f"Kedro expects {kedro_file} at the package root"


def _node_calls(tree: ast.Module):
    """Every ``Node(...)``/``node(...)`` call of a pipeline module."""
    for call in ast.walk(tree):
        if isinstance(call, ast.Call):
            name = getattr(call.func, "id", getattr(call.func, "attr", ""))
            if name in ("Node", "node"):
                yield call


def _node_functions() -> dict[str, tuple[ast.FunctionDef, int]]:
    """The functions of ``pipelines/*/nodes.py`` that a pipeline uses as a node, with
    the number of inputs the pipeline gives each."""
    out = {}
    for pipeline in sorted((PACKAGE / "pipelines").glob("*/pipeline.py")):
        nodes_py = pipeline.with_name("nodes.py")
        defs = {f.name: f for f in ast.parse(nodes_py.read_text()).body
                if isinstance(f, ast.FunctionDef)}
        for call in _node_calls(ast.parse(pipeline.read_text())):
            func = call.args[0] if call.args else next(
                k.value for k in call.keywords if k.arg == "func")
            name = getattr(func, "id", getattr(func, "attr", None))
            inputs = call.args[1] if len(call.args) > 1 else next(
                (k.value for k in call.keywords if k.arg == "inputs"), None)
            if name in defs:
                out[f"{pipeline.parent.name}.{name}"] = (defs[name], inputs)
    return out


def test_the_pipelines_use_their_nodes():
    # the two tests below would pass on an empty list: check they see the nodes
    assert len(_node_functions()) >= 15


def test_node_bodies_are_thin():
    fat = []
    for name, (func, _) in _node_functions().items():
        body = func.body[1:] if ast.get_docstring(func) else func.body
        lines = body[-1].end_lineno - body[0].lineno + 1
        if lines > MAX_NODE_BODY:
            fat.append(f"{name}: {lines} lines")
    assert not fat, f"node bodies over {MAX_NODE_BODY} lines:\n" + "\n".join(fat)


def test_wide_nodes_take_a_dict_of_inputs():
    wide = []
    for name, (_, inputs) in _node_functions().items():
        if isinstance(inputs, (ast.List, ast.Tuple)) and len(inputs.elts) >= 6:
            wide.append(f"{name}: a list of {len(inputs.elts)} inputs")
    assert not wide, "nodes with six or more inputs take a dict:\n" + "\n".join(wide)
