"""The atomic kedro-datasets variants: same files and versions as the parents, never a partial
version under a full disk or a kill."""

from __future__ import annotations

import errno
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import fsspec
import fsspec.implementations.local as fsspec_local
import matplotlib

matplotlib.use("Agg")  # before pyplot, as oct_vae.evaluation.plots does

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402
from kedro.io import DataCatalog  # noqa: E402
from kedro.io.core import AbstractDataset, DatasetError, Version  # noqa: E402
from kedro_datasets.matplotlib import MatplotlibDataset  # noqa: E402
from kedro_datasets.pandas import CSVDataset  # noqa: E402
from kedro_datasets.partitions import PartitionedDataset  # noqa: E402
from kedro_datasets.text import TextDataset  # noqa: E402
from PIL import Image  # noqa: E402

from oct_vae.datasets import (  # noqa: E402
    AtomicCSVDataset,
    AtomicMatplotlibDataset,
    AtomicTextDataset,
    NpyDataset,
    TorchCheckpointDataset,
)
from oct_vae.framework.fileio import sweep_stale_temp_files  # noqa: E402
from tests.helpers import faults  # noqa: E402
from tests.test_fileio import run_killed, temp_files  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
V1 = "2024-01-01T00.00.00.000Z"
V2 = "2024-01-02T00.00.00.000Z"


def _table(i: int) -> pd.DataFrame:
    rng = np.random.default_rng(i)
    return pd.DataFrame(
        {
            "path": [f"test/CNV/CNV-{k}-{i}.jpeg" for k in range(300)],
            "score": rng.random(300),
            "label": ["CNV", "NORMAL", "DME"] * 100,
        }
    )


def _text(i: int) -> str:
    head = f"# AUC report {i}\n\n| score | AUC (95% CI) |\n|---|---|\n"
    return head + "| reconstruction | 0.9 ± 0.1 |\n" * 200


def _figure(i: int) -> plt.Figure:
    fig, ax = plt.subplots(figsize=(3, 2))
    ax.plot(np.arange(10) * (i + 1))
    ax.set_title(f"figure {i}")
    return fig


@dataclass(frozen=True)
class Case:
    atomic: type[AbstractDataset]
    parent: type[AbstractDataset]
    name: str
    make: Callable[[int], Any]
    kwargs: dict[str, Any] = field(default_factory=dict)

    def dataset(self, root: Path, save: str | None = None, parent: bool = False, **extra: Any):
        cls = self.parent if parent else self.atomic
        return cls(
            filepath=str(root / self.name), version=Version(None, save), **self.kwargs, **extra
        )

    def loadable(self) -> bool:
        return self.parent is not MatplotlibDataset


CASES = {
    "csv": Case(
        AtomicCSVDataset,
        CSVDataset,
        "auc_table.csv",
        _table,
        {"save_args": {"sep": ";", "float_format": "%.6f"}, "load_args": {"sep": ";"}},
    ),
    "text": Case(AtomicTextDataset, TextDataset, "auc_report.md", _text),
    "png": Case(
        AtomicMatplotlibDataset,
        MatplotlibDataset,
        "roc_curves.png",
        _figure,
        {"save_args": {"dpi": 40}},
    ),
}
case_param = pytest.mark.parametrize("case", list(CASES.values()), ids=list(CASES))


def _version_file(root: Path, case: Case, version: str) -> Path:
    return root / case.name / version / case.name


def _assert_latest_is(root: Path, case: Case, version: str, expected: bytes) -> None:
    """What the next `kedro run` sees: the versions, the latest one, its content."""
    fresh = case.dataset(root)
    assert fresh.list_versions(full_path=False) == [version]
    assert fresh.resolve_load_version() == version
    assert Path(str(fresh._get_load_path())).read_bytes() == expected
    if case.loadable():
        fresh.load()  # parses: no EmptyDataError


