"""The batched metrics dataset logs exactly what kedro-mlflow's history dataset logs
(names, values, steps), in a few requests instead of one request per number."""

from __future__ import annotations

import mlflow
import pytest
from kedro.io.core import DatasetError
from kedro_mlflow.io.metrics import MlflowMetricsHistoryDataset
from mlflow.tracking import MlflowClient

from oct_vae.datasets import MlflowMetricsBatchDataset, mlflow_metrics

REPORT = {f"auc_score{i}_group{j}": {"value": 0.5 + i / 1000 + j / 10, "step": 0}
          for i in range(450) for j in range(5)}
HISTORY = {"train_total": [{"value": 10.0 - e, "step": e} for e in range(40)]}


@pytest.fixture()
def store(tmp_path, monkeypatch):
    """A fresh SQLite store with its own experiment. The experiment is named on every
    run: an earlier test in the same worker may have left MLflow's process-wide
    active experiment pointing at an id this store does not have."""
    monkeypatch.delenv("MLFLOW_EXPERIMENT_ID", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    yield MlflowClient().create_experiment("metrics-batch")
    while mlflow.active_run():
        mlflow.end_run()
    mlflow.set_tracking_uri(None)


def _logged(run_id: str) -> dict[str, list[tuple[int, float]]]:
    client = MlflowClient()
    keys = client.get_run(run_id).data.metrics
    return {k: sorted((m.step, m.value) for m in client.get_metric_history(run_id, k))
            for k in keys}


def test_the_same_metrics_as_kedro_mlflow_in_three_requests(store, monkeypatch):
    calls = []
    real = MlflowClient.log_batch
    monkeypatch.setattr(MlflowClient, "log_batch",
                        lambda self, run_id, **kw: calls.append(len(kw["metrics"]))
                        or real(self, run_id, **kw))
    with mlflow.start_run(experiment_id=store) as ours:
        MlflowMetricsBatchDataset(prefix="").save({**REPORT, **HISTORY})
    monkeypatch.undo()
    with mlflow.start_run(experiment_id=store) as theirs:
        MlflowMetricsHistoryDataset(prefix="").save({**REPORT, **HISTORY})
    assert calls == [1000, 1000, 290]  # 2,250 + 40 values, MLflow's 1,000 per request
    assert _logged(ours.info.run_id) == _logged(theirs.info.run_id)
    assert len(_logged(ours.info.run_id)) == 2251
    assert _logged(ours.info.run_id)["train_total"] == [(e, 10.0 - e) for e in range(40)]


def test_logging_switched_off_logs_nothing(store):
    dataset = MlflowMetricsBatchDataset(prefix="")
    dataset._logging_activated = False  # what kedro-mlflow does for an untracked pipeline
    with mlflow.start_run(experiment_id=store) as run:
        dataset.save(REPORT)
    assert _logged(run.info.run_id) == {}


def test_no_active_run_is_an_error_not_a_new_run(store):
    with pytest.raises(DatasetError, match="no active MLflow run"):
        MlflowMetricsBatchDataset(prefix="").save(REPORT)
    assert mlflow_metrics.BATCH == 1000
    assert MlflowClient().search_runs(["0", store]) == []
