"""Screenshots of the project's two web UIs, taken in a real (headless) browser.

Starts ``kedro viz run`` and ``kedro mlflow ui`` on 127.0.0.1 in a Kedro project that has
been run, opens both in Debian's Chromium through Playwright, checks that the pages show
the pipeline and the run, and writes (each kept under 400 kB):

    docs/images/kedro_viz.png           the pipeline graph: layers, nodes, tags (sidebar)
    docs/images/kedro_viz_preview.png   the auc_table dataset selected, with its preview
    docs/images/mlflow_run.png          the run page: AUC metrics, parameters, tags
    docs/images/mlflow_loss_curves.png  the per-epoch losses (the run's Model metrics tab)

Usage:
    python scripts/screenshots.py                 # the repository, after `kedro run`
    python scripts/screenshots.py --tiny          # a temporary copy after `kedro run --env tiny`
    python scripts/screenshots.py --project DIR --env ENV --out DIR

Needs Chromium (``apt-get install -y chromium``) and the ``playwright`` package, whose
bundled driver talks to that Chromium (``executable_path``; no browser is downloaded).
Nothing here goes to the network: kedro-viz's PyPI version check is sent to a closed
local port, and Chromium's background services are off.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import requests
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
from tests.helpers.project import (  # noqa: E402
    ServerError,
    copy_project,
    free_port,
    stop_process_group,
    wait_for_http,
)

BIN = Path(sys.executable).parent
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
MAX_PNG_BYTES = 400_000
START_S = 120
# What the pages must show for the screenshots to count.
VIZ_NODES = ["train_vae", "calibrate_model", "score_test_set", "build_auc_table", "auc_table"]
VIZ_LAYERS = ["raw", "intermediate", "primary", "model_input", "models", "model_output"]
RUN_TEXT = ["train.lr", "auc_reconstruction_all"]
LOSS_CHARTS = ["train_total", "val_total"]
# kedro-viz's saved settings: light theme, no feature tour, no minimap, parameters hidden.
VIZ_SETTINGS = {
    "nodeType": {"disabled": {"parameters": True, "task": False, "data": False}},
    "layer": {"visible": True},
    "textLabels": True,
    "visible": {
        "code": False,
        "graph": True,
        "miniMap": False,
        "sidebar": True,
        "slicing": True,
        "traceback": False,
    },
    "theme": "light",
    "isPrettyName": False,
    "showFeatureHints": False,
    "showDatasetPreviews": True,
    "orientation": "vertical",
}
# MLflow's assistant panel opens by itself on the first visit; keep it closed.
MLFLOW_SETTINGS = {
    "mlflow.assistant.panelOpen_v1": "false",
    "mlflow.assistant.fab.autoOpenedOnFirstLoad_v1": "true",
}


def offline_env() -> dict[str, str]:
    """No telemetry, venv tools first on PATH, and HTTPS (kedro-viz's PyPI version check)
    sent to a closed local port so that it fails at once instead of waiting."""
    closed = "http://127.0.0.1:9"
    return {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "KEDRO_DISABLE_TELEMETRY": "true",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "DO_NOT_TRACK": "1",
        "HTTPS_PROXY": closed,
        "https_proxy": closed,
        "NO_PROXY": "127.0.0.1,localhost",
        "no_proxy": "127.0.0.1,localhost",
    }


@contextmanager
def server(cmd: list[str], cwd: Path, ready_url: str, log: Path) -> Iterator[None]:
    """Run ``cmd`` in its own process group until ``ready_url`` answers 200; stop it after."""
    print(f"starting: {' '.join(cmd)}")
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            cmd,
            cwd=cwd,
            env=offline_env(),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        try:
            wait_for_http(proc, ready_url, log, cmd[0], timeout_s=START_S)
        except ServerError as err:
            sys.exit(str(err))
        yield
    finally:
        stop_process_group(proc)


def tiny_project(dest: Path) -> Path:
    """A copy of the project's configuration in ``dest`` after ``kedro run --env tiny``."""
    copy_project(dest)
    print(f"kedro run --env tiny in {dest} (about a minute) ...")
    subprocess.run(
        [str(BIN / "kedro"), "run", "--env", "tiny"],
        cwd=dest,
        env=offline_env(),
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return dest


def experiment_of(project: Path, env: str) -> str:
    """The MLflow experiment of Kedro environment ``env`` (``oct-vae`` for base,
    ``oct-vae-tiny`` for tiny: conf/<env>/globals.yml), from the project's mlflow.yml."""
    from kedro.config import OmegaConfigLoader

    from oct_vae.settings import CONFIG_LOADER_ARGS

    loader = OmegaConfigLoader(
        str(project / "conf"), env=env, config_patterns={"mlflow": ["mlflow*"]},
        **CONFIG_LOADER_ARGS,
    )
    return loader["mlflow"]["tracking"]["experiment"]["name"]


def latest_run(url: str, experiment: str) -> dict:
    """The newest finished run of ``experiment`` that has AUC metrics."""
    api = f"{url}/api/2.0/mlflow"
    answer = requests.get(
        f"{api}/experiments/get-by-name", params={"experiment_name": experiment}, timeout=30
    )
    if answer.status_code != 200:
        sys.exit(f"no experiment '{experiment}' in this environment's MLflow store: "
                 "run `kedro run` first")
    search = {
        "experiment_ids": [answer.json()["experiment"]["experiment_id"]],
        "filter": "attributes.status = 'FINISHED' and metrics.auc_reconstruction_all >= 0",
        "order_by": ["start_time DESC"],
        "max_results": 1,
    }
    runs = requests.post(f"{api}/runs/search", json=search, timeout=30).json().get("runs")
    if not runs:
        sys.exit("no finished run with AUC metrics: run `kedro run` first")
    return runs[0]


def save_png(shot: bytes, path: Path) -> None:
    """Write a screenshot, reduced to 256 colours if it would exceed MAX_PNG_BYTES."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if len(shot) > MAX_PNG_BYTES:
        buf = io.BytesIO()
        Image.open(io.BytesIO(shot)).convert("RGB").quantize(256).save(buf, "PNG", optimize=True)
        shot = buf.getvalue()
    if len(shot) > MAX_PNG_BYTES:
        sys.exit(f"{path.name} is {len(shot)} bytes, over {MAX_PNG_BYTES}")
    path.write_bytes(shot)
    print(f"wrote {path} ({len(shot) // 1024} KiB)")


def expect(condition: bool, what: str) -> None:
    if not condition:
        sys.exit(f"check failed: {what}")


def shoot_viz(browser, url: str, out: Path) -> None:
    init = f"localStorage.setItem('KedroViz', {json.dumps(json.dumps(VIZ_SETTINGS))});"
    context = browser.new_context(viewport={"width": 1400, "height": 1800})
    context.add_init_script(init)
    page = context.new_page()
    page.goto(url, wait_until="networkidle")
    graph = page.locator(".pipeline-node")
    graph.filter(has_text="train_vae").first.wait_for(timeout=60_000)
    dismiss = page.get_by_text("Dismiss", exact=True)  # the "new version" banner
    if dismiss.count():
        dismiss.first.click()
    page.wait_for_timeout(1500)  # the graph's zoom-to-fit transition
    for name in VIZ_NODES:
        expect(graph.filter(has_text=name).count() > 0, f"kedro-viz graph shows {name}")
    body = page.locator("body").inner_text()
    for layer in VIZ_LAYERS:
        expect(layer in body, f"kedro-viz shows the {layer} layer")
    save_png(page.screenshot(), out / "kedro_viz.png")

    page.set_viewport_size({"width": 1400, "height": 900})
    graph.filter(has_text=re.compile(r"^\s*auc_table\s*$")).first.click()
    panel = page.locator(".pipeline-metadata")
    panel.get_by_text("Reconstruction").first.wait_for(timeout=30_000)  # the table preview
    page.wait_for_timeout(1000)
    save_png(page.screenshot(), out / "kedro_viz_preview.png")
    context.close()


def shoot_mlflow(browser, url: str, run: dict, out: Path) -> None:
    info = run["info"]
    run_url = f"{url}/#/experiments/{info['experiment_id']}/runs/{info['run_id']}"
    init = "".join(f"localStorage.setItem({k!r}, {v!r});" for k, v in MLFLOW_SETTINGS.items())
    context = browser.new_context(viewport={"width": 1400, "height": 1500})
    context.add_init_script(init)
    page = context.new_page()
    page.goto(run_url, wait_until="load")  # the UI keeps polling: no "networkidle"
    page.get_by_text("Parameters").first.wait_for(timeout=60_000)
    page.get_by_placeholder("Search metrics").fill("auc_")
    page.wait_for_timeout(1500)
    body = page.locator("body").inner_text()
    expect(info["run_name"] in body, f"the run page shows the run {info['run_name']}")
    for text in RUN_TEXT:
        expect(text in body, f"the run page shows {text}")
    save_png(page.screenshot(), out / "mlflow_run.png")

    page.set_viewport_size({"width": 1400, "height": 900})
    page.goto(f"{run_url}/model-metrics", wait_until="load")
    search = page.get_by_placeholder("Search metric charts")
    search.wait_for(timeout=60_000)
    search.fill("_total")
    page.get_by_text(LOSS_CHARTS[0]).first.wait_for(timeout=30_000)
    page.wait_for_timeout(2000)  # the charts draw
    body = page.locator("body").inner_text()
    for name in LOSS_CHARTS:
        expect(name in body, f"the Model metrics tab shows {name}")
    save_png(page.screenshot(), out / "mlflow_loss_curves.png")
    context.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--project", type=Path, default=ROOT, help="a Kedro project, run")
    parser.add_argument("--env", default=None, help="Kedro environment (default: local)")
    parser.add_argument("--tiny", action="store_true", help="use a fresh tiny run instead")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "images")
    parser.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    args = parser.parse_args(argv)
    if not Path(args.chromium).exists():
        sys.exit("Chromium not found: apt-get update && apt-get install -y chromium")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        sys.exit("playwright not installed: python -m pip install playwright")

    with tempfile.TemporaryDirectory(prefix="oct_vae_screens_") as tmp:
        tmp = Path(tmp)
        project, env = args.project.resolve(), args.env or "local"
        if args.tiny:
            (tmp / "project").mkdir()
            project, env = tiny_project(tmp / "project"), "tiny"
        viz_url = f"http://127.0.0.1:{free_port()}"
        mlflow_url = f"http://127.0.0.1:{free_port()}"
        kedro = str(BIN / "kedro")
        viz_cmd = [kedro, "viz", "run", "--no-browser", "--host", "127.0.0.1"]
        viz_cmd += ["--port", viz_url.rsplit(":", 1)[1], "--env", env]
        ui_cmd = [kedro, "mlflow", "ui", "--env", env, "--host", "127.0.0.1"]
        ui_cmd += ["--port", mlflow_url.rsplit(":", 1)[1]]
        with (
            server(viz_cmd, project, f"{viz_url}/api/main", tmp / "viz.log"),
            server(ui_cmd, project, f"{mlflow_url}/health", tmp / "mlflow.log"),
            sync_playwright() as playwright,
        ):
            run = latest_run(mlflow_url, experiment_of(project, env))
            browser = playwright.chromium.launch(
                executable_path=args.chromium, headless=True, args=CHROMIUM_FLAGS
            )
            try:
                shoot_viz(browser, viz_url, args.out)
                shoot_mlflow(browser, mlflow_url, run, args.out)
            finally:
                browser.close()
    print("all pages showed what they should")


if __name__ == "__main__":
    main()
