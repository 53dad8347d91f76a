"""Project settings. See https://docs.kedro.org/en/stable/kedro_project_setup/settings.html."""

from pathlib import Path

from kedro.config import OmegaConfigLoader
from kedro.utils import find_kedro_project

from oct_vae.hooks import MissingInputsHook, MlflowArtifactsHook


def project_root() -> str:
    """The Kedro project that holds the working directory (Kedro runs from any of its
    subfolders), else the working directory itself; absolute, for ``${project_root:}``."""
    here = Path.cwd()
    return (find_kedro_project(here) or here).resolve().as_posix()


HOOKS = (MissingInputsHook(), MlflowArtifactsHook())

CONFIG_LOADER_CLASS = OmegaConfigLoader
CONFIG_LOADER_ARGS = {
    "base_env": "base",
    "default_run_env": "local",
    # An environment (kermany, tiny, local) overrides only the parameter keys it sets.
    "merge_strategy": {"parameters": "soft"},
    "custom_resolvers": {"project_root": project_root},
}
