"""Pairwise similarities for bin generation: s(a, b) = 0.5 + 0.5 cos(a, b) (spec section 2).

All functions take batched tensors (..., n, d) so one call covers a block of padded groups.
"""

from __future__ import annotations

from torch import Tensor

_EPS = 1e-12


def cosine(x: Tensor) -> Tensor:
    """All-pairs cosine (..., n, n) of the rows of x (..., n, d); zero rows have cosine 0 to all."""
    x = x / x.norm(dim=-1, keepdim=True).clamp_min(_EPS)
    return _exact(x @ x.transpose(-1, -2))


def gradient_cosine(embeddings: Tensor, grads: Tensor) -> Tensor:
    """All-pairs cosine of DQ's last-layer gradient features f = [g, vec(e (x) g)], never built.

    f1.f2 = (g1.g2)(1 + e1.e2) and |f|^2 = |g|^2 (1 + |e|^2), so only e (..., n, d) and g (..., n, C)
    are needed: O(n^2 (d + C)) instead of O(n^2 d C).
    """
    dot = (grads @ grads.transpose(-1, -2)) * (1 + embeddings @ embeddings.transpose(-1, -2))
    norm = grads.norm(dim=-1) * (1 + embeddings.pow(2).sum(-1)).sqrt()
    norm = norm.clamp_min(_EPS)
    return _exact(dot / (norm.unsqueeze(-1) * norm.unsqueeze(-2)))


def similarity(cos: Tensor) -> Tensor:
    """DQ's submodular similarity 0.5 + 0.5 cos, in [0, 1] so GraphCut gains stay comparable."""
    return cos.mul(0.5).add_(0.5)


def _exact(cos: Tensor) -> Tensor:
    """Make cos exactly symmetric with a unit diagonal, as it is in exact arithmetic.

    GraphCut has structural ties (a 2-sample bin's first pick: 1 + s(a, b) either way); they only
    resolve to the lowest id if rounding is the same on both sides.
    """
    cos = (cos + cos.transpose(-1, -2)).mul_(0.5)
    cos.diagonal(dim1=-2, dim2=-1).fill_(1)
    return cos
