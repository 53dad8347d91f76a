"""Contract tests of ``oct_vae.framework.adapters``: every private name of Kedro,
kedro-datasets, kedro-mlflow and MLflow that the project relies on, against the installed
libraries. After an upgrade, a failure here names the attribute that is gone or changed,
and the adapter to update; nothing else in ``src/`` touches those names."""

from __future__ import annotations

import ast
import importlib
from importlib import metadata
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import mlflow  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from kedro.io import DataCatalog, MemoryDataset, Version  # noqa: E402
from kedro.io.core import DatasetError  # noqa: E402
from kedro.pipeline import Node, Pipeline  # noqa: E402
from kedro_datasets.matplotlib import MatplotlibDataset  # noqa: E402
from kedro_datasets.pandas import CSVDataset  # noqa: E402
from kedro_datasets.partitions import PartitionedDataset  # noqa: E402
from kedro_datasets.text import TextDataset  # noqa: E402
from kedro_mlflow.framework.hooks.mlflow_hook import MlflowHook  # noqa: E402
from kedro_mlflow.mlflow import KedroPipelineModel  # noqa: E402

from oct_vae.datasets import (  # noqa: E402
    MlflowMetricsBatchDataset,
    NpyDataset,
    TorchCheckpointDataset,
)
from oct_vae.framework.adapters import kedro as kedro_adapter  # noqa: E402
from oct_vae.framework.adapters import kedro_datasets as datasets_adapter  # noqa: E402
from oct_vae.framework.adapters import kedro_mlflow as kedro_mlflow_adapter  # noqa: E402
from oct_vae.framework.adapters import mlflow as mlflow_adapter  # noqa: E402
from oct_vae.serving.cache import LoadedCheckpoint  # noqa: E402

SRC = Path(__file__).resolve().parents[2] / "src" / "oct_vae"
ADAPTERS = (kedro_adapter, datasets_adapter, kedro_mlflow_adapter, mlflow_adapter)
V1, V2, V3 = "2026-01-01T00.00.00.000Z", "2026-01-02T00.00.00.000Z", "2026-01-03T00.00.00.000Z"


def _sample(owner: str, tmp: Path):
    """An object of ``owner`` (a class, given by its import path) or the module itself."""
    samples = {
        "kedro.io.core.AbstractVersionedDataset": lambda: NpyDataset(str(tmp / "a.npy")),
        "kedro.io.core.AbstractDataset": lambda: NpyDataset(str(tmp / "a.npy")),
        "kedro_datasets.pandas.CSVDataset": lambda: CSVDataset(filepath=str(tmp / "t.csv")),
        "kedro_datasets.text.TextDataset": lambda: TextDataset(filepath=str(tmp / "t.txt")),
        "kedro_datasets.matplotlib.MatplotlibDataset": lambda: MatplotlibDataset(
            filepath=str(tmp / "f.png")
        ),
        "kedro_datasets.partitions.PartitionedDataset": lambda: PartitionedDataset(
            path=str(tmp / "parts"), dataset="pandas.CSVDataset"
        ),
        "kedro_mlflow.framework.hooks.mlflow_hook.MlflowHook": MlflowHook,
        "kedro_mlflow.mlflow.KedroPipelineModel": lambda: _pipeline_model(tmp)[0],
        "kedro_mlflow.io.metrics.MlflowMetricsHistoryDataset": lambda: MlflowMetricsBatchDataset(
            prefix=""
        ),
    }
    if owner in samples:
        return samples[owner]()
    return importlib.import_module(owner)


@pytest.mark.parametrize(
    ("adapter", "owner", "attribute"),
    [(a, owner, attr) for a in ADAPTERS for owner, attr in a.PRIVATE_NAMES],
    ids=lambda v: getattr(v, "__name__", v),
)
def test_every_private_name_the_adapters_use_exists(adapter, owner, attribute, tmp_path):
    obj = _sample(owner, tmp_path)
    library = owner.split(".")[0].replace("_", "-")
    for part in attribute.split("."):
        assert hasattr(obj, part), (
            f"{owner}.{attribute} is gone from {library} {metadata.version(library)}: "
            f"update {adapter.__name__} (and its users)"
        )
        obj = getattr(obj, part)


def test_no_module_outside_the_adapters_touches_those_names():
    """The adapters are the only place: a private name of the upstream libraries used
    anywhere else in the package is a failure naming the file and line."""
    names = {
        attr.split(".")[0]
        for a in ADAPTERS
        for _, attr in a.PRIVATE_NAMES
        if attr.startswith("_") and not attr.startswith("__")
    }
    names.discard("_path")  # also ScanFolderDataset's own attribute
    upstream = ("kedro", "kedro_datasets", "kedro_mlflow", "mlflow")
    found = []
    for path in sorted(SRC.rglob("*.py")):
        if path.parent.name == "adapters":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            where = f"{path.relative_to(SRC.parent)}:{getattr(node, 'lineno', 0)}"
            if isinstance(node, ast.Attribute) and node.attr in names:
                found.append(f"{where} .{node.attr}")
            elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in upstream:
                parts = [*node.module.split("."), *(a.name for a in node.names)]
                if any(p.startswith("_") for p in parts) or "scoring_server" in parts:
                    found.append(f"{where} from {node.module} import ...")
    assert not found, "upstream internals outside oct_vae/framework/adapters:\n" + "\n".join(found)


