"""The Model Registry: which version of ``oct_vae_scorer`` is the ``champion``.

Every training run registers its ``oct_vae_scorer`` as a new version of the registered
model ``oct_vae_scorer`` (``registered_model_name`` in the inference pipeline's
``log_model_kwargs``). When the run also evaluated the model, the version is tagged
(``oct_vae.framework.hooks.registry.ModelRegistryHook``) with:

* ``auc_all``: the image-level ``All`` AUC of the score the model flags with
  (``score.flag_score``), and ``flag_score`` / ``auc_metric`` naming it;
* ``test_split``: a fingerprint of the test split (SHA-1 over the manifest's test rows'
  pixel SHA-1s, in row order) and ``kedro_env``: the Kedro environment of the run;
* ``data_fingerprint`` (the checkpoint's training data) and ``kedro_run_id``.

:func:`choose_champion` is the rule, :func:`promote` applies it: among the versions
evaluated on the **same test split in the same Kedro environment** as the newest evaluated
version of that environment, the one with the best ``auc_all`` gets the alias
``champion``. Versions of other splits or environments are never compared: a previous
champion evaluated elsewhere is replaced, and the log says so. A tie keeps the current
champion (else the newest tied version wins), so running it again changes nothing.

Only MLflow's client API is used here (no Kedro): ``kedro run --pipeline promote`` and
the registration hook call it, and anything else may.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

# The registered model every training run adds a version to (the logged model's name).
MODEL_NAME = "oct_vae_scorer"
ALIAS = "champion"
# Model version tags (see the module).
TAG_AUC = "auc_all"
TAG_FLAG = "flag_score"
TAG_METRIC = "auc_metric"
TAG_SPLIT = "test_split"
TAG_ENV = "kedro_env"
TAG_DATA = "data_fingerprint"
TAG_RUN = "kedro_run_id"
# The environment recorded for a run without --env (conf/base + conf/local).
DEFAULT_ENV = "base"


def split_fingerprint(manifest: Any) -> str:
    """SHA-1 over the pixel SHA-1s of the manifest's test rows, in row order: two runs
    evaluated on the same scans in the same order have the same one.

    Args:
        manifest: ``oct_manifest`` (a DataFrame with ``split``, ``row`` and ``sha1``).
    """
    test = manifest[manifest["split"] == "test"].sort_values("row")
    digest = hashlib.sha1()
    for sha1 in test["sha1"].astype(str):
        digest.update(sha1.encode() + b"\n")
    return digest.hexdigest()


def version_tags(
    *,
    kedro_run_id: str,
    env: str | None,
    data_fingerprint: str | None = None,
    flag_score: str | None = None,
    auc_metric: str | None = None,
    auc: float | None = None,
    test_split: str | None = None,
) -> dict[str, str]:
    """The tags of one model version; the evaluation ones only when there is an AUC."""
    tags = {TAG_RUN: str(kedro_run_id), TAG_ENV: env or DEFAULT_ENV}
    if data_fingerprint:
        tags[TAG_DATA] = str(data_fingerprint)
    if auc is not None and math.isfinite(auc) and test_split:
        tags.update(
            {
                TAG_AUC: repr(float(auc)),
                TAG_FLAG: str(flag_score),
                TAG_METRIC: str(auc_metric),
                TAG_SPLIT: test_split,
            }
        )
    return tags


@dataclass(frozen=True)
class Candidate:
    """One model version as the rule sees it.

    Attributes:
        version: The version number.
        auc: ``auc_all``, or ``None`` when the version was not evaluated.
        test_split: ``test_split``, or ``None``.
        env: ``kedro_env``, or ``None``.
    """

    version: int
    auc: float | None
    test_split: str | None
    env: str | None

    @property
    def evaluated(self) -> bool:
        return self.auc is not None and self.test_split is not None and self.env is not None

    @classmethod
    def from_tags(cls, version: int | str, tags: Mapping[str, str]) -> Candidate:
        try:
            auc = float(tags[TAG_AUC])
        except (KeyError, TypeError, ValueError):
            auc = None
        if auc is not None and not math.isfinite(auc):
            auc = None
        return cls(int(version), auc, tags.get(TAG_SPLIT), tags.get(TAG_ENV))


@dataclass(frozen=True)
class Decision:
    """What :func:`choose_champion` decided.

    Attributes:
        version: The champion after the decision (``None``: there is none to choose).
        auc: Its ``auc_all``.
        previous: The champion before (``None``: there was none).
        changed: Whether the alias moves.
        compared: The versions that competed (same split and environment).
        message: One line saying what was done and why.
    """

    version: int | None
    auc: float | None
    previous: int | None
    changed: bool
    compared: tuple[int, ...]
    message: str


def choose_champion(candidates: Iterable[Candidate], current: int | None, env: str) -> Decision:
    """The champion among ``candidates`` for a promotion run in Kedro environment ``env``.

    The reference is the newest evaluated version of ``env``; only versions evaluated on
    its test split in ``env`` compete; the best ``auc_all`` wins; a tie keeps ``current``,
    else the newest of the tied versions wins.
    """
    pool = [c for c in candidates if c.evaluated and c.env == env]
    if not pool:
        message = (
            f"no version of {MODEL_NAME} was evaluated in the Kedro environment '{env}': "
            f"the champion stays {_name(current)}"
        )
        return Decision(current, None, current, False, (), message)
    reference = max(pool, key=lambda c: c.version)
    same = [c for c in pool if c.test_split == reference.test_split]
    best_auc = max(c.auc for c in same)
    best = [c for c in same if c.auc == best_auc]
    winner = next((c for c in best if c.version == current), max(best, key=lambda c: c.version))
    compared = tuple(sorted(c.version for c in same))
    split = f"test split {reference.test_split[:12]} in env '{env}'"
    message = _decision_message(winner, current, compared, split)
    return Decision(
        winner.version, winner.auc, current, winner.version != current, compared, message
    )


def _decision_message(
    winner: Candidate, current: int | None, compared: tuple[int, ...], split: str
) -> str:
    """One line: who is champion now, among how many versions of ``split``, and why."""
    if winner.version == current:
        return (
            f"champion stays version {current} (All AUC {winner.auc:.4f}), the best of "
            f"{len(compared)} version(s) evaluated on {split}"
        )
    if current is None:
        before = "no champion before"
    elif current in compared:
        before = f"previous champion: version {current}"
    else:
        before = (
            f"previous champion: version {current}, evaluated on another split or "
            "environment (not compared)"
        )
    return (
        f"champion is now version {winner.version} (All AUC {winner.auc:.4f}), the best of "
        f"{len(compared)} version(s) evaluated on {split}; {before}"
    )


def _name(version: int | None) -> str:
    return "none" if version is None else f"version {version}"


# ----------------------------------------------------------------- MLflow client side
def _champion_version(client: Any, name: str) -> Any | None:
    """The model version that holds the alias, or ``None`` (no alias, or no registered
    model)."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, ALIAS)
    except MlflowException as exc:  # no such model, or no such alias
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return None
        raise


