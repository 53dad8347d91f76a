"""Every parameter of the project, checked at once before anything runs.

``check_parameters`` takes the merged parameters of a run (``conf/base`` + the
environment + ``--params``) and raises one ``ParameterError`` that lists every problem:
unknown keys (with the closest known key), missing keys, wrong types (``true`` is not an
integer, ``16.0`` is not an integer, ``"5"`` is not a number) and values out of range,
each named by its full key, e.g. ``ingest.image_size=16``.

The ``train`` keys are the fields of ``VAEConfig`` and ``TrainConfig`` (less
``image_size``, ``seed`` and ``device``, which come from ``ingest`` and the top level), so
a new field is a parameter at once; ``image_size`` is checked by ``VAEConfig`` itself, the
device by ``resolve_device``, the likelihood against ``losses.LIKELIHOODS`` and
``score.flag_score`` against the scores ``scores.score_images`` computes. After the rules
below, the science modules' own configs are built from the values as a last check.

No Kedro, no MLflow: the project's Kedro hook (``oct_vae.framework.parameter_hook``) calls it
before every run, and anything else may call it as well.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from oct_vae.data.kermany import PROTOCOLS
from oct_vae.training.config import AMP_MODES, SWITCHES, TrainConfig
from oct_vae.training.device import resolve_device
from oct_vae.vae.config import (
    BASELINE_SCORES,
    EXTRA_SCORES,
    LIKELIHOODS,
    PAPER_SCORES,
    ScoreConfig,
    VAEConfig,
)

# params:train -> the model's and the optimiser's settings (see train/nodes.py), and
# train.scoring, how the calibrated model scores (scores.ScoreConfig, less the fields that
# come from the training settings and the top level).
SCORING_KEY = "scoring"
MODEL_KEYS = tuple(f.name for f in dataclasses.fields(VAEConfig) if f.name != "image_size")
TRAIN_KEYS = tuple(
    f.name for f in dataclasses.fields(TrainConfig) if f.name not in ("seed", "device")
)
# Every score ``score_images`` returns for a calibrated model: the columns of test_scores,
# the calibrated scores of vae_model, hence the choices of score.flag_score.
SCORE_NAMES = (*PAPER_SCORES, *BASELINE_SCORES, *EXTRA_SCORES)
# TrainConfig's choices (training.TrainConfig.__post_init__).


class ParameterError(ValueError):
    """Some parameters are unknown, missing, of the wrong type or out of range.

    Attributes:
        problems: One line per problem, each starting with the full key.
    """

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        lines = [
            f"{len(self.problems)} parameter problem(s); fix them in "
            "conf/<env>/parameters*.yml or in --params:",
            *(f"  - {p}" for p in self.problems),
        ]
        super().__init__("\n".join(lines))


@dataclass(frozen=True)
class Rule:
    """What one parameter accepts.

    Attributes:
        allowed: The accepted values, in words ("a positive integer").
        accepts: The test.
        required: Whether the key must be present.
        wants_text: Whether a string is among the accepted values (a YAML-typed ``off``
            or ``2024`` then gets a hint to quote it).
    """

    allowed: str
    accepts: Callable[[Any], bool]
    required: bool = True
    wants_text: bool = False


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def integer(minimum: int = 1, maximum: int | None = None, words: str = "") -> Rule:
    """An integer in [minimum, maximum] (``bool`` and ``16.0`` are not integers)."""
    if not words:
        words = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        if maximum is not None:
            words = f"an integer in [{minimum}, {maximum}]"
    return Rule(
        words,
        lambda v: _is_int(v) and v >= minimum and (maximum is None or v <= maximum),
    )


def number(
    low: float, high: float | None = None, low_open: bool = True, high_open: bool = True
) -> Rule:
    """A finite number (an integer is a number too) between ``low`` and ``high``."""
    if high is None:
        words = f"a number {'>' if low_open else '>='} {low:g}"
    else:
        left, right = "(" if low_open else "[", ")" if high_open else "]"
        words = f"a number in {left}{low:g}, {high:g}{right}"

    def accepts(v: Any) -> bool:
        if not _is_number(v):
            return False
        above = v > low if low_open else v >= low
        below = high is None or (v < high if high_open else v <= high)
        return above and below

    return Rule(words, accepts)


def choice(options: Sequence[str]) -> Rule:
    """One of the strings ``options``."""
    return Rule(
        "one of " + ", ".join(repr(o) for o in options),
        lambda v: isinstance(v, str) and v in options,
        wants_text=True,
    )


def text(words: str = "a non-empty string") -> Rule:
    """A string that is not blank."""
    return Rule(words, lambda v: isinstance(v, str) and bool(v.strip()), wants_text=True)


BOOLEAN = Rule("true or false", lambda v: isinstance(v, bool))


def optional(rule: Rule, required: bool = True) -> Rule:
    """``rule`` or null."""
    return Rule(
        f"null or {rule.allowed}",
        lambda v: v is None or rule.accepts(v),
        required,
        rule.wants_text,
    )


def either(first: Rule, second: Rule, words: str = "") -> Rule:
    """``first`` or ``second``."""
    return Rule(
        words or f"{first.allowed} or {second.allowed}",
        lambda v: first.accepts(v) or second.accepts(v),
        wants_text=first.wants_text or second.wants_text,
    )


def not_required(rule: Rule) -> Rule:
    return dataclasses.replace(rule, required=False)


PROBABILITY = number(0, 1)
PERCENT = number(0, 100, high_open=False)

INGEST: dict[str, Rule] = {
    # Further checked against the model (``_check_image_size``).
    "image_size": integer(),
    "val_fraction": PROBABILITY,
    "test_normals": integer(),
    "test_per_disease": integer(),
    "max_train_normals": optional(integer()),
    "max_image_pixels": integer(),
    "workers": integer(0, words="an integer >= 0 (0 = all cores)"),
    # kermany.PROTOCOLS: paper (our own draw) or official (the dataset's test folder).
    "protocol": choice(PROTOCOLS),
}
EVALUATE: dict[str, Rule] = {
    "n_bootstrap": integer(),
    "n_examples": integer(),
}
SCORING: dict[str, Rule] = {
    "n_samples": integer(),
    "batch_size": integer(),
    "top_k_percent": PERCENT,
    "residual_sigma": number(0, low_open=False),
    "filtered_top_k_percent": PERCENT,
}
# Where parameters of earlier versions went, for the message that refuses the old name.
MOVED: dict[str, str] = {
    **{
        f"evaluate.{key}": f"train.{SCORING_KEY}.{key} (read by the train pipeline, which "
        "fixes how the model scores when it calibrates it)"
        for key in SCORING
    },
    "evaluate.specificity": "score.specificity (the one operating point: evaluate, score "
    "and the served model all read it)",
}
SCORE: dict[str, Rule] = {
    "input_dir": optional(text("a folder (a string)")),
    "flag_score": choice(SCORE_NAMES),
    "specificity": PROBABILITY,
    "max_image_bytes": integer(),
    "max_request_rows": integer(),
    "max_request_bytes": integer(),
    "heatmaps": BOOLEAN,
}
# Explicit rules of the train keys; a field without one gets a rule from its type.
_TRAIN_RULES: dict[str, Rule] = {
    "in_channels": integer(1, 1, words="1 (OCT scans are grayscale)"),
    "width": integer(),
    "latent_dim": integer(),
    # Further checked against ingest.image_size (``_check_image_size``).
    "n_blocks": integer(),
    "epochs": integer(),
    "batch_size": integer(),
    "lr": number(0),
    "beta": number(0, low_open=False),
    "likelihood": choice(LIKELIHOODS),
    "gaussian_sigma": number(0),
    "amp": choice(AMP_MODES),
    "compile": choice(SWITCHES),
    "channels_last": choice(SWITCHES),
    "cuda_graph": choice(SWITCHES),
    "val_batch_size": integer(),
    "checkpoint_dir": optional(text("a folder (a string)")),
    "checkpoint_every": integer(),
    # train/nodes.py: checkpoint_folders.
    "resume": either(
        BOOLEAN, text(), "false, true (the latest earlier run) or the id of the run to continue"
    ),
    "progress": BOOLEAN,
    "devices": either(integer(), choice(("auto",)), "a positive integer or 'auto'"),
}


def _rule_from_type(hint: Any) -> Rule:
    """The type-only rule of a dataclass field (``int``, ``float``, ``str | None`` ...)."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        rules = [_rule_from_type(a) for a in args if a is not type(None)]
        rule = rules[0]
        for other in rules[1:]:
            rule = either(rule, other)
        return optional(rule) if type(None) in args else rule
    simple = {
        bool: BOOLEAN,
        int: Rule("an integer", _is_int),
        float: Rule("a number", _is_number),
        str: Rule("a string", lambda v: isinstance(v, str), wants_text=True),
    }
    return simple.get(hint, Rule(f"a {getattr(hint, '__name__', hint)}", lambda v: True))


