"""Serving: scoring a request of base64 scans with a calibrated model, and the
hardened HTTP server around MLflow's scoring app.
"""
