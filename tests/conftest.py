"""Fixtures shared by the test suite."""

from __future__ import annotations

import os

# The tests run many tiny tensor operations, for which one thread per process is fastest
# (and two test processes of the DDP test share the two cores); set before torch loads.
os.environ.setdefault("OMP_NUM_THREADS", "1")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

from oct_vae.data.phantom import PhantomConfig, generate_phantom  # noqa: E402

# A phantom small enough to generate in about two seconds: 24 normal patients (~90 scans)
# and 6 patients (~20 scans) per disease, enough for a 20/10/10/10 test set.
TINY_PHANTOM = {
    "n_normal_patients": 24,
    "n_patients_per_disease": 6,
    "scans_per_patient": (2, 5),
    "seed": 7,
}

# The real Kermany sample (32 scans, 8 per class), outside the repository.
KERMANY_SAMPLE = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "kermany-sample"


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a module of tiny models or single images: as fast, and immune to
    OpenMP spin-waits on a busy machine. Use with ``pytest.mark.usefixtures``."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_phantom_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Root of a tiny phantom (``train/`` and ``test/`` class folders); do not modify it."""
    root = tmp_path_factory.mktemp("tiny_phantom")
    generate_phantom(root, PhantomConfig(**TINY_PHANTOM), workers=1)
    return root


@pytest.fixture()
def kermany_sample_dir() -> Path:
    """The real 32-scan Kermany sample; skips the test when the folder is absent."""
    if not KERMANY_SAMPLE.is_dir():
        pytest.skip(f"real Kermany sample not found at {KERMANY_SAMPLE}")
    return KERMANY_SAMPLE.resolve()


@pytest.fixture(scope="session", autouse=True)
def _repository_untouched():
    """Tests write only to temporary folders: the repository's own MLflow store must not
    be created or modified by the suite."""
    store = Path(__file__).resolve().parents[1] / "mlflow.db"
    before = store.stat().st_mtime_ns if store.exists() else None
    yield
    after = store.stat().st_mtime_ns if store.exists() else None
    assert after == before, f"the test suite wrote to {store}"
