"""The Model Registry's rules (``oct_vae.framework.registry``): which version becomes ``champion``,
on a real (SQLite) MLflow Model Registry where the store matters."""

from __future__ import annotations

import logging

import mlflow
import pandas as pd
import pytest
from mlflow.exceptions import MlflowException

from oct_vae.framework import registry
from oct_vae.framework.registry import Candidate, choose_champion

SPLIT_A = "a" * 40
SPLIT_B = "b" * 40


def cand(version: int, auc: float | None, split: str | None = SPLIT_A, env: str = "base"):
    return Candidate(version, auc, split, env)


# ------------------------------------------------------------------------- the rule
def test_the_best_auc_on_the_newest_versions_split_wins():
    decision = choose_champion([cand(1, 0.80), cand(2, 0.90), cand(3, 0.85)], None, "base")
    assert (decision.version, decision.auc, decision.changed) == (2, 0.90, True)
    assert decision.compared == (1, 2, 3)
    assert "no champion before" in decision.message


def test_other_splits_are_never_compared():
    # Version 1 scored higher, but on another test split: the newest version's split decides.
    versions = [cand(1, 0.99, SPLIT_B), cand(2, 0.70), cand(3, 0.75)]
    decision = choose_champion(versions, 1, "base")
    assert (decision.version, decision.compared) == (3, (2, 3))
    assert "another split or environment (not compared)" in decision.message


def test_other_environments_are_ignored():
    versions = [cand(1, 0.80), cand(2, 0.99, env="tiny"), cand(3, 0.95, SPLIT_B, env="tiny")]
    assert choose_champion(versions, None, "base").version == 1
    # In `tiny`, its own newest split (B) decides, whatever base's versions scored.
    assert choose_champion(versions, 1, "tiny").compared == (3,)


def test_versions_without_an_evaluation_never_compete():
    versions = [cand(1, 0.80), cand(2, None, None), Candidate(3, 0.99, None, "base")]
    decision = choose_champion(versions, None, "base")
    assert (decision.version, decision.compared) == (1, (1,))


def test_nothing_evaluated_keeps_the_champion():
    decision = choose_champion([cand(1, None, None)], 4, "base")
    assert (decision.version, decision.changed, decision.compared) == (4, False, ())
    assert choose_champion([], None, "base").version is None


def test_a_tie_keeps_the_champion_and_otherwise_takes_the_newest():
    assert choose_champion([cand(1, 0.9), cand(2, 0.9)], 1, "base").changed is False
    assert choose_champion([cand(1, 0.9), cand(2, 0.9)], None, "base").version == 2


def test_choosing_again_changes_nothing():
    versions = [cand(1, 0.80), cand(2, 0.90), cand(3, 0.85)]
    first = choose_champion(versions, None, "base")
    second = choose_champion(versions, first.version, "base")
    assert (second.version, second.changed) == (2, False)
    assert second.message.startswith("champion stays version 2")


def test_candidates_read_from_tags():
    tags = registry.version_tags(
        kedro_run_id="r1",
        env=None,
        data_fingerprint="f" * 40,
        flag_score="reconstruction",
        auc_metric="auc_reconstruction_all",
        auc=0.8125,
        test_split=SPLIT_A,
    )
    assert tags[registry.TAG_ENV] == "base"
    assert Candidate.from_tags("7", tags) == Candidate(7, 0.8125, SPLIT_A, "base")
    # No AUC (a train-only run) or a NaN AUC: not evaluated, no evaluation tags.
    for auc in (None, float("nan")):
        bare = registry.version_tags(kedro_run_id="r2", env="tiny", auc=auc, test_split=SPLIT_A)
        assert registry.TAG_AUC not in bare and registry.TAG_SPLIT not in bare
        assert not Candidate.from_tags(1, bare).evaluated


def test_split_fingerprint_depends_on_the_test_rows_only_and_their_order():
    manifest = pd.DataFrame(
        {
            "split": ["test", "train", "test", "val"],
            "row": [1, 0, 0, 0],
            "sha1": ["t1", "x", "t0", "y"],
        }
    )
    base = registry.split_fingerprint(manifest)
    other_train = manifest.assign(sha1=["t1", "changed", "t0", "y"])
    assert registry.split_fingerprint(other_train) == base
    assert registry.split_fingerprint(manifest.iloc[::-1]) == base  # row order, not file order
    swapped = manifest.assign(row=[0, 0, 1, 0])
    assert registry.split_fingerprint(swapped) != base


# -------------------------------------------------------- on a real Model Registry
@pytest.fixture
def client(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    return mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)


def _add_version(client, auc: float | None, split: str = SPLIT_A, env: str = "base") -> int:
    if not client.search_registered_models(f"name = '{registry.MODEL_NAME}'"):
        client.create_registered_model(registry.MODEL_NAME)
    version = client.create_model_version(registry.MODEL_NAME, "file:///nonexistent/model")
    tags = registry.version_tags(
        kedro_run_id="r", env=env, flag_score="reconstruction",
        auc_metric="auc_reconstruction_all", auc=auc, test_split=split,
    )
    registry.tag_versions(client, [int(version.version)], tags)
    return int(version.version)


