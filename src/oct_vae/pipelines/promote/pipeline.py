"""The ``promote`` pipeline."""

from kedro.pipeline import Node, Pipeline

from oct_vae.pipelines.promote.nodes import promote_champion


def create_pipeline(**kwargs) -> Pipeline:
    """One node: ``kedro_env`` (filled by ``ModelRegistryHook``) -> ``promotion``."""
    return Pipeline(
        [
            Node(
                promote_champion,
                inputs="kedro_env",
                outputs="promotion",
                name="promote_champion",
            )
        ],
        tags=["promote"],
    )
