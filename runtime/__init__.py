"""Execution: the NumPy oracle, parameter initialization and parameter files."""
