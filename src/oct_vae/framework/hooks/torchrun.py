"""``MainProcessOnlyHook``: under ``torchrun`` only rank 0 saves outputs and logs to MLflow."""

from __future__ import annotations

import logging
import os
from typing import Any

from kedro.framework.hooks import hook_impl
from kedro.io import MemoryDataset

from oct_vae.training.distributed import is_main_process

log = logging.getLogger(__name__)


class MainProcessOnlyHook:
    """Under ``torchrun`` every rank runs the whole Kedro session, and its train node joins
    one data-parallel job (``oct_vae.training.distributed``). Every rank then holds the
    same model; only rank 0 should save it. On the other ranks this hook turns every output
    of the pipeline into a memory dataset before anything runs, so they train, hand results
    from node to node in memory, and write nothing; ``PrivateMlflowHook`` opens no MLflow
    run there. Rank 0 (and any single-process run) is left as it is.
    """

    @hook_impl(tryfirst=True)  # before RunIsolationHook fixes versions, before MLflow starts
    def before_pipeline_run(self, run_params: dict[str, Any], pipeline, catalog) -> None:
        if is_main_process():
            return
        catalog_log = logging.getLogger("kedro.io.data_catalog")
        level = catalog_log.level
        catalog_log.setLevel(logging.ERROR)  # no "Replacing dataset" line per output
        try:
            for name in sorted(pipeline.all_outputs()):
                if not isinstance(catalog.get(name), MemoryDataset):
                    catalog[name] = MemoryDataset(copy_mode="assign")
        finally:
            catalog_log.setLevel(level)
        log.info("rank %s of a torchrun job: outputs stay in memory; rank 0 saves them",
                 os.environ.get("RANK"))
