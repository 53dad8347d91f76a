"""The data: Kermany's dataset layout and splits, image decoding, lineage (which
data a model was trained on), and the synthetic OCT phantom.

Framework-free: numpy, Pillow and the standard library.
"""
