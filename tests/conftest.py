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

# The shared real Kermany scans, outside the repository: the one place tests find them.
# kermany-sample holds 32 scans (8 per class), kermany-sample-2 27 more: 59 in all, the real
# development set (docs/selection-protocol.md). Tests that need them skip when absent.
REAL_SCANS_ROOT = (Path(__file__).resolve().parents[1] / ".." / "shared" / "data").resolve()
KERMANY_SAMPLE = REAL_SCANS_ROOT / "kermany-sample"
REAL_SCAN_FOLDERS = (KERMANY_SAMPLE, REAL_SCANS_ROOT / "kermany-sample-2")


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


def skip_without_real_scans() -> None:
    """Skip the calling test when the shared real scans are absent (and only then)."""
    absent = [str(f) for f in REAL_SCAN_FOLDERS if not f.is_dir()]
    if absent:
        pytest.skip(f"real Kermany scans not found at {', '.join(absent)}")


@pytest.fixture()
def kermany_sample_dir() -> Path:
    """The real 32-scan Kermany sample; skips the test when the folder is absent."""
    skip_without_real_scans()
    return KERMANY_SAMPLE


@pytest.fixture(scope="session")
def real_scans_root() -> Path:
    """The folder holding both real samples (59 scans); skips when they are absent."""
    skip_without_real_scans()
    return REAL_SCANS_ROOT


@pytest.fixture(scope="session", autouse=True)
def _repository_untouched():
    """Tests write only to temporary folders: the repository's own MLflow stores (one per
    Kedro environment: mlflow.db, mlflow-tiny.db, ...) must not be created or modified by
    the suite."""
    root = Path(__file__).resolve().parents[1]

    def stores() -> dict[str, int]:
        return {p.name: p.stat().st_mtime_ns for p in root.glob("mlflow*.db")}

    before = stores()
    yield
    after = stores()
    assert after == before, f"the test suite wrote to the MLflow stores in {root}"
