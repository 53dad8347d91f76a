"""Kedro datasets of the project (local files, versioned, written atomically)."""

from oct_vae.datasets.atomic import (
    AtomicCSVDataset,
    AtomicMatplotlibDataset,
    AtomicTextDataset,
)
from oct_vae.datasets.mlflow_metrics import MlflowMetricsBatchDataset
from oct_vae.datasets.npy_dataset import NpyDataset
from oct_vae.datasets.scan_folder_dataset import ScanFolderDataset
from oct_vae.datasets.torch_checkpoint_dataset import TorchCheckpointDataset

__all__ = [
    "AtomicCSVDataset",
    "AtomicMatplotlibDataset",
    "AtomicTextDataset",
    "MlflowMetricsBatchDataset",
    "NpyDataset",
    "ScanFolderDataset",
    "TorchCheckpointDataset",
]