def test_promote_moves_the_alias_and_says_so(client, caplog):
    assert registry.current_champion(client) is None  # no registered model yet
    v1 = _add_version(client, 0.80)
    assert registry.current_champion(client) is None  # a model, no alias
    caplog.set_level(logging.INFO, logger="oct_vae.framework.registry")
    assert registry.promote(client, "base").version == v1
    v2 = _add_version(client, 0.90)
    _add_version(client, 0.99, SPLIT_B, env="tiny")
    decision = registry.promote(client, None)
    assert (decision.version, decision.previous, decision.changed) == (v2, v1, True)
    assert registry.current_champion(client) == v2
    assert f"champion is now version {v2} (All AUC 0.9000)" in caplog.text
    assert f"previous champion: version {v1}" in caplog.text
    again = registry.promote(client, "base")
    assert (again.version, again.changed) == (v2, False)
    alias = client.get_model_version_by_alias(registry.MODEL_NAME, registry.ALIAS)
    assert int(alias.version) == v2


class _RacingClient:
    """A real registry client; on its first alias move, another run acts first."""

    def __init__(self, client, other):
        self._client, self._other, self.moves = client, other, []

    def __getattr__(self, name):
        return getattr(self._client, name)

    def set_registered_model_alias(self, name, alias, version):
        self.moves.append(int(version))
        if self._other is not None:
            other, self._other = self._other, None
            if other(self._client):  # the other run's write won and ours was refused
                raise MlflowException("duplicate key value violates unique constraint "
                                      '"registered_model_alias_pk"')
        self._client.set_registered_model_alias(name, alias, version)


def test_promote_redecides_after_losing_a_race_for_the_alias(client):
    v1, v2 = _add_version(client, 0.90), _add_version(client, 0.80)

    def other_run_sets_v2(real):  # a concurrent first run that knew only its own version
        real.set_registered_model_alias(registry.MODEL_NAME, registry.ALIAS, str(v2))
        return True

    racing = _RacingClient(client, other_run_sets_v2)
    decision = registry.promote(racing, "base")
    assert racing.moves == [v1, v1]  # refused once, decided again from v2, moved
    assert (decision.version, decision.previous, decision.changed) == (v1, v2, True)
    assert registry.current_champion(client) == v1


def test_promote_repairs_an_alias_written_from_a_stale_read(client):
    v1 = _add_version(client, 0.80)
    v2 = int(client.create_model_version(registry.MODEL_NAME, "file:///x").version)

    def other_run_finishes_better(real):  # v2 is evaluated and made champion meanwhile
        tags = registry.version_tags(kedro_run_id="r2", env="base", flag_score="reconstruction",
                                     auc_metric="auc_reconstruction_all", auc=0.95,
                                     test_split=SPLIT_A)
        registry.tag_versions(real, [v2], tags)
        real.set_registered_model_alias(registry.MODEL_NAME, registry.ALIAS, str(v2))
        return False  # then our write, from a read that saw only v1, overwrites it

    racing = _RacingClient(client, other_run_finishes_better)
    decision = registry.promote(racing, "base")
    assert racing.moves == [v1, v2]
    assert decision.version == v2 and registry.current_champion(client) == v2


def test_promote_gives_up_with_a_clear_error_when_the_alias_never_settles(client):
    _add_version(client, 0.80)

    class Refusing(_RacingClient):
        def set_registered_model_alias(self, name, alias, version):
            raise MlflowException("database is locked")

    with pytest.raises(RuntimeError, match="did not settle after 3 attempts.*--pipeline promote"):
        registry.promote(Refusing(client, None), "base", attempts=3)
    assert registry.current_champion(client) is None


def test_a_champion_of_another_environment_is_replaced_by_the_first_of_this_one(client):
    """One store shared by several environments (the team server): each run's first
    evaluated version of its environment takes the alias from another environment's
    champion; a champion of the run's own environment stays."""
    assert registry.champion_env(client) is None and registry.promote_first(client, "tiny")
    tiny = _add_version(client, 0.99, SPLIT_B, env="tiny")
    assert registry.promote_first(client, "tiny").version == tiny
    assert registry.champion_env(client) == "tiny"
    base = _add_version(client, 0.60)  # worse, but of another environment: not compared
    decision = registry.promote_first(client, "base")
    assert (decision.version, decision.previous, decision.compared) == (base, tiny, (base,))
    assert registry.champion_env(client) == "base"
    _add_version(client, 0.999, SPLIT_B, env="tiny")  # a better tiny one never steals it
    assert registry.promote_first(client, "base") is None
    assert registry.promote(client, "base").version == base
    assert registry.current_champion(client) == base
