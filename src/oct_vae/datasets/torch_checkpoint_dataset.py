"""``TorchCheckpointDataset``: a checkpoint (config, tensors, metadata); never pickled code."""

from __future__ import annotations

from typing import Any

import torch

from oct_vae.datasets.versioned import LocalVersionedDataset
from oct_vae.serving.cache import LoadedCheckpoint


class TorchCheckpointDataset(LocalVersionedDataset):
    """Saves a checkpoint dict with ``torch.save`` atomically; loads it with ``weights_only=True``.

    The checkpoint may hold only tensors and plain Python containers/scalars (the model
    config, the ``state_dict``, training metadata): loading never executes code. A loaded
    checkpoint is a ``LoadedCheckpoint`` (``oct_vae.serving.cache``): a ``dict`` carrying
    its fingerprint, so that the served model builds its network once, not per request.
    """

    def load(self) -> LoadedCheckpoint:
        return LoadedCheckpoint(
            torch.load(self._load_path(), map_location="cpu", weights_only=True)
        )

    def save(self, data: dict[str, Any]) -> None:
        # A LoadedCheckpoint is written as the plain dict it holds.
        self._save_atomically(dict(data), lambda tmp, d: torch.save(d, tmp))
