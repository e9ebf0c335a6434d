"""Evaluation: retrieval recall, downstream metrics, robustness."""
