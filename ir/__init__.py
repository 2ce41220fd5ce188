"""Ember's tensor IR: ops, types, graphs, the printer and the verifier."""
