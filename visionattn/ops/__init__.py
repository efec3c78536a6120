"""Attention patterns as pure functions on tensors (no parameters)."""
from .neighborhood import na2d, na2d_reference, natten_available, neighborhood_indices, window_start

__all__ = ["na2d", "na2d_reference", "natten_available", "neighborhood_indices", "window_start"]
