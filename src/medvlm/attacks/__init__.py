"""Upstream noise: image PGD (`pgd`), the caption attack (`caption`, `keywords`), the random controls
(`random_noise`), which pairs (`selection`), and the noisy pre-training set with its stats and gallery
(`noisy_set`, `noise_stats`, `gallery`)."""
