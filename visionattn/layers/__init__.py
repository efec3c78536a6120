"""nn.Modules the blocks are made of: token mixers, positional terms, stems, downsamplers, the block."""
from .block import TransformerBlock
from .conv import ConvDownsampler, ConvTokenizer, PatchEmbed, PatchMerging
from .neighborhood import NeighborhoodAttention2d
from .pos import relative_position_bias, relative_position_index, resize_rel_pos_table
from .window import WindowAttention

__all__ = [
    "TransformerBlock",
    "ConvDownsampler",
    "ConvTokenizer",
    "PatchEmbed",
    "PatchMerging",
    "NeighborhoodAttention2d",
    "WindowAttention",
    "relative_position_bias",
    "relative_position_index",
    "resize_rel_pos_table",
]
