"""Run isolation: one run, one set of versions (docs/guarantees.md).

``RunIsolationHook`` fixes the version of every versioned dataset a run touches
(:func:`pin_versions`), checks the image arrays against the manifest, and stops the run
before any node when an output cannot be written (:func:`check_outputs_writable`).
``ScorerCopyCleanupHook`` removes the copy of the scorer checkpoint that kedro-mlflow packed.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from kedro.framework.hooks import hook_impl
from kedro.io.core import AbstractVersionedDataset

from oct_vae.data import lineage
from oct_vae.datasets import TorchCheckpointDataset
from oct_vae.framework import fileio
from oct_vae.framework.adapters import kedro as kedro_adapter
from oct_vae.framework.adapters import kedro_datasets as kedro_datasets_adapter

log = logging.getLogger(__name__)

IMAGE_DATASETS = ("train_images", "val_images", "test_images")
# The per-run information nodes may take (a MemoryDataset filled when the run starts).
RUN_INFO = "run_info"
# The inference pipeline's checkpoint, packed into the served model.
SCORER_CHECKPOINT = "scorer_checkpoint"


class RunIsolationHook:
    """One run, one set of versions.

    Kedro loads the *latest* version of a versioned dataset by default, so a run that
    loads what it saved, while another run saves the same dataset, can pair its own
    results with the other run's model. Before any node runs, this hook fixes the load
    version of every versioned dataset the pipeline touches:

    * a dataset the run writes is loaded at the version this run saves (its run id);
    * a dataset made by an earlier run is loaded at its latest version *at start*.

    The versions go into ``run_info`` (for nodes and reports) and into MLflow tags
    (``MlflowRunStateHook``). Image arrays are checked against the manifest rows they
    claim to hold (``oct_vae.data.lineage``), and every output folder must be writable.
    """

    def __init__(self) -> None:
        self._catalog = None
        self._checked: set[tuple[str, str]] = set()
        self._scorer_tmp: Path | None = None

    @hook_impl
    def after_catalog_created(self, catalog) -> None:
        self._catalog = catalog

    @hook_impl(tryfirst=True)
    def before_pipeline_run(self, run_params: dict[str, Any], pipeline, catalog) -> None:
        root = Path(run_params["project_path"])
        run_id = str(run_params["run_id"])
        self._checked = set()
        _sweep_temp_files(root / "data")
        versions = pin_versions(pipeline, catalog, run_id)
        check_outputs_writable(pipeline, catalog, root)
        info = {"run_id": run_id, "project_root": root.as_posix(), "versions": versions}
        if RUN_INFO in catalog:
            catalog.save(RUN_INFO, info)
        else:
            catalog[RUN_INFO] = info
        for name in sorted(set(IMAGE_DATASETS) & pipeline.inputs()):
            if catalog.exists(name):  # a missing one: MissingInputsHook names the command
                self._check_images(catalog, name, catalog.load(name))
        log.info(
            "run %s reads %s",
            run_id,
            ", ".join(f"{k}@{v}" for k, v in versions.items() if v != run_id) or "no saved data",
        )

    @hook_impl
    def after_dataset_loaded(self, dataset_name: str, data: Any) -> None:
        if dataset_name in IMAGE_DATASETS and self._catalog is not None:
            self._check_images(self._catalog, dataset_name, data)

    @hook_impl(tryfirst=True)
    def after_pipeline_run(self, run_params: dict[str, Any], pipeline, catalog) -> None:
        """Point ``scorer_checkpoint`` at a copy of exactly this run's version, in a neutral
        temporary folder, before kedro-mlflow packs it into the served model: it packs the
        dataset's file path (for a versioned dataset, the folder of all its versions) and
        records its URI, which must name neither the project path nor the user."""
        dataset = catalog.get(SCORER_CHECKPOINT)
        if SCORER_CHECKPOINT not in pipeline.all_outputs() or not isinstance(
            dataset, AbstractVersionedDataset
        ):
            return  # not trained in this run, or not saved (a torchrun rank other than 0)
        source = kedro_adapter.load_path(dataset)
        self._scorer_tmp = Path(tempfile.mkdtemp(prefix="oct-vae-model-"))
        target = self._scorer_tmp / source.name
        shutil.copyfile(source, target)
        catalog[SCORER_CHECKPOINT] = TorchCheckpointDataset(str(target))

    @hook_impl(trylast=True)
    def on_pipeline_error(self) -> None:
        self.drop_scorer_copy()

    def drop_scorer_copy(self) -> None:
        """Remove the temporary copy of the scorer checkpoint, if there is one."""
        if self._scorer_tmp is not None:
            shutil.rmtree(self._scorer_tmp, ignore_errors=True)
            self._scorer_tmp = None

    def _check_images(self, catalog, name: str, images: np.ndarray) -> None:
        version = str(catalog.get(name).resolve_load_version())
        has_manifest = catalog.exists("oct_manifest")
        manifest_version = (
            str(catalog.get("oct_manifest").resolve_load_version()) if has_manifest else None
        )
        key = (name, f"{version}|{manifest_version}")
        if key in self._checked:
            return
        if manifest_version is None:
            raise lineage.LineageError(
                f"{name} has no oct_manifest to be checked against. "
                f"Run `{lineage.INGEST_COMMAND}`."
            )
        manifest = catalog.load("oct_manifest")
        rows = manifest[manifest["split"] == name.removesuffix("_images")].sort_values("row")
        lineage.check_rows(
            name, np.asarray(images), rows["sha1"].astype(str).tolist(), rows["path"].tolist()
        )
        self._checked.add(key)


class ScorerCopyCleanupHook:
    """Removes the temporary copy of the scorer checkpoint once kedro-mlflow logged it."""

    def __init__(self, isolation: RunIsolationHook) -> None:
        self._isolation = isolation

    @hook_impl(trylast=True)
    def after_pipeline_run(self) -> None:
        self._isolation.drop_scorer_copy()


def pin_versions(pipeline, catalog, run_id: str) -> dict[str, str]:
    """Fix the load version of every versioned dataset of ``pipeline`` (see
    ``RunIsolationHook``); versions given with ``--load-versions`` are kept.

    Returns:
        Dataset name -> the version this run loads (its own run id for its outputs).
    """
    outputs = pipeline.all_outputs()
    versions: dict[str, str] = {}
    for name in sorted(pipeline.datasets()):
        if name.startswith("params:") or name == "parameters":
            continue
        dataset = catalog.get(name)
        pinned = kedro_adapter.version(dataset)
        if pinned is None:
            continue
        save = pinned.save or run_id
        load = save if name in outputs else _load_version(dataset, pinned.load)
        if load is None:
            continue  # never saved: MissingInputsHook names the command that makes it
        kedro_adapter.pin_version(dataset, load, save)
        versions[name] = str(load)
    return versions


def _load_version(dataset, given: str | None) -> str | None:
    """``given`` (``--load-versions``), else the latest version now (``None``: none)."""
    if given:
        return given
    kedro_adapter.forget_resolved_versions(dataset)
    return dataset.resolve_load_version() if dataset.exists() else None


def check_outputs_writable(pipeline, catalog, project_root: Path) -> None:
    """Create the folder of every file output (and the checkpoint folder), and write a
    probe file there, so an unwritable folder stops the run before any work is done.

    Raises:
        OSError: Naming the dataset, the folder and the OS reason.
    """
    folders: dict[Path, str] = {}
    for name in sorted(pipeline.all_outputs()):
        folder = _output_folder(catalog.get(name))
        if folder is not None:
            folders.setdefault(folder, name)
    if "train_vae" in {n.name for n in pipeline.nodes} and "params:train" in catalog:
        ckpt = catalog.load("params:train").get("checkpoint_dir")
        if ckpt:
            ckpt = Path(str(ckpt)).expanduser()
            folders.setdefault(ckpt if ckpt.is_absolute() else project_root / ckpt, "checkpoints")
    for folder, name in folders.items():
        try:
            fileio.check_writable(folder, name)
        except OSError as exc:
            raise type(exc)(
                exc.errno, f"{exc.strerror}. Nothing was run; free the disk or fix the folder."
            ) from exc


def _output_folder(dataset) -> Path | None:
    """The local folder a dataset writes into (``None``: not a local file or folder)."""
    path = kedro_adapter.filepath(dataset) or kedro_datasets_adapter.partition_folder(dataset)
    if path is None or "://" in str(path):
        return None
    path = Path(str(path))
    versioned = kedro_adapter.version(dataset) is not None
    return path if versioned or not path.suffix else path.parent


def _sweep_temp_files(folder: Path) -> None:
    """Remove temporary files left by writers that died (never a live writer's)."""
    removed = fileio.sweep_stale_temp_files(folder)
    if removed:
        log.info("removed %d temporary files left by interrupted writes", len(removed))
