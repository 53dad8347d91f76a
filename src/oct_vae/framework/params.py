"""Every parameter of the project: one typed schema per namespace, checked before anything runs.

The pydantic models below are the one source of truth of each parameter: its type, range
or choices, its default (train keys only: the other namespaces are required in full) and,
from those, the words of its error message. ``check_parameters`` takes the merged
parameters of a run (``conf/base`` + the environment + ``--params``) and raises one
``ParameterError`` that lists every problem: unknown keys (with the closest known key),
missing keys, wrong types (``true`` is not an integer, ``16.0`` is not an integer, ``"5"``
is not a number) and values out of range, each named by its full key, e.g.
``ingest.image_size=16``. Then come the checks across keys (``ingest.image_size`` against
the model's ``train.n_blocks``), the device, and the science modules' configs
(``VAEConfig``, ``TrainConfig``, ``ScoreConfig``) built from the values as a last check.
The train node builds its configs with ``TrainSettings`` too (``split_train_params``).

No Kedro, no MLflow and no torch (torch is loaded only to check a device other than
``auto`` or ``cpu``): the project's Kedro hook (``oct_vae.framework.parameter_hook``)
calls it before every run, and anything else may call it as well.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import (
    AllowInfNan,
    BaseModel,
    ConfigDict,
    Field,
    Strict,
    StrictBool,
    StrictFloat,
    StrictInt,
    ValidationError,
)

from oct_vae.data.kermany import PROTOCOLS
from oct_vae.framework.parameter_errors import ParameterError, Words, explain, shown
from oct_vae.training.config import AMP_MODES, SWITCHES, TrainConfig
from oct_vae.vae.config import (
    BASELINE_SCORES,
    EXTRA_SCORES,
    LIKELIHOODS,
    PAPER_SCORES,
    ScoreConfig,
    VAEConfig,
)

# Every score ``score_images`` returns for a calibrated model: the columns of test_scores,
# the calibrated scores of vae_model, hence the choices of score.flag_score.
SCORE_NAMES = (*PAPER_SCORES, *BASELINE_SCORES, *EXTRA_SCORES)


# The value types. Strict: YAML's ``true`` is no integer, ``16.0`` no integer, ``"5"`` no
# number. A number keeps its YAML type (an int stays an int), so the configs get the values
# exactly as written.
PositiveInt = Annotated[int, Strict(), Field(ge=1)]
Number = Annotated[StrictInt | StrictFloat, AllowInfNan(False)]
Fraction = Annotated[Number, Field(gt=0, lt=1)]
Percent = Annotated[Number, Field(gt=0, le=100)]
Text = Annotated[str, Strict(), Field(pattern=r"^\s*\S")]  # not blank
Folder = Annotated[Text, Words("a folder (a string)")]


class Section(BaseModel):
    """A namespace of parameters: unknown keys are refused, defaults are checked too."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


class IngestParams(Section):
    """``ingest``: how scans are decoded and split (``pipelines/ingest``)."""

    image_size: PositiveInt  # further checked against the model (``_check_image_size``)
    val_fraction: Fraction
    test_normals: PositiveInt
    test_per_disease: PositiveInt
    max_train_normals: PositiveInt | None
    max_image_pixels: PositiveInt
    workers: Annotated[int, Strict(), Field(ge=0), Words("an integer >= 0 (0 = all cores)")]
    # kermany.PROTOCOLS: paper (our own draw) or official (the dataset's test folder).
    protocol: Literal[PROTOCOLS]


class ModelParams(Section):
    """The ``train`` keys of the model's sizes: ``VAEConfig`` less ``image_size``."""

    in_channels: Annotated[
        int, Strict(), Field(ge=1, le=1), Words("1 (OCT scans are grayscale)")
    ] = 1
    width: PositiveInt = 8
    latent_dim: PositiveInt = 300
    n_blocks: PositiveInt = 5  # further checked against ingest.image_size


