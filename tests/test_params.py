"""Every parameter is checked before anything runs, by its schema (``oct_vae.framework.params``),
and the Kedro hook that does it (``oct_vae.framework.parameter_hook``).

Tests that need ``CheckParametersHook()`` in ``settings.HOOKS`` say so in their name
(``..._registered_...``) and fail with that advice while it is missing.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import get_args

import numpy as np
import pytest
import torch
from kedro.config import OmegaConfigLoader

from oct_vae.evaluation.metrics import ROW_NAMES
from oct_vae.framework import parameter_hook as H
from oct_vae.framework import params as P
from oct_vae.framework.parameter_hook import CheckParametersHook
from oct_vae.framework.params import ParameterError, check_parameters, find_problems
from oct_vae.settings import CONFIG_LOADER_ARGS
from oct_vae.training.trainer import TrainConfig
from oct_vae.vae.losses import LIKELIHOODS
from oct_vae.vae.model import VAE, VAEConfig
from oct_vae.vae.scores import ScoreConfig, encoder_means, fit_latent_gaussian, score_images
from tests.helpers.project import copy_project

REPO = Path(__file__).resolve().parents[1]
ENVS = ("base", "tiny", "kermany")


def _conf(env: str = "base", runtime_params: dict | None = None) -> dict:
    loader = OmegaConfigLoader(
        str(REPO / "conf"), env=env, runtime_params=runtime_params, **CONFIG_LOADER_ARGS
    )
    return loader["parameters"]


@pytest.fixture(scope="module")
def base() -> dict:
    return _conf()


def _with(params: dict, **changes) -> dict:
    """A copy of ``params`` with ``key=value`` changes; ``a__b`` is ``params[a][b]``, and
    the value ``...`` deletes the key."""
    out = copy.deepcopy(params)
    for dotted, value in changes.items():
        *path, last = dotted.split("__")
        node = out
        for part in path:
            node = node[part]
        if value is ...:
            del node[last]
        else:
            node[last] = value
    return out


def _problems(params: dict) -> list[str]:
    with pytest.raises(ParameterError) as info:
        check_parameters(params)
    assert isinstance(info.value, ValueError)
    assert info.value.problems and all(p in str(info.value) for p in info.value.problems)
    return info.value.problems


def _one_problem(params: dict, key: str) -> str:
    problems = _problems(params)
    assert len(problems) == 1, problems
    assert problems[0].startswith(key), problems
    return problems[0]


# --------------------------------------------------------------- shipped configuration


@pytest.mark.parametrize("env", ENVS)
def test_the_shipped_parameter_sets_pass(env):
    check_parameters(_conf(env))


def test_raw_dir_is_a_runtime_parameter_of_the_kermany_environment():
    assert "raw_dir" in (REPO / "conf" / "kermany" / "catalog.yml").read_text()
    check_parameters(_conf("kermany", {"raw_dir": "/data/OCT2017"}))
    problem = _one_problem(_conf("kermany", {"raw_dir": 2017}), "raw_dir")
    assert 'raw_dir="2017"' in problem  # the hint: quote it


def test_checking_loads_neither_torch_nor_kedro_nor_mlflow(base):
    # The check runs before every command; only a device other than auto/cpu loads torch.
    code = (
        "import json, sys\n"
        "import oct_vae.framework.params as p\n"
        "params = json.loads(sys.argv[1])\n"
        "p.check_parameters(params)\n"
        "p.check_parameters({**params, 'device': 'cpu'})\n"
        "p.parse_train(params['train']).train_config(0, 'cpu')\n"
        "bad = p.find_problems({**params, 'seed': -1})\n"
        "assert bad and bad[0].startswith('seed=-1'), bad\n"
        "loaded = [m for m in ('torch', 'kedro', 'mlflow') if m in sys.modules]\n"
        "assert not loaded, loaded\n"
    )
    paths = [str(REPO / "src"), os.environ.get("PYTHONPATH", "")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p)}
    done = subprocess.run([sys.executable, "-c", code, json.dumps(base)], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.mark.parametrize("device", ["auto", "cpu"])
def test_checking_auto_or_cpu_does_not_ask_the_device(base, monkeypatch, device):
    # Always available: no device query (no CUDA initialisation), whatever the machine.
    def refuse(name):
        raise RuntimeError(f"device={name!r}: asked")

    monkeypatch.setattr("oct_vae.training.device.resolve_device", refuse)
    check_parameters(_with(base, device=device))
    assert _one_problem(_with(base, device="mps"), "device") == "device='mps': asked"


# ------------------------------------------------------------- the problems measured


def test_every_problem_is_reported_at_once_each_naming_its_key(base):
    bad = _with(
        base,
        ingest__image_size=16,
        ingest__test_normalz=5,
        epochs=3,
        score__flag_score="nonsense",
        score__specificity=1.5,
    )
    problems = _problems(bad)
    assert len(problems) == 5, problems
    by_key = {p.split("=")[0]: p for p in problems}
    assert set(by_key) == {
        "ingest.image_size",
        "ingest.test_normalz",
        "epochs",
        "score.flag_score",
        "score.specificity",
    }
    assert "multiple of 32" in by_key["ingest.image_size"]
    assert "did you mean ingest.test_normals?" in by_key["ingest.test_normalz"]
    assert "did you mean train.epochs?" in by_key["epochs"]
    assert (
        "'nonsense'" in by_key["score.flag_score"]
        and "'reconstruction'" in by_key["score.flag_score"]
    )
    assert "1.5" in by_key["score.specificity"] and "(0, 1)" in by_key["score.specificity"]


@pytest.mark.parametrize("size", [32, 64, 96, 128, 160, 256])
def test_image_sizes_the_model_takes_pass(base, size):
    check_parameters(_with(base, ingest__image_size=size))


@pytest.mark.parametrize("size", [16, 48, 100, 8, 1])
def test_image_sizes_the_model_cannot_take_are_refused_with_the_true_rule(base, size):
    problem = _one_problem(_with(base, ingest__image_size=size), "ingest.image_size")
    assert f"ingest.image_size={size}" in problem
    assert "a multiple of 32, at least 32" in problem and "train.n_blocks=5" in problem


@pytest.mark.parametrize("size", [0, -32, None, 128.0, True, "128"])
def test_image_size_must_be_a_positive_integer(base, size):
    problem = _one_problem(_with(base, ingest__image_size=size), "ingest.image_size")
    assert "a positive integer" in problem


@pytest.mark.parametrize("n_blocks", [1, 3, 5])
def test_the_image_size_rule_is_exactly_the_models(base, n_blocks):
    for size in range(1, 200):
        params = _with(base, ingest__image_size=size, train__n_blocks=n_blocks)
        try:
            VAEConfig(image_size=size, n_blocks=n_blocks)
            model_ok = True
        except ValueError:
            model_ok = False
        problems = find_problems(params)
        assert (not problems) == model_ok, (size, n_blocks, problems)
        if not model_ok:
            assert f"multiple of {2**n_blocks}" in problems[0]


def test_a_non_power_of_two_image_size_really_works_in_the_model():
    model = VAE(VAEConfig(image_size=96, width=2, latent_dim=4)).eval()
    with torch.no_grad():
        logits, _, _ = model(torch.rand(2, 1, 96, 96))
    assert logits.shape == (2, 1, 96, 96)


# ------------------------------------------------------------------------ unknown keys


@pytest.mark.parametrize(
    ("changes", "key", "suggestion"),
    [
        ({"ingest__test_normalz": 5}, "ingest.test_normalz", "ingest.test_normals"),
        ({"train__epoch": 3}, "train.epoch", "train.epochs"),
        ({"evaluate__n_bootstraps": 3}, "evaluate.n_bootstraps", "evaluate.n_bootstrap"),
        ({"score__flagscore": "kl"}, "score.flagscore", "score.flag_score"),
        ({"epochs": 3}, "epochs", "train.epochs"),
        ({"image_size": 64}, "image_size", "ingest.image_size"),
        ({"ingest__epochs": 3}, "ingest.epochs", "train.epochs"),
        ({"train__seed": 3}, "train.seed", "seed (top level)"),
        ({"trian": {"epochs": 3}}, "trian", "train"),
        ({"devise": "cpu"}, "devise", "device"),
    ],
)
def test_unknown_keys_are_refused_with_the_closest_known_key(base, changes, key, suggestion):
    problem = _one_problem(_with(base, **changes), key)
    assert "unknown parameter" in problem and f"did you mean {suggestion}?" in problem


def test_a_key_that_is_not_a_string_is_an_unknown_key(base):
    # YAML reads `2:` as the integer 2
    ingest = {**base["ingest"], 2: 3}
    problem = _one_problem({**base, "ingest": ingest}, "ingest.2=3 (int): unknown parameter")
    assert "ingest takes: image_size, val_fraction" in problem
    assert _one_problem({**base, 1: 2}, "1=2 (int): unknown parameter")


def test_an_unknown_key_without_a_near_miss_lists_what_is_known(base):
    problem = _one_problem(_with(base, score__zzz=1), "score.zzz")
    assert "did you mean" not in problem
    assert "score takes: input_dir, flag_score, specificity" in problem


@pytest.mark.parametrize(
    ("old", "new", "reader"),
    [
        ("n_samples", "train.scoring.n_samples", "read by the train pipeline"),
        ("filtered_top_k_percent", "train.scoring.filtered_top_k_percent", "train pipeline"),
        ("specificity", "score.specificity", "the one operating point"),
    ],
)
def test_a_moved_parameter_names_its_new_key_and_reader(base, old, new, reader):
    problem = _one_problem(_with(base, **{f"evaluate__{old}": 2}), f"evaluate.{old}")
    assert f"it is now {new}" in problem and reader in problem


def test_a_specificity_at_the_top_level_suggests_both_namespaces(base):
    problem = _one_problem(_with(base, specificity=0.9), "specificity")
    assert "did you mean score.specificity?" in problem


# ----------------------------------------------------------------- missing and shapes


def test_missing_keys_are_reported(base):
    problems = _problems(_with(base, ingest__image_size=..., evaluate__n_bootstrap=..., seed=...))
    assert sorted(p.split(" ")[0] for p in problems) == [
        "evaluate.n_bootstrap",
        "ingest.image_size",
        "seed",
    ]
    assert all("is missing" in p for p in problems)


def test_a_missing_namespace_is_reported(base):
    assert _one_problem(_with(base, train=...), "train") == "train is missing"


def test_train_keys_are_optional_they_have_the_schema_defaults(base):
    # ... except train.scoring, which the calibration node reads as a whole
    check_parameters(_with(base, train={"scoring": base["train"]["scoring"]}))
    check_parameters(_with(base, train={"scoring": {}}))
    assert _one_problem(_with(base, train={}), "train.scoring") == "train.scoring is missing"


def test_a_namespace_must_be_a_mapping(base):
    problem = _one_problem(_with(base, ingest=5), "ingest")
    assert "must be a mapping of image_size, val_fraction" in problem


# -------------------------------------------------------------------------- types


@pytest.mark.parametrize(
    ("key", "value", "allowed"),
    [
        ("train__epochs", True, "a positive integer"),  # a bool is not an integer
        ("ingest__test_normals", 20.0, "a positive integer"),  # nor is a float
        ("ingest__workers", "2", "an integer >= 0"),
        ("train__lr", "1e-3", "a number > 0"),
        ("score__specificity", True, "a number in (0, 1)"),
        ("train__resume", 3, "false, true"),
        ("train__progress", "yes", "true or false"),
        ("ingest__max_train_normals", 0.5, "null or a positive integer"),
        ("score__input_dir", 5, "null or a folder"),
        ("seed", 1.5, "an integer"),
        ("device", None, "'auto', 'cpu'"),
        ("ingest__image_size", None, "a positive integer"),
    ],
)
def test_wrong_types_are_refused(base, key, value, allowed):
    full = key.replace("__", ".")
    problem = _one_problem(_with(base, **{key: value}), full)
    assert problem.startswith(f"{full}={value!r}") and allowed in problem


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("train__scoring__top_k_percent", 5),  # an integer is a number
        ("train__scoring__top_k_percent", 100),
        ("train__scoring__residual_sigma", 0),
        ("train__beta", 0),
        ("ingest__workers", 0),
        ("ingest__max_train_normals", None),
        ("ingest__max_train_normals", 5000),
        ("score__input_dir", None),
        ("score__input_dir", "/data/scans"),
        ("train__checkpoint_dir", None),
        ("train__resume", True),
        ("train__resume", "2026-01-01T00.00.00.000Z"),
        ("train__devices", "auto"),
        ("train__devices", 2),
        ("device", "cpu"),
        ("seed", 0),
    ],
)
def test_values_at_the_edges_pass(base, key, value):
    check_parameters(_with(base, **{key: value}))


# -------------------------------------------------------------------------- ranges


@pytest.mark.parametrize(
    ("key", "value", "allowed"),
    [
        ("ingest__val_fraction", 0, "(0, 1)"),
        ("ingest__val_fraction", 1, "(0, 1)"),
        ("ingest__test_normals", 0, "a positive integer"),
        ("ingest__test_per_disease", -1, "a positive integer"),
        ("ingest__max_train_normals", 0, "null or a positive integer"),
        ("ingest__max_image_pixels", 0, "a positive integer"),
        ("ingest__workers", -1, "an integer >= 0 (0 = all cores)"),
        ("train__scoring__n_samples", 0, "a positive integer"),
        ("train__scoring__batch_size", 0, "a positive integer"),
        ("evaluate__n_bootstrap", 0, "a positive integer"),
        ("evaluate__n_examples", 0, "a positive integer"),
        ("train__scoring__top_k_percent", 0, "(0, 100]"),
        ("train__scoring__top_k_percent", 100.5, "(0, 100]"),
        ("train__scoring__filtered_top_k_percent", 0.0, "(0, 100]"),
        ("train__scoring__residual_sigma", -0.5, ">= 0"),
        ("score__specificity", 0.0, "(0, 1)"),
        ("score__specificity", 1.0, "(0, 1)"),
        ("score__specificity", 1.5, "(0, 1)"),
        ("score__specificity", float("nan"), "(0, 1)"),
        ("score__max_image_bytes", 0, "a positive integer"),
        ("score__max_request_rows", 0, "a positive integer"),
        ("score__max_request_bytes", 0, "a positive integer"),
        ("train__epochs", 0, "a positive integer"),
        ("train__batch_size", -16, "a positive integer"),
        ("train__val_batch_size", 0, "a positive integer"),
        ("train__checkpoint_every", 0, "a positive integer"),
        ("train__width", 0, "a positive integer"),
        ("train__latent_dim", 0, "a positive integer"),
        ("train__in_channels", 3, "1 (OCT scans are grayscale)"),
        ("train__lr", 0, "a number > 0"),
        ("train__lr", float("inf"), "a number > 0"),
        ("train__gaussian_sigma", 0, "a number > 0"),
        ("train__beta", -1, "a number >= 0"),
        ("train__devices", 0, "a positive integer or 'auto'"),
        ("seed", -1, "[0, 2**63)"),
    ],
)
def test_values_out_of_range_are_refused(base, key, value, allowed):
    full = key.replace("__", ".")
    problem = _one_problem(_with(base, **{key: value}), full)
    assert problem.startswith(f"{full}=") and allowed in problem


# ------------------------------------------------------------------------- choices


@pytest.mark.parametrize(
    ("key", "value", "allowed"),
    [
        ("train__likelihood", "poisson", "'bernoulli', 'gaussian'"),
        ("train__amp", "on", "'auto', 'bf16', 'off'"),
        ("train__compile", "bf16", "'auto', 'on', 'off'"),
        ("train__channels_last", "yes", "'auto', 'on', 'off'"),
        ("score__flag_score", "Reconstruction", "'reconstruction'"),
    ],
)
def test_values_outside_the_choices_are_refused(base, key, value, allowed):
    full = key.replace("__", ".")
    assert allowed in _one_problem(_with(base, **{key: value}), full)


def test_an_unquoted_off_gets_advice_to_quote_it(base):
    # --params train.compile=off reaches Kedro as the boolean False (YAML).
    problem = _one_problem(_with(base, train__compile=False), "train.compile")
    assert "quote it: --params 'train.compile=\"off\"'" in problem
    assert "quote it" not in _one_problem(_with(base, train__devices=0), "train.devices")


@pytest.mark.parametrize("name", P.SCORE_NAMES)
def test_every_reported_score_can_flag(base, name):
    check_parameters(_with(base, score__flag_score=name))


@pytest.mark.usefixtures("one_torch_thread")
def test_flag_score_choices_are_the_scores_evaluation_reports():
    model = VAE(VAEConfig(image_size=32, width=2, latent_dim=4))
    images = np.random.default_rng(0).integers(0, 256, (4, 32, 32), dtype=np.uint8)
    device = torch.device("cpu")
    fit = fit_latent_gaussian(encoder_means(model, images, 4, device))
    config = ScoreConfig(n_samples=1, batch_size=4)
    scores = score_images(model, images, config, device, images.mean(0) / 255.0, fit)
    assert set(scores) == set(P.SCORE_NAMES)
    assert set(ROW_NAMES) == set(P.SCORE_NAMES)


def test_the_choices_are_what_train_config_accepts():
    fields = P.OptimiserParams.model_fields
    assert get_args(fields["likelihood"].annotation) == LIKELIHOODS
    for name in ("amp", "compile", "channels_last", "cuda_graph", "likelihood"):
        options = get_args(fields[name].annotation)
        assert options and all(isinstance(o, str) for o in options)
        for value in options:
            TrainConfig(**{name: value})
        with pytest.raises(ValueError):
            TrainConfig(**{name: "nonsense"})


# ------------------------------------------------------------------------ device


def test_a_device_that_does_not_exist_here_is_refused(base):
    missing = "cuda:99" if torch.cuda.is_available() else "cuda"
    problem = _one_problem(_with(base, device=missing), "device")
    assert f"device={missing!r}" in problem
    assert "device=" in _one_problem(_with(base, device="tpu"), "device")


# -------------------------------------------------------- train keys cannot drift


def _fields(cls) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def test_train_keys_are_the_config_dataclass_fields():
    fields = set(_fields(VAEConfig)) | set(_fields(TrainConfig))
    assert set(P.TrainParams.model_fields) == fields - {"image_size", "seed", "device"} | {
        P.SCORING_KEY
    }
    assert set(P.ScoringParams.model_fields) == set(_fields(ScoreConfig)) - {
        "likelihood", "gaussian_sigma", "seed"}
    # ... split by the train node exactly as the schema splits them
    from oct_vae.pipelines.train.nodes import split_train_params

    model, train = split_train_params({"width": 4, "epochs": 3}, 32, seed=1, device="cpu")
    assert model.width == 4 and train.epochs == 3 and train.seed == 1
    with pytest.raises(ParameterError, match=r"train\.seed=1 \(int\): unknown parameter; "
                       r"did you mean seed \(top level\)\?"):
        split_train_params({"seed": 1}, 32, seed=1, device="cpu")  # top level, not train.*


def test_the_train_node_builds_its_configs_from_the_schema():
    from oct_vae.pipelines.train.nodes import split_train_params

    scoring = {"n_samples": 2}  # the calibration node's: not a config of the train node
    model, train = split_train_params({"beta": 1, "scoring": scoring}, 64, seed=7, device="cpu")
    defaults = P.TrainSettings().model_dump()
    assert dataclasses.asdict(model) == {
        "image_size": 64, **{k: defaults[k] for k in P.MODEL_KEYS}}
    assert dataclasses.asdict(train) == {
        **{k: defaults[k] for k in P.TRAIN_KEYS}, "beta": 1, "seed": 7, "device": "cpu"}
    assert type(train.beta) is int  # the value as written: no conversion on the way
    with pytest.raises(ParameterError) as info:
        split_train_params({"epochs": 0, "amp": False}, 64, seed=7, device="cpu")
    assert [p.split("=")[0] for p in info.value.problems] == ["train.epochs", "train.amp"]


@pytest.mark.parametrize(
    ("model", "prefix"),
    [(P.IngestParams, "ingest"), (P.TrainSettings, "train"), (P.ScoringParams, "train.scoring"),
     (P.EvaluateParams, "evaluate"), (P.ScoreParams, "score")],
)
def test_every_key_is_checked_by_its_type(base, model, prefix):
    # No key of the schema takes anything: a mapping is no value of any of them.
    for key in model.model_fields:
        changes = {f"{prefix.replace('.', '__')}__{key}": {"a": 1}}
        problem = _one_problem(_with(base, **changes), f"{prefix}.{key}=")
        assert problem.startswith(f"{prefix}.{key}={{'a': 1}} (dict): must be "), problem


def _defaults(model) -> dict:
    return {k: f.default for k, f in model.model_fields.items() if not f.is_required()}


def test_the_config_defaults_are_the_schemas():
    vae, train, score = ({f.name: f.default for f in dataclasses.fields(c)}
                         for c in (VAEConfig, TrainConfig, ScoreConfig))
    assert {k: vae[k] for k in P.MODEL_KEYS} == _defaults(P.ModelParams)
    schema = _defaults(P.OptimiserParams)
    assert set(schema) == set(P.TRAIN_KEYS)
    # Not the same thing: train.checkpoint_dir holds every run's folder (the train node
    # makes one per run); TrainConfig.checkpoint_dir is one run's, None = no checkpoint.
    assert schema.pop("checkpoint_dir") == "data/base/06_models/checkpoints"
    assert train["checkpoint_dir"] is None
    assert {k: train[k] for k in schema} == schema
    scoring = _defaults(P.ScoringParams)
    assert set(scoring) == set(P.ScoringParams.model_fields)
    assert {k: score[k] for k in scoring} == scoring
    assert (score["likelihood"], score["gaussian_sigma"]) == (
        schema["likelihood"], schema["gaussian_sigma"])
    # The project's defaults: conf/base's phantom run on a CPU.
    assert (schema["likelihood"], schema["batch_size"], vae["width"]) == ("gaussian", 16, 8)


def test_the_base_yaml_gives_the_schema_defaults_or_leaves_the_key_out(base):
    train = dict(base["train"])
    scoring = train.pop(P.SCORING_KEY)
    for section, model in ((train, P.TrainSettings), (scoring, P.ScoringParams)):
        defaults = _defaults(model)
        assert set(section) <= set(defaults)
        assert {k: v for k, v in section.items() if v != defaults[k]} == {}
    # conf/kermany differs where the paper does: width 64, batch 64
    kermany = _conf("kermany")["train"]
    assert (kermany["width"], kermany["batch_size"]) == (64, 64)


def test_the_schema_defaults_build_the_default_configs():
    settings = P.TrainSettings()  # validate_default: every default passes its own check
    assert settings.vae_config(128) == VAEConfig()
    assert settings.train_config(0, "cpu") == TrainConfig(
        seed=0, device="cpu", checkpoint_dir="data/base/06_models/checkpoints")
    scoring = P.ScoringParams().score_config(settings.likelihood, settings.gaussian_sigma, 0)
    assert scoring == ScoreConfig()


def test_the_config_dataclasses_are_the_last_check(base):
    # A value that slips past the schema is still stopped by the config that would take it.
    parsed = P.Parameters.model_validate(base)
    scoring = parsed.train.scoring.model_copy(update={"top_k_percent": 0})
    train = parsed.train.model_copy(update={"lr": -1.0, "scoring": scoring})
    problems = P.config_problems(parsed.model_copy(update={"train": train}))
    assert len(problems) == 2, problems
    assert problems[0].startswith("train: ") and "lr" in problems[0]
    assert problems[1].startswith("train.scoring: ") and "top_k_percent" in problems[1]


# --------------------------------------------------------------------------- hook


def _scratch_project(tmp_path: Path) -> Path:
    return copy_project(tmp_path / "project")


def _files_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


def _hook_registered() -> bool:
    from oct_vae import settings

    return any(isinstance(h, CheckParametersHook) for h in settings.HOOKS)


REGISTER = "add CheckParametersHook() to HOOKS in src/oct_vae/settings.py (last)"


def test_the_hook_is_registered_and_runs_before_every_other_hook():
    """Needs the registration in settings.py."""
    from kedro.framework.hooks.manager import _create_hook_manager

    from oct_vae import settings

    assert _hook_registered(), REGISTER
    manager = _create_hook_manager()
    for hook in settings.HOOKS:
        manager.register(hook)
    order = list(reversed(manager.hook.before_pipeline_run.get_hookimpls()))
    assert isinstance(order[0].plugin, CheckParametersHook), (
        f"before_pipeline_run order: {[type(i.plugin).__name__ for i in order]}; {REGISTER}"
    )


@pytest.mark.slow
@pytest.mark.parametrize("runner", ["SequentialRunner", "ThreadRunner", "ParallelRunner"])
def test_the_hook_stops_a_session_before_any_node(tmp_path, monkeypatch, runner):
    """In-process KedroSession; registers the hook itself when settings.py does not."""
    import mlflow
    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project
    from kedro.runner import ParallelRunner, SequentialRunner, ThreadRunner

    project = _scratch_project(tmp_path)
    monkeypatch.chdir(project)
    runners = {"SequentialRunner": SequentialRunner, "ThreadRunner": ThreadRunner}
    runners["ParallelRunner"] = ParallelRunner
    bootstrap_project(project)
    try:
        with KedroSession.create(
            project_path=project,
            env="tiny",
            runtime_params={"ingest": {"image_size": 16}, "score": {"specificity": 1.5}},
        ) as session:
            if not _hook_registered():
                session._hook_manager.register(CheckParametersHook())
            with pytest.raises(ParameterError) as info:
                session.run(runner=runners[runner]())
    finally:
        while mlflow.active_run() is not None:
            mlflow.end_run()
    assert sorted(p.split("=")[0] for p in info.value.problems) == [
        "ingest.image_size",
        "score.specificity",
    ]
    assert _files_under(project / "data") == []


@pytest.mark.slow
def test_kedro_run_with_a_bad_image_size_stops_before_ingest_registered(tmp_path):
    """The command line, in a scratch copy. Needs the registration in settings.py."""
    assert _hook_registered(), REGISTER
    project = _scratch_project(tmp_path)
    kedro = Path(sys.executable).parent / "kedro"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [str(kedro), "run", "--env", "tiny", "--params", "ingest.image_size=16"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    output = done.stdout + done.stderr
    assert done.returncode != 0, output[-3000:]
    assert "ParameterError" in output and "ingest.image_size=16" in output, output[-3000:]
    assert "multiple of 32" in output
    assert _files_under(project / "data") == [], "a node ran before the parameters were checked"


# -------------------------------------------------- every override has a reader


def test_evaluate_reads_what_changes_its_output_and_nothing_else():
    from oct_vae.framework.parameter_hook import parameter_reads
    from oct_vae.pipeline_registry import every_pipeline

    reads = parameter_reads(every_pipeline()["evaluate"])
    assert reads == {"evaluate.n_bootstrap", "evaluate.n_examples", "score.specificity",
                     "score.flag_score", "seed", "device", "ingest.max_image_pixels",
                     "ingest.workers", "real_dir"}


def test_every_evaluate_and_score_key_is_read_by_evaluate_or_refused_naming_its_reader(base):
    from oct_vae.framework.parameter_hook import parameter_reads
    from oct_vae.pipeline_registry import every_pipeline

    pipelines = every_pipeline()
    readers = {name: parameter_reads(p) for name, p in pipelines.items()}
    evaluate = readers["evaluate"]
    for namespace in ("evaluate", "score"):
        for key in base[namespace]:
            override = {namespace: {key: base[namespace][key]}}
            problems = H.unread_overrides(override, evaluate, readers, "the evaluate pipeline")
            if f"{namespace}.{key}" in evaluate:
                assert problems == []
            else:
                (problem,) = problems
                owners = [n for n, r in readers.items() if f"{namespace}.{key}" in r]
                assert owners and f"read by the {owners[0]}" in problem, problem


def test_an_unread_override_names_the_pipelines_that_read_it():
    readers = {"train": {"train", "seed"}, "score": {"score.input_dir", "seed"}}
    (problem,) = H.unread_overrides({"score": {"input_dir": "/x"}}, {"seed"}, readers,
                                    "the evaluate pipeline")
    assert problem.startswith("score.input_dir: no node of the evaluate pipeline reads it")
    assert "read by the score pipeline" in problem
    (both,) = H.unread_overrides({"seed": 3}, set(), readers, "the promote pipeline")
    assert "read by the score and train pipelines" in both
    assert H.unread_overrides({"train": {"scoring": {"n_samples": 2}}}, {"train"}, readers,
                              "x") == []  # a node reading a namespace reads its keys
    assert H.unread_overrides({"a": 1}, {""}, readers, "x") == []  # all parameters
    with pytest.raises(ParameterError, match="no pipeline reads it"):
        H.check_overrides({"nowhere": 1}, set(), readers, "x")
