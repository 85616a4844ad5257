"""Evaluations over the key/verify interface: uniqueness, robustness, comparison, plots."""
