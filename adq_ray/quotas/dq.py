"""The DQ baseline sampler (spec section 4): a fixed ratio of every (bin, class) cell."""

from __future__ import annotations

import torch
from torch import Tensor


def dq_cell_counts(cells: Tensor, rho: float) -> Tensor:
    """round-half-even(rho * cell size) per cell, as DQ's code does; the total need not be floor(rho |D| + 0.5)."""
    return torch.round(cells.double() * rho).long()
