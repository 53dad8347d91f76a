"""Project settings. See https://docs.kedro.org/en/stable/kedro_project_setup/settings.html."""

from pathlib import Path

from kedro.config import OmegaConfigLoader
from kedro.utils import find_kedro_project
from omegaconf.resolvers import oc

from oct_vae.framework.hooks import (
    MainProcessOnlyHook,
    MissingInputsHook,
    MlflowArtifactsHook,
    MlflowRunStateHook,
    ModelRegistryHook,
    PrivateMlflowHook,
    RunIsolationHook,
    ScorerCopyCleanupHook,
)
from oct_vae.framework.parameter_hook import CheckParametersHook
from oct_vae.framework.requirements import pins
from oct_vae.framework.session_store import UniqueVersionSessionStore


def project_root() -> str:
    """The Kedro project that holds the working directory (Kedro runs from any of its
    subfolders), else the working directory itself; absolute, for ``${project_root:}``."""
    here = Path.cwd()
    return (find_kedro_project(here) or here).resolve().as_posix()


_ISOLATION = RunIsolationHook()
HOOKS = (
    # First: its trylast after_pipeline_run then runs after every other hook's (kedro-mlflow
    # logs and registers the model, MlflowRunStateHook closes the run) and tags the version.
    ModelRegistryHook(),
    _ISOLATION,
    MissingInputsHook(),
    PrivateMlflowHook(),
    MlflowArtifactsHook(),
    MlflowRunStateHook(),
    ScorerCopyCleanupHook(_ISOLATION),
    # After RunIsolationHook: among hooks marked tryfirst, the last registered runs first.
    MainProcessOnlyHook(),
    # Last: among hooks marked to run first, pluggy calls the last registered first, so
    # the parameters are checked before anything else looks at the data.
    CheckParametersHook(),
)
# PrivateMlflowHook replaces kedro-mlflow's own hook (same behaviour, no absolute paths and
# no OS user name recorded; see oct_vae.framework.hooks.mlflow_privacy). Pluggy lists the
# plugin under this name.
DISABLE_HOOKS_FOR_PLUGINS = ("kedro_mlflow", "kedro-mlflow")

# Kedro's session id is the run's save version, to the millisecond: two runs that start in
# the same millisecond would share it. This store gives each run of the project its own.
SESSION_STORE_CLASS = UniqueVersionSessionStore

CONFIG_LOADER_CLASS = OmegaConfigLoader
CONFIG_LOADER_ARGS = {
    "base_env": "base",
    "default_run_env": "local",
    # An environment (kermany, tiny, local) overrides only the parameter keys it sets.
    "merge_strategy": {"parameters": "soft"},
    # oc.env: conf/team/mlflow.yml reads MLFLOW_TRACKING_URI (Kedro allows environment
    # variables only in credentials unless the resolver is registered).
    "custom_resolvers": {"project_root": project_root, "pins": pins, "oc.env": oc.env},
}
