"""Attention patterns as pure functions on tensors (no parameters)."""
from .neighborhood import na2d, na2d_reference, natten_available, neighborhood_indices, window_start
from .routing import bra2d, bra2d_reference, region_grid
from .stripe import stripe_attention
from .window import grid_partition, grid_reverse, pad_to_multiple, window_partition, window_reverse

__all__ = [
    "na2d",
    "na2d_reference",
    "natten_available",
    "neighborhood_indices",
    "window_start",
    "bra2d",
    "bra2d_reference",
    "region_grid",
    "stripe_attention",
    "grid_partition",
    "grid_reverse",
    "pad_to_multiple",
    "window_partition",
    "window_reverse",
]
