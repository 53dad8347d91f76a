"""Training: the loop, its fast path (rules, CUDA graph), distributed training and
checkpointing.

Framework-free: these modules import only numpy and torch (and the science modules).
"""