def current_champion(client: Any, name: str = MODEL_NAME) -> int | None:
    """The version that holds the alias, or ``None`` (no alias, or no registered model)."""
    version = _champion_version(client, name)
    return None if version is None else int(version.version)


def champion_env(client: Any, name: str = MODEL_NAME) -> str | None:
    """The ``kedro_env`` of the version holding the alias (``base`` when the version has
    no such tag), or ``None`` when there is no champion."""
    version = _champion_version(client, name)
    return None if version is None else (version.tags or {}).get(TAG_ENV) or DEFAULT_ENV


def list_candidates(client: Any, name: str = MODEL_NAME) -> list[Candidate]:
    """Every version of ``name`` with its tags."""
    versions = client.search_model_versions(f"name = '{name}'")
    return [Candidate.from_tags(v.version, v.tags or {}) for v in versions]


def promote(client: Any, env: str | None, name: str = MODEL_NAME, attempts: int = 5) -> Decision:
    """Apply :func:`choose_champion` to the registered model and move the alias.

    Safe when several runs promote at once (two first runs of a team both find no champion):
    after every move of the alias the state is read again and the rule applied again, until
    it leaves the alias where it is. A write that loses a race (the server refuses a second
    creation of the alias) or is overwritten by a run that read an older state is redone,
    so the alias ends on the rule's choice over every version tagged by then.

    Args:
        client: An ``mlflow.MlflowClient`` of the tracking/registry store.
        env: The Kedro environment whose versions compete (``None``: ``base``).
        attempts: Moves of the alias tried before giving up with the last error.
    """
    from mlflow.exceptions import MlflowException

    applied: Decision | None = None
    error: MlflowException | None = None
    for _ in range(attempts):
        current = current_champion(client, name)
        decision = choose_champion(list_candidates(client, name), current, env or DEFAULT_ENV)
        if not decision.changed or decision.version is None:
            if applied is not None and applied.version == decision.version:
                decision = applied  # what this call did, confirmed by reading it back
            log.info("%s: %s", name, decision.message)
            return decision
        try:
            client.set_registered_model_alias(name, ALIAS, str(decision.version))
        except MlflowException as exc:  # e.g. a concurrent run created the alias first
            log.info("%s: moving %s to version %s failed (%s); reading the registry again",
                     name, ALIAS, decision.version, str(exc).splitlines()[0][:200])
            error = exc
            continue
        applied = decision
    raise RuntimeError(
        f"{name}: the {ALIAS} alias did not settle after {attempts} attempts (other runs "
        "promoting at the same time?); run `kedro run --pipeline promote` again"
    ) from error


def promote_first(client: Any, env: str | None, name: str = MODEL_NAME) -> Decision | None:
    """:func:`promote` when no version of ``env`` holds the alias: there is no champion, or
    it belongs to another Kedro environment (one tracking server shared by several). A
    champion of ``env`` stays: only ``kedro run --pipeline promote`` moves it (``None``)."""
    if champion_env(client, name) == (env or DEFAULT_ENV):
        return None
    return promote(client, env, name)


def versions_of_run(client: Any, run_id: str, name: str = MODEL_NAME) -> list[int]:
    """The versions of ``name`` registered from MLflow run ``run_id``."""
    found = client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
    return sorted(int(v.version) for v in found)


def tag_versions(
    client: Any, versions: Sequence[int], tags: Mapping[str, str], name: str = MODEL_NAME
) -> None:
    for version in versions:
        for key, value in tags.items():
            client.set_model_version_tag(name, str(version), key, value)