class OptimiserParams(Section):
    """The ``train`` keys of the optimisation: ``TrainConfig`` less ``seed`` and ``device``
    (top level).

    ``checkpoint_dir`` and ``resume`` differ from ``TrainConfig``'s fields of the same name:
    the train node turns them into this run's own folder and the ``last.pt`` to continue
    (``pipelines/train/run_folders.py``: ``checkpoint_folders``).
    """

    epochs: PositiveInt = 40
    batch_size: PositiveInt = 16
    lr: Annotated[Number, Field(gt=0)] = 1e-4
    beta: Annotated[Number, Field(ge=0)] = 1.0
    likelihood: Literal[LIKELIHOODS] = "gaussian"
    gaussian_sigma: Annotated[Number, Field(gt=0)] = 0.1
    amp: Literal[AMP_MODES] = "auto"
    compile: Literal[SWITCHES] = "auto"
    channels_last: Literal[SWITCHES] = "auto"
    cuda_graph: Literal[SWITCHES] = "auto"
    val_batch_size: PositiveInt = 256
    checkpoint_dir: Folder | None = "data/base/06_models/checkpoints"
    checkpoint_every: PositiveInt = 1
    resume: Annotated[
        StrictBool | Text,
        Words("false, true (the latest earlier run) or the id of the run to continue"),
    ] = False
    progress: StrictBool = True
    devices: PositiveInt | Literal["auto"] = 1


class TrainSettings(OptimiserParams, ModelParams):
    """``train`` less ``scoring``: what the train node builds its configs from."""

    def vae_config(self, image_size: int) -> VAEConfig:
        """The model's sizes (``ingest.image_size`` + the model keys)."""
        return VAEConfig(image_size=image_size, **self.model_dump(include=set(MODEL_KEYS)))

    def train_config(self, seed: int, device: str) -> TrainConfig:
        """The optimiser's settings (the top-level ``seed`` and ``device`` + the rest)."""
        return TrainConfig(seed=seed, device=device, **self.model_dump(include=set(TRAIN_KEYS)))


class ScoringParams(Section):
    """``train.scoring``: how the calibrated model scores (``ScoreConfig`` less the
    likelihood and its sigma, which are the training's, and ``seed``, the top level's)."""

    n_samples: PositiveInt = 10
    batch_size: PositiveInt = 64
    top_k_percent: Percent = 5.0
    residual_sigma: Annotated[Number, Field(ge=0)] = 1.0
    filtered_top_k_percent: Percent = 0.25

    def score_config(self, likelihood: str, gaussian_sigma: float, seed: int) -> ScoreConfig:
        """The scoring settings of a model trained with ``likelihood`` and ``gaussian_sigma``."""
        return ScoreConfig(
            **self.model_dump(), likelihood=likelihood, gaussian_sigma=gaussian_sigma, seed=seed
        )


class TrainParams(TrainSettings):
    """``train``: read by the train pipeline (``scoring`` by its calibration node, whole)."""

    scoring: ScoringParams


class EvaluateParams(Section):
    """``evaluate``: what the evaluate pipeline computes beyond the scores."""

    n_bootstrap: PositiveInt
    n_examples: PositiveInt


class ScoreParams(Section):
    """``score``: the score pipeline, the operating point and the served model's limits."""

    input_dir: Folder | None
    flag_score: Literal[SCORE_NAMES]
    specificity: Fraction
    max_image_bytes: PositiveInt
    max_request_rows: PositiveInt
    max_request_bytes: PositiveInt
    heatmaps: StrictBool


