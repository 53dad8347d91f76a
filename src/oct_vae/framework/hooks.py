"""Project hooks: what makes every result traceable to exactly the data and model that
made it (docs/guarantees.md).

* ``RunIsolationHook``: every versioned dataset is loaded at one version, fixed when the
  run starts (its own save version for what the run writes); the image arrays are checked
  against the manifest; outputs must be writable before any node runs.
* ``MissingInputsHook``: a pipeline started before its inputs exist names the command.
* ``MlflowArtifactsHook``: the exact saved version of a dataset goes to the MLflow run.
* ``PrivateMlflowHook``: kedro-mlflow's hook, recording no absolute path and no OS user.
* ``MlflowRunStateHook``: a run stopped by Ctrl-C, SIGTERM or SIGKILL never stays RUNNING.
* ``MainProcessOnlyHook``: under ``torchrun`` only rank 0 saves outputs and logs to MLflow.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import logging
import os
import shutil
import signal
import socket
import tempfile
import threading
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
from kedro.framework.hooks import hook_impl
from kedro.io import MemoryDataset
from kedro.io.core import AbstractVersionedDataset, Version
from kedro_mlflow.framework.hooks.mlflow_hook import MlflowHook

from oct_vae.data import lineage
from oct_vae.datasets import TorchCheckpointDataset
from oct_vae.framework import fileio
from oct_vae.training.distributed import is_main_process

log = logging.getLogger(__name__)

# Dataset -> the command that produces it, for the message when it is missing.
PRODUCERS = {
    "oct_manifest": "kedro run --pipeline ingest",
    "train_images": "kedro run --pipeline ingest",
    "val_images": "kedro run --pipeline ingest",
    "test_images": "kedro run --pipeline ingest",
    "vae_model": "kedro run --pipeline train",
    "test_scores": "kedro run --pipeline evaluate",
}


class MissingInputsError(RuntimeError):
    """A pipeline was started before the pipeline that produces its inputs."""


class MissingInputsHook:
    """Stop a run before it starts when a free input has never been produced, and say
    which command produces it (e.g. ``kedro run --pipeline evaluate`` with no model)."""

    @hook_impl
    def before_pipeline_run(self, run_params: dict[str, Any], pipeline, catalog) -> None:
        missing = []
        for name in sorted(pipeline.inputs()):
            if name in PRODUCERS and not catalog.exists(name):
                missing.append(name)
        if missing:
            commands = sorted({PRODUCERS[m] for m in missing}, key=list(PRODUCERS.values()).index)
            raise MissingInputsError(
                f"No saved version of {', '.join(missing)} was found, so this pipeline cannot "
                f"run yet. Run `{commands[0]}` first (or `kedro run` to run everything)."
            )


class MlflowArtifactsHook:
    """Log the file of each saved version of a dataset whose catalog metadata names an
    ``mlflow_artifact_path`` to the active MLflow run (the run kedro-mlflow opened).

    kedro-mlflow's ``MlflowArtifactDataset`` does the same by wrapping a dataset, but it
    gives the wrapped dataset a save version of its own, which Kedro 1.x rejects for
    versioned datasets; this hook logs exactly the version the catalog saved.
    """

    def __init__(self) -> None:
        self._catalog = None

    @hook_impl
    def after_catalog_created(self, catalog) -> None:
        self._catalog = catalog

    @hook_impl
    def after_dataset_saved(self, dataset_name: str, data: Any, node) -> None:
        if self._catalog is None or mlflow.active_run() is None:
            return
        dataset = self._catalog.get(dataset_name)
        artifact_path = (getattr(dataset, "metadata", None) or {}).get("mlflow_artifact_path")
        if not artifact_path:
            return
        path = _saved_path(dataset)
        if path is None:
            log.warning("cannot log %s to MLflow: no local file path", dataset_name)
            return
        mlflow.log_artifact(path, artifact_path)


def _saved_path(dataset) -> str | None:
    version = getattr(dataset, "_version", None)
    if version is not None:
        return str(dataset._get_versioned_path(dataset.resolve_save_version()))
    filepath = getattr(dataset, "_filepath", None)
    return str(filepath) if filepath is not None else None


# ------------------------------------------------------------------------ run isolation
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
        source = Path(str(dataset._get_load_path()))
        self._scorer_tmp = Path(tempfile.mkdtemp(prefix="oct-vae-model-"))
        target = self._scorer_tmp / source.name
        shutil.copyfile(source, target)
        catalog[SCORER_CHECKPOINT] = TorchCheckpointDataset(str(target))

    @hook_impl(trylast=True)
    def on_pipeline_error(self) -> None:
        self._drop_scorer_copy()

    def _drop_scorer_copy(self) -> None:
        if self._scorer_tmp is not None:
            shutil.rmtree(self._scorer_tmp, ignore_errors=True)
            self._scorer_tmp = None

    def _check_images(self, catalog, name: str, images: np.ndarray) -> None:
        version = str(catalog.get(name).resolve_load_version())
        manifest_ds = catalog.get("oct_manifest")
        manifest_version = str(manifest_ds.resolve_load_version()) if catalog.exists(
            "oct_manifest"
        ) else None
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
        self._isolation._drop_scorer_copy()


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
        if not isinstance(dataset, AbstractVersionedDataset) or not dataset._version:
            continue
        save = dataset._version.save or run_id
        if name in outputs:
            load = save
        elif dataset._version.load:
            load = dataset._version.load
        else:
            dataset._clear_version_cache()
            if not dataset.exists():
                continue  # MissingInputsHook names the command that makes it
            load = dataset.resolve_load_version()
        # Kedro has no public setter: a fixed Version is what --load-versions would give.
        dataset._version = Version(load, save)
        dataset._clear_version_cache()
        versions[name] = str(load)
    return versions


def check_outputs_writable(pipeline, catalog, project_root: Path) -> None:
    """Create the folder of every file output (and the checkpoint folder), and write a
    probe file there, so an unwritable folder stops the run before any work is done.

    Raises:
        OSError: Naming the dataset, the folder and the OS reason.
    """
    folders: dict[Path, str] = {}
    for name in sorted(pipeline.all_outputs()):
        dataset = catalog.get(name)
        path = getattr(dataset, "_filepath", None) or getattr(dataset, "_path", None)
        if path is None or "://" in str(path):
            continue
        path = Path(str(path))
        versioned = isinstance(dataset, AbstractVersionedDataset) and bool(dataset._version)
        folders.setdefault(path if versioned or not path.suffix else path.parent, name)
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


def _sweep_temp_files(folder: Path) -> None:
    """Remove temporary files left by writers that died (never a live writer's)."""
    removed = fileio.sweep_stale_temp_files(folder)
    if removed:
        log.info("removed %d temporary files left by interrupted writes", len(removed))


# ----------------------------------------------------------------------------- MLflow
# Parameters whose values are paths outside the project's control; recorded redacted.
PATH_PARAMS = ("score.input_dir", "raw_dir", "real_dir")
# Set this to record a user name in MLflow (mlflow.user); by default none is recorded.
USER_ENV = "OCT_VAE_MLFLOW_USER"
ANONYMOUS_USER = "oct-vae"


def redact_path(value: Any) -> Any:
    """A path given by the user, as MLflow may record it: only a short fingerprint (the
    folder and file names of clinical data can carry patient identifiers)."""
    if not value:
        return value
    digest = hashlib.sha1(str(value).encode()).hexdigest()[:12]
    return f"<path sha1:{digest}>"


def _redact_params(params: dict[str, Any]) -> dict[str, Any]:
    out = dict(params)
    for key in PATH_PARAMS:
        if key in out:
            out[key] = redact_path(out[key])
        head, _, tail = key.partition(".")
        if tail and isinstance(out.get(head), dict) and tail in out[head]:
            out[head] = {**out[head], tail: redact_path(out[head][tail])}
    return out


def setup_lock_path(project_path: str | os.PathLike) -> Path:
    """The lock file that serialises MLflow store setup for one project on this machine."""
    return fileio.machine_lock_path("mlflow-setup", project_path)


class PrivateMlflowHook(MlflowHook):
    """kedro-mlflow's hook, recording no absolute path and no OS user name by default.

    kedro-mlflow tags the run with every run parameter (the project path, runtime params
    such as ``score.input_dir``) and logs every node parameter; MLflow tags the run with
    the OS user and the script's path. Here the project path is dropped, path parameters
    are reduced to a fingerprint, and ``mlflow.user`` is ``$OCT_VAE_MLFLOW_USER`` or
    ``oct-vae`` (through MLflow's ``MLFLOW_RUN_CONTEXT``). Replaces the plugin's own hook
    (settings.py: ``DISABLE_HOOKS_FOR_PLUGINS``).
    """

    @hook_impl
    def after_context_created(self, context) -> None:
        if not is_main_process():  # a torchrun rank other than 0 never opens the store
            self._is_mlflow_enabled, self.run_id = False, None
            return
        # kedro-mlflow opens the store here (a new SQLite store is created and migrated)
        # and creates the experiment if it is missing. Two runs of one project that start
        # together would both migrate the new database, or both create the experiment,
        # and one would fail; runs on this machine therefore do this one at a time.
        with fileio.interprocess_lock(setup_lock_path(context.project_path)):
            super().after_context_created(context=context)

    @hook_impl
    def before_pipeline_run(self, run_params: dict[str, Any], pipeline, catalog) -> None:
        if not is_main_process():  # a torchrun rank other than 0: rank 0 logs the run
            self._is_mlflow_enabled, self.run_id = False, None
            return
        safe = {k: v for k, v in run_params.items() if k != "project_path"}
        if run_params.get("runtime_params"):
            safe["runtime_params"] = _redact_params(run_params["runtime_params"])
        context = json.loads(os.environ.get("MLFLOW_RUN_CONTEXT") or "{}")
        context.update(
            {
                "mlflow.user": os.environ.get(USER_ENV) or ANONYMOUS_USER,
                "mlflow.source.name": "kedro run",
            }
        )
        before = os.environ.get("MLFLOW_RUN_CONTEXT")
        os.environ["MLFLOW_RUN_CONTEXT"] = json.dumps(context)
        try:
            super().before_pipeline_run(run_params=safe, pipeline=pipeline, catalog=catalog)
        finally:
            if before is None:
                os.environ.pop("MLFLOW_RUN_CONTEXT", None)
            else:
                os.environ["MLFLOW_RUN_CONTEXT"] = before

    @hook_impl
    def before_node_run(self, node, catalog, inputs: dict[str, Any], is_async: bool) -> None:
        safe = {}
        for key, value in inputs.items():
            name = key.removeprefix("params:")
            if key.startswith("params:") and name in PATH_PARAMS:
                value = redact_path(value)
            elif key.startswith("params:") and isinstance(value, dict):
                value = {
                    k: redact_path(v) if f"{name}.{k}" in PATH_PARAMS else v
                    for k, v in value.items()
                }
            elif key == "parameters":
                value = _redact_params(value)
            safe[key] = value
        super().before_node_run(node=node, catalog=catalog, inputs=safe, is_async=is_async)


# Tags that tie a run to its process, so that a run whose process was killed (SIGKILL:
# nothing in the process can react) is marked KILLED by the next run on the machine.
PID_TAG = "oct_vae.pid"
HOST_TAG = "oct_vae.host"


def _host_id() -> str:
    return hashlib.sha1(socket.gethostname().encode()).hexdigest()[:12]


class MlflowRunStateHook:
    """A run ends FINISHED, FAILED or KILLED; never RUNNING.

    * An exception in a node: kedro-mlflow ends the run FAILED.
    * Ctrl-C (KeyboardInterrupt) or SIGTERM (turned into ``SystemExit(143)``, so finally
      blocks run): at exit, a run still open is ended KILLED.
    * SIGKILL: the next run in the same project on the same machine ends it KILLED.

    Also records in the run's tags the version of every dataset it read
    (``input_version.<dataset>``) and its run id (``kedro_run_id``).
    """

    def __init__(self) -> None:
        self._run_id: str | None = None  # the MLflow run of a pipeline still running
        self._atexit = False
        self._previous_sigterm = None

    @hook_impl(trylast=True)  # after kedro-mlflow has started the run
    def before_pipeline_run(self, run_params: dict[str, Any], pipeline, catalog) -> None:
        run = mlflow.active_run()
        if run is None:
            return
        self._run_id = run.info.run_id
        _end_dead_runs(run.info.experiment_id, self._run_id)
        info = catalog.load(RUN_INFO) if RUN_INFO in catalog else {}
        run_id = str(run_params["run_id"])
        tags = {PID_TAG: str(os.getpid()), HOST_TAG: _host_id()}
        for name, version in info.get("versions", {}).items():
            if version != run_id:  # what this run wrote carries its own run id
                tags[f"input_version.{name}"] = version
        mlflow.set_tags(tags)
        if not self._atexit:
            atexit.register(self._end_if_open)
            self._atexit = True
        if threading.current_thread() is threading.main_thread():
            self._previous_sigterm = signal.signal(signal.SIGTERM, _sigterm_to_exit)

    @hook_impl(trylast=True)  # after kedro-mlflow has ended the run
    def after_pipeline_run(self) -> None:
        self._close("FINISHED")

    @hook_impl(trylast=True)  # after kedro-mlflow has ended the run as FAILED
    def on_pipeline_error(self) -> None:
        self._close("FAILED")

    def _close(self, status: str) -> None:
        # kedro-mlflow reopens the run at every node (nested), so copies of it stay on
        # MLflow's active-run stack after it ended; MLflow's exit handler would end them
        # again, as FINISHED, whatever happened. Pop them here.
        while (run := mlflow.active_run()) is not None and run.info.run_id == self._run_id:
            mlflow.end_run(status)
        self._run_id = None
        if self._previous_sigterm is not None:
            signal.signal(signal.SIGTERM, self._previous_sigterm)
            self._previous_sigterm = None

    def _end_if_open(self) -> None:
        """At interpreter exit: the pipeline neither finished nor failed (Ctrl-C, SIGTERM)."""
        if self._run_id is not None:
            log.warning("run %s was interrupted; ending it as KILLED", self._run_id)
            mlflow.MlflowClient().set_terminated(self._run_id, "KILLED")
            self._close("KILLED")


def _sigterm_to_exit(signum, frame) -> None:
    raise SystemExit(128 + signum)


def _end_dead_runs(experiment_id: str, current: str) -> None:
    """End as KILLED the RUNNING runs of this machine whose process no longer exists."""
    client = mlflow.MlflowClient()
    host = _host_id()
    for run in client.search_runs(
        [experiment_id], filter_string="attributes.status = 'RUNNING'", max_results=200
    ):
        tags = run.data.tags
        if run.info.run_id == current or tags.get(HOST_TAG) != host or PID_TAG not in tags:
            continue
        if not fileio.pid_alive(int(tags[PID_TAG])):
            client.set_tag(run.info.run_id, "oct_vae.end_reason", "process gone (killed)")
            client.set_terminated(run.info.run_id, "KILLED")
            log.warning("run %s was left RUNNING by a killed process; ended as KILLED",
                        run.info.run_id)


# ---------------------------------------------------------------------------- torchrun
class MainProcessOnlyHook:
    """Under ``torchrun`` every rank runs the whole Kedro session, and its train node joins
    one data-parallel job (``oct_vae.training.distributed``). Every rank then holds the same model;
    only rank 0 should save it. On the other ranks this hook turns every output of the
    pipeline into a memory dataset before anything runs, so they train, hand results from
    node to node in memory, and write nothing; ``PrivateMlflowHook`` opens no MLflow run
    there. Rank 0 (and any single-process run) is left as it is.
    """

    @hook_impl(tryfirst=True)  # before RunIsolationHook fixes versions, before MLflow starts
    def before_pipeline_run(self, run_params: dict[str, Any], pipeline, catalog) -> None:
        if is_main_process():
            return
        catalog_log = logging.getLogger("kedro.io.data_catalog")
        level = catalog_log.level
        catalog_log.setLevel(logging.ERROR)  # no "Replacing dataset" line per output
        try:
            for name in sorted(pipeline.all_outputs()):
                if not isinstance(catalog.get(name), MemoryDataset):
                    catalog[name] = MemoryDataset(copy_mode="assign")
        finally:
            catalog_log.setLevel(level)
        log.info("rank %s of a torchrun job: outputs stay in memory; rank 0 saves them",
                 os.environ.get("RANK"))