def _train_rules() -> dict[str, Rule]:
    hints = {**typing.get_type_hints(VAEConfig), **typing.get_type_hints(TrainConfig)}
    return {
        key: not_required(_TRAIN_RULES.get(key) or _rule_from_type(hints[key]))
        for key in (*MODEL_KEYS, *TRAIN_KEYS)
    }


TRAIN: dict[str, Any] = {**_train_rules(), SCORING_KEY: SCORING}
NAMESPACES: dict[str, dict[str, Any]] = {
    "ingest": INGEST,
    "train": TRAIN,
    "evaluate": EVALUATE,
    "score": SCORE,
}
# Top-level values (the namespaces are checked on their own).
TOP_LEVEL: dict[str, Rule] = {
    "seed": integer(0, 2**63 - 1, words="an integer in [0, 2**63)"),
    # Further checked with resolve_device (``_check_device``).
    "device": text("'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'"),
    # conf/kermany/catalog.yml: ``--params raw_dir=<folder>``, a runtime parameter.
    "raw_dir": not_required(text("a folder (a string)")),
    # conf/base/catalog.yml, real_scans: ``--params real_dir=<folder>`` of real labelled
    # scans that evaluate scores as a transfer test (default ../shared/data).
    "real_dir": not_required(text("a folder (a string)")),
}
# Runtime parameters that the catalog reads (``${runtime_params:...}``), not a node: the
# dataset whose path each one sets.
CATALOG_PARAMS: dict[str, str] = {"raw_dir": "raw_scans", "real_dir": "real_scans"}


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
        return [f"the parameters must be a mapping, got {_shown(params)}"]
    problems: list[str] = []
    bad: set[str] = set()  # keys with a problem, so that later checks skip them
    known = [*TOP_LEVEL, *NAMESPACES]
    for key, value in params.items():
        if key in NAMESPACES:
            if not isinstance(value, Mapping):
                problems.append(
                    f"{key}={_shown(value)}: must be a mapping of {', '.join(NAMESPACES[key])}"
                )
                bad.add(key)
            else:
                problems += _check_section(value, NAMESPACES[key], f"{key}.", bad)
        elif key in TOP_LEVEL:
            problems += _check_value(f"{key}", value, TOP_LEVEL[key], bad)
        else:
            problems.append(_unknown(str(key), value, "", known))
    for key in known:
        if key in params:
            continue
        if key in NAMESPACES:
            problems.append(f"{key} is missing")
        elif TOP_LEVEL[key].required:
            problems.append(f"{key} is missing: must be {TOP_LEVEL[key].allowed}")
        bad.add(key)
    if "device" not in bad:
        problems += _check_device(params["device"])
    problems += _check_image_size(params, bad)
    if not problems:
        problems += _check_configs(params)
    return problems