# ------------------------------------------------------------------------------ Kedro
def test_kedro_versions_can_be_pinned_read_and_forgotten(tmp_path):
    for version, value in ((V1, 1), (V2, 2)):
        NpyDataset(str(tmp_path / "a.npy"), version=Version(None, version)).save(np.array([value]))
    dataset = NpyDataset(str(tmp_path / "a.npy"), version=Version(None, None))
    assert kedro_adapter.version(dataset) == Version(None, None)
    assert kedro_adapter.version(MemoryDataset(1)) is None
    assert kedro_adapter.version(NpyDataset(str(tmp_path / "b.npy"))) is None
    assert kedro_adapter.filepath(dataset).as_posix() == (tmp_path / "a.npy").as_posix()
    assert dataset.resolve_load_version() == V2
    # a later version appears: Kedro's cached answer stays until it is forgotten
    NpyDataset(str(tmp_path / "a.npy"), version=Version(None, V3)).save(np.array([3]))
    assert dataset.resolve_load_version() == V2
    kedro_adapter.forget_resolved_versions(dataset)
    assert dataset.resolve_load_version() == V3

    kedro_adapter.pin_version(dataset, V1, "2026-01-04T00.00.00.000Z")
    assert kedro_adapter.version(dataset) == Version(V1, "2026-01-04T00.00.00.000Z")
    assert dataset.load()[0] == 1
    assert kedro_adapter.load_path(dataset) == tmp_path / "a.npy" / V1 / "a.npy"
    save = Path(str(kedro_adapter.save_path(dataset)))
    assert save == tmp_path / "a.npy" / "2026-01-04T00.00.00.000Z" / "a.npy"
    dataset.save(np.array([4]))
    assert kedro_adapter.saved_path(dataset) == save and np.load(save)[0] == 4
    plain = CSVDataset(filepath=str(tmp_path / "t.csv"))
    assert kedro_adapter.saved_path(plain) == tmp_path / "t.csv"
    assert kedro_adapter.saved_path(MemoryDataset(1)) is None


def test_kedro_calls_the_dataset_methods_the_project_overrides(tmp_path):
    dataset = TorchCheckpointDataset(str(tmp_path / "m.pt"), version=Version(None, V1))
    assert not dataset.exists()  # our _exists: no version saved yet
    dataset.save({"w": torch.arange(3)})
    assert dataset.exists()
    assert "m.pt" in str(dataset)  # our _describe
    loaded = dataset.load()
    assert isinstance(loaded, LoadedCheckpoint) and torch.equal(loaded["w"], torch.arange(3))


def test_the_undecorated_save_is_the_parents_own(tmp_path):
    save = kedro_adapter.undecorated_save(CSVDataset)
    assert save is not CSVDataset.save and save.__qualname__ == "CSVDataset.save"
    dataset = CSVDataset(filepath=str(tmp_path / "t.csv"), save_args={"index": False})
    save(dataset, pd.DataFrame({"a": [1]}))
    assert (tmp_path / "t.csv").read_text() == "a\n1\n"


# --------------------------------------------------------------------- kedro-datasets
def test_kedro_datasets_settings_and_file_system(tmp_path):
    dataset = CSVDataset(
        filepath=str(tmp_path / "t.csv"),
        save_args={"index": False, "sep": ";"},
        fs_args={"open_args_save": {"mode": "w", "encoding": "utf-8"}},
    )
    assert datasets_adapter.protocol(dataset) == "file"
    assert datasets_adapter.save_mode(dataset) == "w"
    assert datasets_adapter.save_args(dataset) == {"index": False, "sep": ";"}
    with datasets_adapter.open_for_save(dataset, tmp_path / "other.csv") as handle:
        handle.write("x;y\n")
    assert (tmp_path / "other.csv").read_text() == "x;y\n"
    assert datasets_adapter.exists(dataset, tmp_path / "other.csv")
    datasets_adapter.invalidate_cache(dataset)
    (tmp_path / "figs").mkdir()
    datasets_adapter.remove(dataset, tmp_path / "figs")
    assert not datasets_adapter.exists(dataset, tmp_path / "figs")
    assert datasets_adapter.save_mode(TextDataset(filepath=str(tmp_path / "t.txt"))) == "w"
    figures = MatplotlibDataset(filepath=str(tmp_path / "f"), overwrite=True)
    assert datasets_adapter.overwrite(figures) is True
    assert datasets_adapter.save_args(figures) == {}
    parts = PartitionedDataset(path=str(tmp_path / "parts"), dataset="pandas.CSVDataset")
    assert Path(datasets_adapter.partition_folder(parts)) == tmp_path / "parts"
    assert datasets_adapter.partition_folder(MemoryDataset(1)) is None
    datasets_adapter.validate_sub_path("a/b.png", str(tmp_path))
    with pytest.raises(DatasetError):
        datasets_adapter.validate_sub_path("../../escape.png", str(tmp_path))
    plt.close("all")


