"""Ember: a small tensor language compiled to fused, verified Triton kernels."""

__version__ = "0.1.0"