def _check_section(
    section: Mapping[str, Any], rules: dict[str, Any], prefix: str, bad: set[str]
) -> list[str]:
    problems = []
    for key, value in section.items():
        full = f"{prefix}{key}"
        if isinstance(rules.get(key), dict):  # a nested section (train.scoring)
            if isinstance(value, Mapping):
                problems += _check_section(value, rules[key], f"{full}.", bad)
            else:
                problems.append(f"{full}={_shown(value)}: must be a mapping of "
                                f"{', '.join(rules[key])}")
                bad.add(full)
        elif key in rules:
            problems += _check_value(full, value, rules[key], bad)
        else:
            problems.append(_unknown(str(key), value, prefix, list(rules)))
    for key, rule in rules.items():
        if isinstance(rule, dict):
            if key not in section:
                problems.append(f"{prefix}{key} is missing")
                bad.add(f"{prefix}{key}")
        elif rule.required and key not in section:
            problems.append(f"{prefix}{key} is missing: must be {rule.allowed}")
            bad.add(f"{prefix}{key}")
    return problems


def _check_value(key: str, value: Any, rule: Rule, bad: set[str]) -> list[str]:
    if rule.accepts(value):
        return []
    bad.add(key)
    return [f"{key}={_shown(value)}: must be {rule.allowed}{_hint(key, value, rule)}"]


def _hint(key: str, value: Any, rule: Rule) -> str:
    """How to write a value that YAML typed differently from what was meant."""
    if isinstance(value, (bool, int, float)) and rule.wants_text:
        # YAML reads on/off/yes/no as booleans and digits as numbers.
        word = {True: "on", False: "off"}.get(value) if isinstance(value, bool) else str(value)
        if rule.accepts(word):
            return f" (to pass the string {word!r}, quote it: --params '{key}=\"{word}\"')"
    if isinstance(value, str) and not rule.wants_text:
        try:
            float(value)
        except ValueError:
            return ""
        return " (a string: write the number without quotes)"
    return ""