@case_param
def test_a_save_writes_the_parents_bytes(case: Case, tmp_path: Path) -> None:
    for parent, root in ((True, tmp_path / "parent"), (False, tmp_path / "atomic")):
        case.dataset(root, save=V1, parent=parent).save(case.make(1))
    want = _version_file(tmp_path / "parent", case, V1)
    got = _version_file(tmp_path / "atomic", case, V1)
    assert got.read_bytes() == want.read_bytes()
    assert got.stat().st_mode == want.stat().st_mode
    atomic = case.dataset(tmp_path / "atomic")
    parent = case.dataset(tmp_path / "parent", parent=True)
    assert atomic.list_versions(full_path=False) == parent.list_versions(full_path=False) == [V1]
    if case.parent is CSVDataset:
        pd.testing.assert_frame_equal(atomic.load(), parent.load())
        assert atomic.preview(nrows=3) == parent.preview(nrows=3)  # kedro-viz
    elif case.parent is TextDataset:
        assert atomic.load() == parent.load() == case.make(1)
    else:
        with Image.open(got) as image:
            assert image.format == "PNG"
            image.verify()
        assert atomic.preview() == parent.preview()  # kedro-viz
    assert temp_files(tmp_path) == []


@case_param
def test_versions_behave_as_the_parents(case: Case, tmp_path: Path) -> None:
    for parent, root in ((True, tmp_path / "parent"), (False, tmp_path / "atomic")):
        case.dataset(root, save=V1, parent=parent).save(case.make(1))
        case.dataset(root, save=V2, parent=parent).save(case.make(2))
        with pytest.raises(DatasetError, match="must not exist"):
            case.dataset(root, save=V2, parent=parent).save(case.make(3))
        auto = case.dataset(root, parent=parent)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # Kedro's save/load version consistency warning
            auto.save(case.make(4))
        versions = auto.list_versions(full_path=False)
        assert versions[1:] == [V2, V1] and versions[0] > V2
        assert auto.resolve_load_version() == versions[0]
        assert case.dataset(root).exists()
    atomic = case.dataset(tmp_path / "atomic")
    parent = case.dataset(tmp_path / "parent", parent=True)
    assert atomic.list_versions(full_path=False)[1:] == parent.list_versions(full_path=False)[1:]
    pinned = case.atomic(
        filepath=str(tmp_path / "atomic" / case.name), version=Version(V1, None), **case.kwargs
    )
    assert Path(str(pinned._get_load_path())) == _version_file(tmp_path / "atomic", case, V1)


