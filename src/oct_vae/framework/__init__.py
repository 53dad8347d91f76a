"""The Kedro and MLflow glue: hooks, parameters, the session store, file I/O, the
Model Registry rule and the pinned requirements.
"""
