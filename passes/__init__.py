"""Graph-to-graph passes and the pipeline that runs them."""
