"""``TorchCheckpointDataset``: a checkpoint (config, tensors, metadata); never pickled code."""

from __future__ import annotations

from typing import Any

import torch

from oct_vae.datasets.versioned import LocalVersionedDataset


class TorchCheckpointDataset(LocalVersionedDataset):
    """Saves a checkpoint dict with ``torch.save`` atomically; loads it with ``weights_only=True``.

    The checkpoint may hold only tensors and plain Python containers/scalars (the model
    config, the ``state_dict``, training metadata): loading never executes code.
    """

    def load(self) -> dict[str, Any]:
        return torch.load(self._load_path(), map_location="cpu", weights_only=True)

    def save(self, data: dict[str, Any]) -> None:
        self._save_atomically(data, lambda tmp, d: torch.save(d, tmp))