def _unknown(key: str, value: Any, prefix: str, known: list[str]) -> str:
    full = f"{prefix}{key}"
    line = f"{full}={_shown(value)}: unknown parameter"
    if full in MOVED:
        return f"{line}; it is now {MOVED[full]}"
    guess = _suggest(key, prefix, known)
    where = f"{prefix[:-1]} takes" if prefix else "the top level takes"
    return f"{line}; {guess}{where}: {', '.join(known)}"


def _suggest(key: str, prefix: str, known: list[str]) -> str:
    """'did you mean train.epochs? ' or ''."""
    elsewhere = [f"{ns}.{key}" for ns, rules in NAMESPACES.items() if key in rules]
    if key in SCORING:
        elsewhere.append(f"train.{SCORING_KEY}.{key}")
    if prefix and key in TOP_LEVEL:
        elsewhere.insert(0, f"{key} (top level)")
    if not elsewhere:
        close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
        elsewhere = [f"{prefix}{c}" for c in close]
    return f"did you mean {' or '.join(elsewhere)}? " if elsewhere else ""


def _shown(value: Any) -> str:
    shown = repr(value)
    if len(shown) > 80:
        shown = shown[:77] + "..."
    return f"{shown} ({type(value).__name__})" if not isinstance(value, str) else shown


def _check_device(device: str) -> list[str]:
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
    n_blocks = params["train"].get("n_blocks", _default(VAEConfig, "n_blocks"))
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


def _default(cls: type, name: str) -> Any:
    return next(f.default for f in dataclasses.fields(cls) if f.name == name)


def _check_configs(params: Mapping[str, Any]) -> list[str]:
    """Build the science modules' configs from the values: their own checks, last."""
    train = params["train"]
    builds = {
        "train": lambda: (
            VAEConfig(
                image_size=params["ingest"]["image_size"],
                **{k: v for k, v in train.items() if k in MODEL_KEYS},
            ),
            TrainConfig(
                seed=params["seed"],
                device=params["device"],
                **{k: v for k, v in train.items() if k in TRAIN_KEYS},
            ),
        ),
        f"train.{SCORING_KEY}": lambda: ScoreConfig(**train[SCORING_KEY], seed=params["seed"]),
    }
    problems = []
    for name, build in builds.items():
        try:
            build()
        except (TypeError, ValueError) as err:
            problems.append(f"{name}: {err}")
    return problems


def flat_keys(overrides: Mapping[str, Any], prefix: str = "") -> list[str]:
    """The dotted keys of the leaves of ``--params`` (``{"a": {"b": 1}}`` -> ``["a.b"]``)."""
    keys: list[str] = []
    for key, value in overrides.items():
        full = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            keys += flat_keys(value, f"{full}.")
        else:
            keys.append(full)
    return keys


def _reads(key: str, reads: set[str]) -> bool:
    # A node reading a namespace ("params:train") reads every key in it; "" reads all.
    return any(r == "" or key == r or key.startswith(f"{r}.") or r.startswith(f"{key}.")
               for r in reads)


def unread_overrides(
    overrides: Mapping[str, Any], reads: set[str], readers: Mapping[str, set[str]],
    selected: str,
) -> list[str]:
    """The ``--params`` keys that no node of the run reads, each with the pipelines that do.

    Args:
        overrides: The run's ``--params`` (nested, as Kedro parses them).
        reads: The parameter keys the run's nodes read (``params:`` inputs without the
            prefix; ``""`` for a node that reads all parameters).
        readers: The same for every registered pipeline, by name.
        selected: The run's pipeline(s), in words, for the message.
    """
    problems = []
    for key in flat_keys(overrides):
        if _reads(key, reads):
            continue
        owners = sorted(name for name, keys in readers.items() if _reads(key, keys))
        where = (f"it is read by the {' and '.join(owners)} pipeline"
                 f"{'s' if len(owners) > 1 else ''}: run that instead"
                 if owners else "no pipeline reads it")
        problems.append(f"{key}: no node of {selected} reads it, so it would change nothing; "
                        f"{where}, or leave it out")
    return problems


def check_overrides(
    overrides: Mapping[str, Any], reads: set[str], readers: Mapping[str, set[str]],
    selected: str,
) -> None:
    """Refuse ``--params`` that the run would not read (``unread_overrides``).

    Raises:
        ParameterError: Listing each such key and the pipelines that read it.
    """
    problems = unread_overrides(overrides, reads, readers, selected)
    if problems:
        raise ParameterError(problems)