@case_param
def test_an_injected_enospc_leaves_no_partial_version(
    case: Case, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    case.dataset(tmp_path, save=V1).save(case.make(1))
    first = _version_file(tmp_path, case, V1).read_bytes()
    with monkeypatch.context() as patched:
        faults.inject(patched, f"enospc:{case.name}")
        with pytest.raises(DatasetError) as err:
            case.dataset(tmp_path, save=V2).save(case.make(2))
    final = _version_file(tmp_path, case, V2)
    assert f"cannot write {final}: No space left on device" in str(err.value)
    assert isinstance(err.value.__cause__, OSError)
    assert err.value.__cause__.errno == errno.ENOSPC
    assert not final.parent.exists()  # not even an empty version folder
    assert temp_files(tmp_path) == []
    _assert_latest_is(tmp_path, case, V1, first)


@case_param
def test_a_disk_full_mid_write_leaves_no_partial_version(
    case: Case, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real write that stops midway (the file system's write raises ENOSPC)."""
    real_write = fsspec_local.LocalFileOpener.write

    def full_disk_write(self: Any, data: Any, *args: Any, **kwargs: Any) -> Any:
        real_write(self, data[: len(data) // 2], *args, **kwargs)
        self.f.flush()
        raise OSError(errno.ENOSPC, "No space left on device")

    for parent, root in ((True, tmp_path / "parent"), (False, tmp_path / "atomic")):
        case.dataset(root, save=V1, parent=parent).save(case.make(1))
        with monkeypatch.context() as m:
            m.setattr(fsspec_local.LocalFileOpener, "write", full_disk_write)
            with pytest.raises(DatasetError, match="No space left on device"):
                case.dataset(root, save=V2, parent=parent).save(case.make(2))
    # the fault is real: the parent leaves a partial file that becomes the latest version
    assert case.dataset(tmp_path / "parent", parent=True).resolve_load_version() == V2
    first = _version_file(tmp_path / "atomic", case, V1).read_bytes()
    _assert_latest_is(tmp_path / "atomic", case, V1, first)
    assert not (tmp_path / "atomic" / case.name / V2).exists()
    assert temp_files(tmp_path) == []


KILLED_SAVE = """
import sys
import matplotlib
matplotlib.use("Agg")
from kedro.io.core import Version
import tests.test_datasets as t
case = t.CASES[sys.argv[1]]
case.dataset(t.Path(sys.argv[2]), save=t.V2).save(case.make(2))
"""


@pytest.mark.parametrize("key", list(CASES))
def test_a_kill_mid_save_leaves_no_loadable_version(key: str, tmp_path: Path) -> None:
    case = CASES[key]
    case.dataset(tmp_path, save=V1).save(case.make(1))
    first = _version_file(tmp_path, case, V1).read_bytes()
    run_killed(KILLED_SAVE, key, str(tmp_path), fail=f"kill:{case.name}")
    version_dir = tmp_path / case.name / V2
    (left,) = temp_files(tmp_path)
    assert list(version_dir.iterdir()) == [left]  # a folder without the file: no version
    _assert_latest_is(tmp_path, case, V1, first)
    assert sweep_stale_temp_files(tmp_path) == [left]
    assert not version_dir.exists()
    _assert_latest_is(tmp_path, case, V1, first)


def test_a_folder_of_figures_appears_whole_or_not_at_all(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def figures(i: int) -> dict[str, plt.Figure]:
        return {"a.png": _figure(i), "sub/b.png": _figure(i + 1)}

    def dataset(cls: type, root: Path, save: str | None) -> AbstractDataset:
        return cls(filepath=str(root / "figs"), version=Version(None, save))

    dataset(MatplotlibDataset, tmp_path / "parent", V1).save(figures(1))
    dataset(AtomicMatplotlibDataset, tmp_path / "atomic", V1).save(figures(1))
    for name in ("a.png", "sub/b.png"):
        want = tmp_path / "parent" / "figs" / V1 / "figs" / name
        assert (tmp_path / "atomic" / "figs" / V1 / "figs" / name).read_bytes() == want.read_bytes()
    with monkeypatch.context() as patched:
        faults.inject(patched, "enospc:figs")
        with pytest.raises(DatasetError, match="No space left on device"):
            dataset(AtomicMatplotlibDataset, tmp_path / "atomic", V2).save(figures(2))
    assert not (tmp_path / "atomic" / "figs" / V2).exists() and temp_files(tmp_path) == []
    latest = dataset(AtomicMatplotlibDataset, tmp_path / "atomic", None)
    assert latest.list_versions(full_path=False) == [V1]
    # unversioned, into an existing folder: figure by figure, each atomic
    plain = AtomicMatplotlibDataset(filepath=str(tmp_path / "plain"))
    plain.save([_figure(1), _figure(2)])
    plain.save([_figure(3)])
    assert sorted(p.name for p in (tmp_path / "plain").iterdir()) == ["0.png", "1.png"]


def test_the_heatmap_partitions_are_written_atomically(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def partitioned(root: Path, inner: str) -> PartitionedDataset:
        return PartitionedDataset(path=str(root), dataset={"type": inner, "save_args": {"dpi": 40}})

    def heatmaps() -> dict[str, Any]:
        return {"t0/test/CNV/a.jpeg.png": lambda: _figure(1), "t0/test/DME/b.jpeg.png": _figure(2)}

    partitioned(tmp_path / "parent", "matplotlib.MatplotlibDataset").save(heatmaps())
    partitioned(tmp_path / "atomic", "oct_vae.datasets.AtomicMatplotlibDataset").save(heatmaps())
    for name in heatmaps():
        want = (tmp_path / "parent" / name).read_bytes()
        assert (tmp_path / "atomic" / name).read_bytes() == want
    faults.inject(monkeypatch, "enospc:b.jpeg.png")
    atomic = partitioned(tmp_path / "again", "oct_vae.datasets.AtomicMatplotlibDataset")
    with pytest.raises(DatasetError, match="No space left on device"):
        atomic.save(heatmaps())
    assert (tmp_path / "again" / "t0/test/CNV/a.jpeg.png").is_file()  # saved before the fault
    assert not (tmp_path / "again" / "t0/test/DME/b.jpeg.png").exists()
    assert temp_files(tmp_path) == []


@pytest.mark.parametrize(
    "make",
    [
        lambda root: (NpyDataset(str(root / "x.bin"), version=Version(None, V1)), np.arange(9.0)),
        lambda root: (
            TorchCheckpointDataset(str(root / "x.bin"), version=Version(None, V1)),
            {"w": torch.arange(9)},
        ),
    ],
    ids=["npy", "torch"],
)
def test_the_projects_own_datasets_leave_no_empty_version_folder(
    make: Callable[[Path], tuple[AbstractDataset, Any]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    dataset, data = make(tmp_path)
    faults.inject(monkeypatch, "enospc:x.bin")
    with pytest.raises(DatasetError, match="No space left on device"):
        dataset.save(data)
    assert list(tmp_path.rglob("*")) == [tmp_path / "x.bin"]  # the dataset folder only


def test_a_non_local_protocol_saves_through_the_parent(tmp_path: Path) -> None:
    root = f"memory://oct-vae-test/{tmp_path.name}"
    table = _table(0)
    dataset = AtomicCSVDataset(filepath=f"{root}/t.csv", version=Version(None, V1))
    dataset.save(table)
    pd.testing.assert_frame_equal(dataset.load(), table)
    assert dataset.list_versions(full_path=False) == [V1]
    text = AtomicTextDataset(filepath=f"{root}/t.md")
    text.save("hello")
    assert text.load() == "hello"
    memory = fsspec.filesystem("memory")
    memory.rm([key for key in list(memory.store) if f"/{tmp_path.name}/" in key])


ATOMIC_ENTRIES = {
    "rejected_files": "oct_vae.datasets.AtomicCSVDataset",
    "oct_manifest": "oct_vae.datasets.AtomicCSVDataset",
    "training_history": "oct_vae.datasets.AtomicCSVDataset",
    "test_scores": "oct_vae.datasets.AtomicCSVDataset",
    "auc_table": "oct_vae.datasets.AtomicCSVDataset",
    "auc_report": "oct_vae.datasets.AtomicCSVDataset",
    "auc_report_markdown": "oct_vae.datasets.AtomicTextDataset",
    "reconstruction_grid": "oct_vae.datasets.AtomicMatplotlibDataset",
    "roc_curves": "oct_vae.datasets.AtomicMatplotlibDataset",
    "score_distributions": "oct_vae.datasets.AtomicMatplotlibDataset",
    "score_results": "oct_vae.datasets.AtomicCSVDataset",
}


def test_the_catalog_writes_every_versioned_file_atomically() -> None:
    catalog = yaml.safe_load((REPO / "conf" / "base" / "catalog.yml").read_text())
    for name, type_ in ATOMIC_ENTRIES.items():
        assert catalog[name]["type"] == type_, name
    heatmaps = catalog["score_heatmaps"]["dataset"]["type"]
    assert heatmaps == "oct_vae.datasets.AtomicMatplotlibDataset"
    for name, entry in catalog.items():
        if entry.get("versioned"):
            assert entry["type"].startswith("oct_vae.datasets."), name
    built = DataCatalog.from_config({name: catalog[name] for name in ATOMIC_ENTRIES})
    for name, type_ in ATOMIC_ENTRIES.items():
        assert type(built.get(name)).__name__ == type_.rsplit(".", 1)[1]
