"""Evaluation: win rates with confidence intervals (more oversight tools follow)."""
