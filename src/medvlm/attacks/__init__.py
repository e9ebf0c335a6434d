"""Upstream adversarial noise: the PGD image attack (`pgd`) and the noisy pre-training set (`noisy_set`)."""
