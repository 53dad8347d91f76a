"""The served model's network: built once per loaded checkpoint, not once per request.

kedro-mlflow's ``KedroPipelineModel.predict`` deep-copies its whole catalog, checkpoint
included, on every request (``runtime_catalog = deepcopy(self.loaded_catalog)`` in
``kedro_mlflow/mlflow/kedro_pipeline_model.py``; ``copy_mode="assign"`` does not change
that), so each request brings a new but equal checkpoint: its identity says nothing.

A checkpoint loaded from disk (``TorchCheckpointDataset.load``) is therefore a
:class:`LoadedCheckpoint`: a plain ``dict`` of the same content that also carries

* ``fingerprint``: SHA-256 of its content, computed once, when it is loaded;
* ``detectors``: a :class:`DetectorCache`, shared by the checkpoint and all its copies.

:func:`detector_for` builds the network on the first request and hands the same detector
to every later request that brings a copy of that checkpoint: no weight is compared or
hashed per request. A checkpoint with other content (another file, a retrained model)
has another fingerprint and cache, so it never gets this one's network. A loaded
checkpoint is read-only: to change one, build a new ``dict`` (a plain ``dict`` is scored
with a network of its own every time). Imports only numpy and torch.
"""

from __future__ import annotations

import copy
import hashlib
import threading
from typing import Any

import numpy as np
import torch

from oct_vae.vae.detector import AnomalyDetector


class DetectorCache:
    """The detectors of one checkpoint, one per device, keyed by (fingerprint, device).

    Thread-safe: the model server scores concurrent requests in threads.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._detectors: dict[tuple[str, str], AnomalyDetector] = {}

    def get(
        self, checkpoint: dict[str, Any], fingerprint: str, device: torch.device | str
    ) -> AnomalyDetector:
        """The detector of ``checkpoint`` (whose fingerprint is ``fingerprint``) on
        ``device``; built on the first call for that key."""
        key = (fingerprint, str(torch.device(device)))
        with self._lock:
            detector = self._detectors.get(key)
            if detector is None:
                detector = AnomalyDetector(checkpoint, device)
                self._detectors[key] = detector
            return detector

    def __len__(self) -> int:
        return len(self._detectors)

    def clear(self) -> None:
        """Forget every detector (the next request builds its network again)."""
        with self._lock:
            self._detectors.clear()


class LoadedCheckpoint(dict):
    """A checkpoint as loaded from disk: its content, its ``fingerprint`` and the
    ``detectors`` cache, which every copy (``copy.copy``, ``copy.deepcopy``) shares.

    ``pickle`` writes it as the plain ``dict`` it holds; ``torch.save`` it as
    ``dict(checkpoint)`` (``TorchCheckpointDataset.save`` does), since a file that
    ``torch.load(..., weights_only=True)`` reads holds no class but plain containers.
    """

    fingerprint: str
    detectors: DetectorCache

    def __init__(self, content: dict[str, Any]) -> None:
        super().__init__(content)
        self.fingerprint = checkpoint_fingerprint(content)
        self.detectors = DetectorCache()

    def _sibling(self, content: dict[str, Any]) -> LoadedCheckpoint:
        clone = LoadedCheckpoint.__new__(LoadedCheckpoint)
        dict.__init__(clone, content)
        clone.fingerprint, clone.detectors = self.fingerprint, self.detectors
        return clone

    def __copy__(self) -> LoadedCheckpoint:
        return self._sibling(dict(self))

    def __deepcopy__(self, memo: dict[int, Any]) -> LoadedCheckpoint:
        return self._sibling(copy.deepcopy(dict(self), memo))

    def __reduce__(self) -> tuple[Any, ...]:
        return (dict, (dict(self),))


def detector_for(checkpoint: dict[str, Any], device: torch.device | str) -> AnomalyDetector:
    """The detector of ``checkpoint`` on ``device``: the cached one for a
    :class:`LoadedCheckpoint` (or a copy of one), a new one for any other ``dict``."""
    if isinstance(checkpoint, LoadedCheckpoint):
        return checkpoint.detectors.get(checkpoint, checkpoint.fingerprint, device)
    return AnomalyDetector(checkpoint, device)


def checkpoint_fingerprint(checkpoint: dict[str, Any]) -> str:
    """SHA-256 over a checkpoint's content: keys in order, every tensor's and array's
    dtype, shape and bytes, every other value's type and ``repr``."""
    digest = hashlib.sha256()
    _feed(digest, checkpoint)
    return digest.hexdigest()


def _feed(digest: Any, value: Any) -> None:
    if isinstance(value, torch.Tensor):
        data = value.detach().to("cpu").contiguous()
        digest.update(f"tensor {data.dtype} {tuple(data.shape)}\n".encode())
        digest.update(data.reshape(-1).view(torch.uint8).numpy())
    elif isinstance(value, np.ndarray):
        digest.update(f"array {value.dtype.str} {value.shape}\n".encode())
        digest.update(np.ascontiguousarray(value).tobytes())
    elif isinstance(value, dict):
        digest.update(f"dict {len(value)}\n".encode())
        for key, item in value.items():
            _feed(digest, key)
            _feed(digest, item)
    elif isinstance(value, (list, tuple)):
        digest.update(f"{type(value).__name__} {len(value)}\n".encode())
        for item in value:
            _feed(digest, item)
    else:
        digest.update(f"{type(value).__name__} {value!r}\n".encode())