# ----------------------------------------------------------------- kedro-mlflow, MLflow
def _echo_parameter(checkpoint: dict, request: pd.DataFrame, a: int) -> pd.DataFrame:
    return request.assign(a=a, w=float(checkpoint["w"].sum()))


def _pipeline_model(tmp: Path) -> tuple[KedroPipelineModel, dict]:
    """A ``KedroPipelineModel`` of one node, whose checkpoint is a TorchCheckpointDataset
    (as the project's served model) and whose parameter ``a`` is 5."""
    checkpoint = TorchCheckpointDataset(str(tmp / "ckpt.pt"))
    checkpoint.save({"w": torch.tensor([1.0, 2.0])})
    catalog = DataCatalog({"ckpt": checkpoint, "params:a": MemoryDataset(5)})
    pipeline = Pipeline([Node(_echo_parameter, ["ckpt", "request", "params:a"], "answer")])
    model = KedroPipelineModel(pipeline, catalog, "request")
    return model, model.extract_pipeline_artifacts(tmp)


@pytest.fixture(scope="module")
def pyfunc_model(tmp_path_factory):
    """The one-node pipeline model saved and loaded as an MLflow model (no tracking)."""
    tmp = tmp_path_factory.mktemp("pyfunc")
    model, artifacts = _pipeline_model(tmp)
    mlflow.pyfunc.save_model(
        str(tmp / "model"), python_model=model, artifacts=artifacts, pip_requirements=[]
    )
    return mlflow.pyfunc.load_model(str(tmp / "model"))


def test_a_logged_pipeline_model_loads_its_checkpoint_and_parameters(pyfunc_model):
    # kedro-mlflow pointed the TorchCheckpointDataset at the packed file (its _filepath)
    answer = pyfunc_model.predict(pd.DataFrame({"x": [1]}))
    assert answer[["a", "w"]].values.tolist() == [[5, 3.0]]
    assert kedro_mlflow_adapter.pipeline_model_parameter(pyfunc_model, "a") == 5
    assert kedro_mlflow_adapter.pipeline_model_parameter(pyfunc_model, "missing") is None
    loaded = pyfunc_model.unwrap_python_model().loaded_catalog.load("ckpt")
    assert isinstance(loaded, LoadedCheckpoint)


def test_a_disabled_mlflow_hook_opens_no_run_and_logs_nothing():
    hook = MlflowHook()
    kedro_mlflow_adapter.disable(hook)
    assert hook.run_id is None
    node = Node(_echo_parameter, ["ckpt", "request", "params:a"], "answer")
    hook.before_node_run(node=node, catalog=DataCatalog(), inputs={"params:a": 5}, is_async=False)
    hook.after_pipeline_run(run_params={}, pipeline=Pipeline([node]), catalog=DataCatalog())
    assert mlflow.active_run() is None


def test_mlflows_scoring_app_and_its_settings(pyfunc_model, monkeypatch):
    from mlflow.environment_variables import MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT
    from mlflow.pyfunc import scoring_server

    assert mlflow_adapter.JSON_CONTENT_TYPE == scoring_server.CONTENT_TYPE_JSON
    monkeypatch.setenv(MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT.name, "60")  # restored after
    mlflow_adapter.set_request_timeout(7)
    assert MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT.get() == 7
    app = mlflow_adapter.scoring_app(pyfunc_model)
    paths = {route.path for route in app.routes}
    assert {"/invocations", "/ping", "/health", "/version"} <= paths


def test_the_run_context_replaces_mlflows_default_tags_for_the_block(monkeypatch):
    from mlflow.tracking.context.registry import resolve_tags

    monkeypatch.setenv("MLFLOW_RUN_CONTEXT", '{"team": "retina"}')
    with mlflow_adapter.run_context({"mlflow.user": "oct-vae", "mlflow.source.name": "kedro"}):
        tags = resolve_tags()
    assert tags["mlflow.user"] == "oct-vae" and tags["mlflow.source.name"] == "kedro"
    assert tags["team"] == "retina"  # what was set before is kept
    assert resolve_tags().get("mlflow.source.name") != "kedro"  # and restored
    monkeypatch.delenv("MLFLOW_RUN_CONTEXT")
    with mlflow_adapter.run_context({"mlflow.user": "oct-vae"}):
        assert resolve_tags()["mlflow.user"] == "oct-vae"
    assert resolve_tags().get("mlflow.user") != "oct-vae"
