"""Lowering of fused kernel groups to Triton source."""
