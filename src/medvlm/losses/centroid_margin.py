"""RAN's learned-centroid margin term (this project's reconstruction; docs/method.md).

On the unit sphere with d = squared Euclidean distance:
  sample term     mean_i [ m + d(n(z_i), n(μ_{y_i})) − min_{c≠y_i} d(n(z_i), n(μ_c)) ]_+
  separation term mean_{c≠c'} [ m_c − d(n(μ_c), n(μ_c')) ]_+
For unit vectors d(a, b) = 2 − 2 a·b, so one matrix product gives every distance (cheaper than cdist,
and exact on the sphere).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _sphere_squared_distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """d(n(a_i), n(b_j)) for every row pair: N×M."""
    return 2.0 - 2.0 * F.normalize(a, dim=1) @ F.normalize(b, dim=1).T


def sample_margin(features: torch.Tensor, labels: torch.Tensor, centroids: torch.Tensor,
                  margin: float) -> torch.Tensor:
    """mean_i [m + d(z_i, μ_{y_i}) − min_{c≠y_i} d(z_i, μ_c)]_+ : each sample closer to its own class
    centroid than to any other by at least `margin`."""
    if centroids.shape[0] < 2:
        raise ValueError("the margin term needs two or more class centroids")
    distances = _sphere_squared_distances(features, centroids)
    own = distances.gather(1, labels[:, None]).squeeze(1)
    is_own = F.one_hot(labels, num_classes=centroids.shape[0]).bool()
    nearest_other = distances.masked_fill(is_own, float("inf")).amin(dim=1)
    return F.relu(margin + own - nearest_other).mean()


def centroid_separation(centroids: torch.Tensor, centroid_margin: float) -> torch.Tensor:
    """mean over ordered pairs c≠c' of [m_c − d(μ_c, μ_c')]_+ : centroids at least `centroid_margin` apart."""
    n_classes = centroids.shape[0]
    if n_classes < 2:
        raise ValueError("the centroid separation term needs two or more class centroids")
    distances = _sphere_squared_distances(centroids, centroids)
    off_diagonal = ~torch.eye(n_classes, dtype=torch.bool, device=centroids.device)
    return F.relu(centroid_margin - distances[off_diagonal]).mean()
