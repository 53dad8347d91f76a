"""Project settings. See https://docs.kedro.org/en/stable/kedro_project_setup/settings.html."""

from pathlib import Path

from kedro.config import OmegaConfigLoader
from kedro.utils import find_kedro_project

from oct_vae.hooks import (
    MainProcessOnlyHook,
    MissingInputsHook,
    MlflowArtifactsHook,
    MlflowRunStateHook,
    PrivateMlflowHook,
    RunIsolationHook,
    ScorerCopyCleanupHook,
)
from oct_vae.parameter_hook import CheckParametersHook


def project_root() -> str:
    """The Kedro project that holds the working directory (Kedro runs from any of its
    subfolders), else the working directory itself; absolute, for ``${project_root:}``."""
    here = Path.cwd()
    return (find_kedro_project(here) or here).resolve().as_posix()


_ISOLATION = RunIsolationHook()
HOOKS = (
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
# no OS user name recorded; see oct_vae.hooks). Pluggy lists the plugin under this name.
DISABLE_HOOKS_FOR_PLUGINS = ("kedro_mlflow", "kedro-mlflow")

CONFIG_LOADER_CLASS = OmegaConfigLoader
CONFIG_LOADER_ARGS = {
    "base_env": "base",
    "default_run_env": "local",
    # An environment (kermany, tiny, local) overrides only the parameter keys it sets.
    "merge_strategy": {"parameters": "soft"},
    "custom_resolvers": {"project_root": project_root},
}
