"""The VAE itself: model, objective, scores, the detector built on them, checkpoints.

Framework-free: these modules import only numpy, torch and small numeric libraries.
"""
