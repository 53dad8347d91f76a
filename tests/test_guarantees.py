"""The guarantees of README "Guarantees", without a Kedro session: versions fixed at the
start of a run, lineage checks, unwritable outputs, per-run checkpoints and safe resume.
(The same guarantees through real `kedro run`s: tests/e2e/test_guarantees.py.)"""

from __future__ import annotations

import errno
from pathlib import Path

import numpy as np
import pytest
import torch
from kedro.io import DataCatalog, MemoryDataset, Version
from kedro.pipeline import Node, Pipeline

from oct_vae.data import lineage
from oct_vae.datasets import NpyDataset
from oct_vae.framework.hooks.isolation import check_outputs_writable, pin_versions
from oct_vae.pipelines.train.nodes import checkpoint_folders
from oct_vae.training.distributed import train as train_vae
from oct_vae.training.trainer import TrainConfig, Trainer
from oct_vae.vae import checkpoint
from oct_vae.vae.model import VAEConfig

pytestmark = pytest.mark.usefixtures("one_torch_thread")

EARLIER, THIS_RUN, LATER = (
    "2026-01-01T00.00.00.000Z",
    "2026-01-02T00.00.00.000Z",
    "2026-01-03T00.00.00.000Z",
)


def _npy(path: Path, save: str | None) -> NpyDataset:
    return NpyDataset(str(path), version=Version(None, save))


def _double(x: np.ndarray) -> np.ndarray:
    return x * 2


# ------------------------------------------------------------------- run isolation
def test_a_run_reads_the_versions_fixed_at_its_start_and_its_own_outputs(tmp_path):
    _npy(tmp_path / "a.npy", EARLIER).save(np.array([1]))  # made by an earlier run
    catalog = DataCatalog({"a": _npy(tmp_path / "a.npy", THIS_RUN),
                           "b": _npy(tmp_path / "b.npy", THIS_RUN)})
    pipeline = Pipeline([Node(_double, "a", "b", name="double")])

    versions = pin_versions(pipeline, catalog, THIS_RUN)
    assert versions == {"a": EARLIER, "b": THIS_RUN}

    # Another run, started later, writes both datasets while this one runs.
    _npy(tmp_path / "a.npy", LATER).save(np.array([100]))
    catalog.save("b", np.array([2]))
    _npy(tmp_path / "b.npy", LATER).save(np.array([200]))
    # Unpinned, Kedro would load the latest versions: the other run's.
    assert _npy(tmp_path / "a.npy", None).load()[0] == 100
    assert catalog.load("a")[0] == 1  # the version fixed at start
    assert catalog.load("b")[0] == 2  # what this run saved, not the later run's


def test_load_versions_given_by_the_user_are_kept(tmp_path):
    _npy(tmp_path / "a.npy", EARLIER).save(np.array([1]))
    _npy(tmp_path / "a.npy", LATER).save(np.array([2]))
    catalog = DataCatalog({"a": NpyDataset(str(tmp_path / "a.npy"), version=Version(EARLIER, None)),
                           "b": MemoryDataset()})
    versions = pin_versions(Pipeline([Node(_double, "a", "b")]), catalog, THIS_RUN)
    assert versions == {"a": EARLIER} and catalog.load("a")[0] == 1


def test_an_unwritable_output_folder_stops_the_run_before_any_node(tmp_path):
    (tmp_path / "06_models").write_text("a file where the folder should be")
    catalog = DataCatalog({"a": MemoryDataset(np.array([1])),
                           "b": _npy(tmp_path / "06_models" / "b.npy", THIS_RUN)})
    pipeline = Pipeline([Node(_double, "a", "b", name="double")])
    with pytest.raises(OSError, match=r"cannot write b to .*06_models/b.npy: .*Nothing was run"):
        check_outputs_writable(pipeline, catalog, tmp_path)


# ------------------------------------------------------------------------ lineage
def test_rows_are_checked_against_the_manifest():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (5, 32, 32), dtype=np.uint8)
    hashes, paths = lineage.row_hashes(images), [f"s/{i}.jpeg" for i in range(5)]
    lineage.check_rows("train_images", images, hashes, paths)
    with pytest.raises(lineage.LineageError, match=r"holds 4 scans but oct_manifest lists 5"):
        lineage.check_rows("train_images", images[:4], hashes, paths)
    swapped = images[[0, 2, 1, 3, 4]]
    with pytest.raises(lineage.LineageError, match=r"2 of 5 rows.*s/1.jpeg.*pipeline ingest"):
        lineage.check_rows("train_images", swapped, hashes, paths)
    # the fingerprint follows the rows and their order
    assert lineage.fingerprint(hashes) != lineage.fingerprint(lineage.row_hashes(swapped))


# ------------------------------------------------------- checkpoints and resume
MODEL = VAEConfig(image_size=32, width=4, latent_dim=8, n_blocks=3)


def _data(n=40, seed=0):
    rng = np.random.default_rng(seed)
    imgs = rng.integers(0, 60, (n, 32, 32), dtype=np.uint8)
    for i, row in enumerate(rng.integers(6, 26, n)):
        imgs[i, row - 2 : row + 2] = 220
    return imgs[: n - 12], imgs[n - 12 :]


