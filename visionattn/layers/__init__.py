"""nn.Modules the blocks are made of: token mixers, positional terms, stems, downsamplers, the block."""
from .agent import AgentAttention
from .block import TransformerBlock
from .channel import ChannelGroupAttention
from .conv import (
    ActivationCooling,
    ConvBNStem,
    ConvDownsampler,
    ConvLNStem,
    ConvPosEnc,
    ConvTokenizer,
    CrossScaleEmbed,
    LNConvDownsample,
    MBConv,
    PatchEmbed,
    PatchMerging,
)
from .cross_shaped import CrossShapedWindowAttention
from .lka import LKA, BatchNormNHWC, DWConvMlp, LargeKernelAttention
from .inline import InLineAttention
from .neighborhood import NeighborhoodAttention2d
from .pos import DynamicPosBias, relative_position_bias, relative_position_index, resize_rel_pos_table
from .routing import AttentionLePE, BiLevelRoutingAttention
from .window import WindowAttention

__all__ = [
    "AgentAttention",
    "AttentionLePE",
    "BiLevelRoutingAttention",
    "ChannelGroupAttention",
    "CrossShapedWindowAttention",
    "InLineAttention",
    "NeighborhoodAttention2d",
    "WindowAttention",
    "LKA",
    "LargeKernelAttention",
    "DWConvMlp",
    "BatchNormNHWC",
    "TransformerBlock",
    "ActivationCooling",
    "ConvBNStem",
    "ConvDownsampler",
    "ConvLNStem",
    "ConvPosEnc",
    "ConvTokenizer",
    "CrossScaleEmbed",
    "DynamicPosBias",
    "LNConvDownsample",
    "MBConv",
    "PatchEmbed",
    "PatchMerging",
    "relative_position_bias",
    "relative_position_index",
    "resize_rel_pos_table",
]
