"""``MlflowMetricsBatchDataset``: kedro-mlflow's metrics dataset, logged in a few requests.

kedro-mlflow's ``MlflowMetricsHistoryDataset`` logs one metric per request to the tracking
store. The evaluate pipeline's report holds about 1,100 numbers (every score, group,
level and CI bound, for the test split and the real scans), so saving it took 28 s of a
run on SQLite, the same for every dataset size, and more against a remote server. This
dataset keeps the same names, values, steps and loading, and sends them with
``MlflowClient.log_batch``, up to ``BATCH`` metrics a request.
"""

from __future__ import annotations

import time
from typing import Any

from kedro.io import DatasetError
from kedro_mlflow.io.metrics import MlflowMetricsHistoryDataset
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from oct_vae.framework.adapters import kedro_mlflow as kedro_mlflow_adapter

# MLflow's limit of metrics in one log_batch request (mlflow.utils.validation).
BATCH = 1000


class MlflowMetricsBatchDataset(MlflowMetricsHistoryDataset):
    """``{name: value}`` or ``{name: [{"value", "step"}, ...]}`` to the active MLflow run,
    as metrics, in batches. Loading is kedro-mlflow's."""

    def _save(self, data: dict[str, Any]) -> None:
        if not kedro_mlflow_adapter.metrics_logging_activated(self):
            return
        try:
            run_id = self.run_id
        except DatasetError as exc:
            raise DatasetError(
                "no active MLflow run to log the metrics to; run them through "
                "`kedro run` (kedro-mlflow starts the run)"
            ) from exc
        stamp = int(time.time() * 1000)
        metrics = [Metric(key, float(value), stamp, int(step))
                   for key, value, step in kedro_mlflow_adapter.metric_tuples(self, data)]
        client = MlflowClient()
        for start in range(0, len(metrics), BATCH):
            client.log_batch(run_id, metrics=metrics[start:start + BATCH])
