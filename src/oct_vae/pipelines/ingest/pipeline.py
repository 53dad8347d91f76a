"""The ``ingest`` pipeline."""

from kedro.pipeline import Node, Pipeline

from oct_vae.pipelines.ingest.nodes import (
    collect_rejects,
    decode_scans,
    gather_split_images,
    index_scans,
    split_scans,
)


def create_pipeline(**kwargs) -> Pipeline:
    """Index the scan files, decode them, split patient-disjointly, write arrays + manifest."""
    return Pipeline(
        [
            Node(
                index_scans,
                inputs="raw_scans",
                outputs=["scan_index", "index_rejects"],
                name="index_scans",
            ),
            Node(
                decode_scans,
                inputs={
                    "scan_index": "scan_index",
                    "test_normals": "params:ingest.test_normals",
                    "test_per_disease": "params:ingest.test_per_disease",
                    "seed": "params:seed",
                    "image_size": "params:ingest.image_size",
                    "max_image_pixels": "params:ingest.max_image_pixels",
                    "workers": "params:ingest.workers",
                    "protocol": "params:ingest.protocol",
                },
                outputs=["decoded_scans", "scan_pixels", "decode_rejects"],
                name="decode_scans",
            ),
            Node(
                split_scans,
                inputs={
                    "decoded_scans": "decoded_scans",
                    "val_fraction": "params:ingest.val_fraction",
                    "test_normals": "params:ingest.test_normals",
                    "test_per_disease": "params:ingest.test_per_disease",
                    "max_train_normals": "params:ingest.max_train_normals",
                    "seed": "params:seed",
                    "protocol": "params:ingest.protocol",
                },
                outputs=["oct_manifest", "leak_rejects"],
                name="split_scans",
            ),
            Node(
                gather_split_images,
                inputs=["oct_manifest", "decoded_scans", "scan_pixels"],
                outputs=["train_images", "val_images", "test_images"],
                name="gather_split_images",
            ),
            Node(
                collect_rejects,
                inputs=["index_rejects", "decode_rejects", "leak_rejects"],
                outputs="rejected_files",
                name="collect_rejects",
            ),
        ],
        tags=["ingest"],
    )
