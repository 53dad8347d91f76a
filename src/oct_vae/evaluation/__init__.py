"""Evaluation: AUCs and bootstrap intervals, the report, the figures.

Framework-free: numpy, pandas, scikit-learn and matplotlib.
"""
