"""``python -m oct_vae.serve``: serve an ``oct_vae_scorer`` MLflow model with request limits.

The server is ``oct_vae.serving.server``; this module is its command-line entry point.
"""

from oct_vae.serving.server import main

if __name__ == "__main__":
    main()