def _cfg(**kw):
    base = dict(epochs=2, batch_size=8, lr=1e-3, seed=3, device="cpu", progress=False)
    return TrainConfig(**{**base, **kw})


def test_every_run_has_its_own_checkpoint_folder_and_resume_names_its_run(tmp_path):
    params = {"checkpoint_dir": "ckpt", "resume": False}
    run = {"project_root": str(tmp_path), "run_id": THIS_RUN}
    assert checkpoint_folders(params, run) == (str(tmp_path / "ckpt" / THIS_RUN), False)
    for earlier in (EARLIER, "2026-01-01T12.00.00.000Z"):
        (tmp_path / "ckpt" / earlier).mkdir(parents=True)
        (tmp_path / "ckpt" / earlier / "last.pt").write_bytes(b"x")
    _, source = checkpoint_folders({**params, "resume": True}, run)
    assert source == str(tmp_path / "ckpt" / "2026-01-01T12.00.00.000Z" / "last.pt")
    _, source = checkpoint_folders({**params, "resume": EARLIER}, run)
    assert source == str(tmp_path / "ckpt" / EARLIER / "last.pt")
    with pytest.raises(FileNotFoundError, match=r"train.resume='nope'.*2026-01-01T12"):
        checkpoint_folders({**params, "resume": "nope"}, run)


def test_resume_refuses_a_checkpoint_with_more_epochs_or_other_data(tmp_path):
    train, val = _data()
    train_vae(train, val, MODEL, _cfg(epochs=3, checkpoint_dir=str(tmp_path / "a")))
    last = str(tmp_path / "a" / "last.pt")
    with pytest.raises(ValueError, match=r"already trained 3 epochs, more than train.epochs=2"):
        Trainer(train, val, MODEL, _cfg(epochs=2, checkpoint_dir=str(tmp_path / "b"), resume=last))
    other_train, other_val = _data(seed=1)
    with pytest.raises(ValueError, match=r"trained on other data"):
        Trainer(other_train, other_val, MODEL,
                _cfg(epochs=4, checkpoint_dir=str(tmp_path / "b"), resume=last))


def test_a_resumed_run_writes_its_own_folder_and_records_which_run_it_continues(tmp_path):
    train, val = _data()
    full = train_vae(train, val, MODEL, _cfg(epochs=3))
    train_vae(train, val, MODEL, _cfg(epochs=2, checkpoint_dir=str(tmp_path / EARLIER)))
    before = (tmp_path / EARLIER / "last.pt").read_bytes()
    resumed = train_vae(train, val, MODEL, _cfg(
        epochs=3, checkpoint_dir=str(tmp_path / THIS_RUN), resume=str(tmp_path / EARLIER)
    ))
    assert resumed.checkpoint["metadata"]["resumed_from"] == EARLIER
    assert (tmp_path / EARLIER / "last.pt").read_bytes() == before  # left as it was
    assert torch.load(tmp_path / THIS_RUN / "last.pt", weights_only=True)["epoch"] == 3
    for k, v in full.checkpoint["state_dict"].items():
        assert torch.equal(v, resumed.checkpoint["state_dict"][k]), k
    # the model records its data and image size; no path of the machine
    meta = resumed.checkpoint["metadata"]
    assert meta["data_fingerprint"] == lineage.data_fingerprint(train, val)
    assert meta["image_size"] == 32
    assert "checkpoint_dir" not in resumed.checkpoint["train_config"]


def test_an_unwritable_checkpoint_folder_fails_before_the_first_epoch(tmp_path):
    (tmp_path / "06_models").write_text("a file where the folder should be")
    train, val = _data()
    with pytest.raises(OSError, match=r"cannot write checkpoints to .*06_models/run"):
        Trainer(train, val, MODEL, _cfg(checkpoint_dir=str(tmp_path / "06_models" / "run")))


def test_a_failed_checkpoint_write_stops_training_and_resume_is_exact(tmp_path, monkeypatch):
    train, val = _data()
    full = train_vae(train, val, MODEL, _cfg(epochs=4))
    real_save = checkpoint.save_atomically
    writes = []

    def disk_full_after_first(obj, path):
        writes.append(obj["epoch"])
        if len(writes) > 1:
            raise OSError(errno.ENOSPC, f"cannot write {path}: No space left on device")
        real_save(obj, path)

    monkeypatch.setattr(checkpoint, "save_atomically", disk_full_after_first)
    trainer = Trainer(train, val, MODEL, _cfg(epochs=4, checkpoint_dir=str(tmp_path / "r1")))
    with pytest.raises(OSError, match=r"r1/last.pt: No space left on device"):
        trainer.fit()
    # the write of epoch 2 failed: training stopped before epoch 4 ever ran
    assert len(trainer.history) <= 3 and writes[:2] == [1, 2]
    monkeypatch.setattr(checkpoint, "save_atomically", real_save)
    kept = torch.load(tmp_path / "r1" / "last.pt", weights_only=True)
    assert kept["epoch"] == 1  # the last good checkpoint, never a partial one
    resumed = train_vae(train, val, MODEL, _cfg(
        epochs=4, checkpoint_dir=str(tmp_path / "r2"), resume=str(tmp_path / "r1" / "last.pt")
    ))
    for k, v in full.checkpoint["state_dict"].items():
        assert torch.equal(v, resumed.checkpoint["state_dict"][k]), k
