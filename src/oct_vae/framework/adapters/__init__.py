"""The private names of upstream libraries that oct-vae relies on, one module per library.

Kedro, kedro-datasets, kedro-mlflow and MLflow offer no public API for a few things this
project needs (fixing the load version of a dataset, the path a versioned dataset saved
to, switching kedro-mlflow's hook off on a ``torchrun`` rank, MLflow's scoring app).
Every such use goes through one of these modules, and nowhere else in ``src/``:

* :mod:`oct_vae.framework.adapters.kedro`: dataset versions and paths;
* :mod:`oct_vae.framework.adapters.kedro_datasets`: the file system internals of the
  kedro-datasets classes the atomic datasets extend;
* :mod:`oct_vae.framework.adapters.kedro_mlflow`: ``MlflowHook``'s switch, the logged
  pipeline model's parameters;
* :mod:`oct_vae.framework.adapters.mlflow`: the scoring app and the run context.

Each module lists what it relies on in ``PRIVATE_NAMES``; ``tests/framework/
test_adapters.py`` checks every entry against the installed library, and fails naming the
attribute when an upgrade removes or changes it.
"""
