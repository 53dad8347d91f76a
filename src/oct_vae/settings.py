"""Project settings. See https://docs.kedro.org/en/stable/kedro_project_setup/settings.html."""

from kedro.config import OmegaConfigLoader

from oct_vae.hooks import MissingInputsHook, MlflowArtifactsHook

HOOKS = (MissingInputsHook(), MlflowArtifactsHook())

CONFIG_LOADER_CLASS = OmegaConfigLoader
CONFIG_LOADER_ARGS = {
    "base_env": "base",
    "default_run_env": "local",
    # An environment (kermany, tiny, local) overrides only the parameter keys it sets.
    "merge_strategy": {"parameters": "soft"},
}
