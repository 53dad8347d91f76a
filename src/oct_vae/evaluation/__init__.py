"""Evaluation: AUCs and bootstrap intervals, the report and its Markdown, the transfer test
on real scans, the figures.

Framework-free: numpy, pandas, scikit-learn and matplotlib, and the project's detector.
"""