class Parameters(BaseModel):
    """Every parameter of a run: the top-level values and the namespaces."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    seed: Annotated[int, Strict(), Field(ge=0, lt=2**63), Words("an integer in [0, 2**63)")]
    # Further checked with resolve_device (``_check_device``).
    device: Annotated[Text, Words("'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'")]
    # Runtime parameters of the catalog (CATALOG_PARAMS); absent unless given (not null).
    raw_dir: Folder = None  # type: ignore[assignment]
    real_dir: Folder = None  # type: ignore[assignment]
    ingest: IngestParams
    train: TrainParams
    evaluate: EvaluateParams
    score: ScoreParams


# The train keys of each config (the train node's split) and of the calibration.
SCORING_KEY = "scoring"
MODEL_KEYS = tuple(ModelParams.model_fields)
TRAIN_KEYS = tuple(OptimiserParams.model_fields)
# Runtime parameters that the catalog reads (``${runtime_params:...}``), not a node: the
# dataset whose path each one sets (conf/kermany/catalog.yml: raw_scans; conf/base: the
# real labelled scans evaluate scores as a transfer test, default ../shared/data).
CATALOG_PARAMS: dict[str, str] = {"raw_dir": "raw_scans", "real_dir": "real_scans"}
# Where parameters of earlier versions went, for the message that refuses the old name.
MOVED: dict[str, str] = {
    **{
        f"evaluate.{key}": f"train.{SCORING_KEY}.{key} (read by the train pipeline, which "
        "fixes how the model scores when it calibrates it)"
        for key in ScoringParams.model_fields
    },
    "evaluate.specificity": "score.specificity (the one operating point: evaluate, score "
    "and the served model all read it)",
}


# ------------------------------------------------------------------------ checking


def check_parameters(params: Mapping[str, Any]) -> None:
    """Check every parameter of a run.

    Args:
        params: The merged parameters (Kedro's ``context.params``, catalog ``parameters``).

    Raises:
        ParameterError: Listing every problem, each naming its full key.
    """
    problems = find_problems(params)
    if problems:
        raise ParameterError(problems)


def find_problems(params: Mapping[str, Any]) -> list[str]:
    """Every problem of ``params``, one line each; empty when all is well."""
    if not isinstance(params, Mapping):
        return [f"the parameters must be a mapping, got {shown(params)}"]
    parsed, problems, bad = _validate(Parameters, params)
    if "device" not in bad:
        problems += _check_device(params["device"])
    problems += _check_image_size(params, bad)
    if parsed is not None and not problems:
        problems += config_problems(parsed)
    return problems


def parse_train(params: Mapping[str, Any]) -> TrainSettings:
    """``params:train`` less ``scoring``, checked, with the defaults filled in.

    Raises:
        ParameterError: On a key the schema does not know or a value it refuses.
    """
    settings = {k: v for k, v in params.items() if k != SCORING_KEY}
    parsed, problems, _ = _validate(TrainSettings, settings, "train.")
    if parsed is None:
        raise ParameterError(problems)
    return parsed


def config_problems(params: Parameters) -> list[str]:
    """Build the science modules' configs from checked values: their own checks, last."""
    train = params.train
    builds = {
        "train": lambda: (
            train.vae_config(params.ingest.image_size),
            train.train_config(params.seed, params.device),
        ),
        f"train.{SCORING_KEY}": lambda: train.scoring.score_config(
            train.likelihood, train.gaussian_sigma, params.seed
        ),
    }
    problems = []
    for name, build in builds.items():
        try:
            build()
        except (TypeError, ValueError) as err:
            problems.append(f"{name}: {err}")
    return problems


def _validate(
    model: type[BaseModel], values: Mapping[str, Any], prefix: str = ""
) -> tuple[Any, list[str], set[str]]:
    """The model of ``values`` (``None`` when invalid), the problems, and the dotted keys
    with a problem (so that the checks across keys skip them)."""
    try:
        return model.model_validate(_text_keys(values)), [], set()
    except ValidationError as err:
        problems = explain(err, model, Parameters, prefix, MOVED)
    return None, list(problems.values()), set(problems)


def _text_keys(values: Mapping[Any, Any]) -> dict[str, Any]:
    """``values`` with every key a string (YAML's ``1:`` is then an unknown key ``1``)."""
    return {str(k): _text_keys(v) if isinstance(v, Mapping) else v for k, v in values.items()}


def _check_device(device: str) -> list[str]:
    if device in ("auto", "cpu"):  # always available: no need to load torch
        return []
    from oct_vae.training.device import resolve_device

    try:
        resolve_device(device)
    except RuntimeError as err:
        message = str(err)
        return [
            message if message.startswith(f"device={device!r}") else f"device={device!r}: {message}"
        ]
    return []


def _check_image_size(params: Mapping[str, Any], bad: set[str]) -> list[str]:
    """``ingest.image_size`` must suit the model: ``VAEConfig`` says whether it does."""
    if {"ingest", "ingest.image_size", "train", "train.n_blocks"} & bad:
        return []
    size = params["ingest"]["image_size"]
    n_blocks = params["train"].get("n_blocks", ModelParams.model_fields["n_blocks"].default)
    try:
        VAEConfig(image_size=size, n_blocks=n_blocks)
    except ValueError:
        step = 2**n_blocks
        smallest = max(step, 8)  # step is a power of two
        examples = ", ".join(str(smallest + step * i) for i in range(3))
        return [
            f"ingest.image_size={size}: must be a multiple of {step}, at least {smallest} "
            f"(the model halves it train.n_blocks={n_blocks} times), e.g. {examples}, ..."
        ]
    return []
