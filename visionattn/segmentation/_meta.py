"""Class names and colour palettes of the standard segmentation datasets (dataset metadata).

ADE20K (SceneParsing ADEChallengeData2016, 150 classes after ``reduce_zero_label``): the class order
and palette of the benchmark as mmsegmentation lists them (``mmseg/datasets/ade.py``), which the
papers' evaluation used. Cityscapes (19 train ids): the official ``cityscapesScripts``
``labels.py`` names and colours. Palettes are stored as hex strings (6 digits per RGB colour).
"""
from __future__ import annotations

from typing import List, Tuple

__all__ = ["ADE20K_CLASSES", "ADE20K_PALETTE", "CITYSCAPES_CLASSES", "CITYSCAPES_PALETTE", "default_palette"]


def _rgb(hexes: str) -> List[Tuple[int, int, int]]:
    return [tuple(int(hexes[i + j:i + j + 2], 16) for j in (0, 2, 4)) for i in range(0, len(hexes), 6)]


ADE20K_CLASSES: List[str] = (
    "wall|building|sky|floor|tree|ceiling|road|bed|windowpane|grass|cabinet|sidewalk|person|earth|doo"
    "r|table|mountain|plant|curtain|chair|car|water|painting|sofa|shelf|house|sea|mirror|rug|field|ar"
    "mchair|seat|fence|desk|rock|wardrobe|lamp|bathtub|railing|cushion|base|box|column|signboard|ches"
    "t of drawers|counter|sand|sink|skyscraper|fireplace|refrigerator|grandstand|path|stairs|runway|c"
    "ase|pool table|pillow|screen door|stairway|river|bridge|bookcase|blind|coffee table|toilet|flowe"
    "r|book|hill|bench|countertop|stove|palm|kitchen island|computer|swivel chair|boat|bar|arcade mac"
    "hine|hovel|bus|towel|light|truck|tower|chandelier|awning|streetlight|booth|television receiver|a"
    "irplane|dirt track|apparel|pole|land|bannister|escalator|ottoman|bottle|buffet|poster|stage|van|"
    "ship|fountain|conveyer belt|canopy|washer|plaything|swimming pool|stool|barrel|basket|waterfall|"
    "tent|bag|minibike|cradle|oven|ball|food|step|tank|trade name|microwave|pot|animal|bicycle|lake|d"
    "ishwasher|screen|blanket|sculpture|hood|sconce|vase|traffic light|tray|ashcan|fan|pier|crt scree"
    "n|plate|monitor|bulletin board|shower|radiator|glass|clock|flag"
    ).split("|")

ADE20K_PALETTE: List[Tuple[int, int, int]] = _rgb(
    "787878b4787806e6e650323204c8037878508c8c8ccc05ffe6e6e604fa07e005ffebff0796053d78784608ff33ff0652"
    "8fff8cccff04ff3307cc46030066c83de6faff06330b66ffff0747ff09e00907e6dcdcdcff095c7009ff08ffd607ffe0"
    "ffb8060aff47ff290a07ffffe0ff086608ffff3d06ffc207ff7a0800ff14ff0829ff05990633ffeb0cffa0961400a3ff"
    "8c8c8cfa0a0f14ff001fff00ff1f00ffe00099ff000000ffff470000ebff00adff1f00ff0bc8c8ff520000fff5003dff"
    "00ff7000ff85ff0000ffa300ff6600c2ff00008fff33ff000052ff00ff2900ffad0a00ffadff0000ff99ff5c00ff00ff"
    "ff00f5ff0066ffad00ff0014ffb8b8001fff00ff3d0047ffff00cc00ffc200ff52000aff0070ff3300ff00c2ff007aff"
    "00ffa3ff990000ff0aff70008fff005200ffa3ff00ffeb0008b8aa8500ff00ff5cb800ffff001f00b8ff00d6ffff0070"
    "5cff0000e0ff70e0ff46b8a0a300ff9900ff47ff00ff00a3ffcc00ff008f00ffeb85ff00ff00ebf500ffff007afff500"
    "0abed4d6ff0000ccff1400ffffff000099ff0029ff00ffcc2900ff29ff00ad00ff00f5ff4700ff7a00ff00ffb8005cff"
    "b8ff000085ffffd60019c2c266ff005c00ff"
    )

CITYSCAPES_CLASSES: List[str] = [
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation",
    "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle",
]
CITYSCAPES_PALETTE: List[Tuple[int, int, int]] = _rgb(
    "804080f423e846464666669cbe9999999999faaa1edcdc006b8e2398fb984682b4dc143cff000000008e000046003c64"
    "0050640000e6770b20"
    )


def default_palette(num_classes: int) -> List[Tuple[int, int, int]]:
    """A deterministic palette of ``num_classes`` distinct colours for datasets without one:
    the PASCAL VOC bit-interleaving scheme (the bits of ``i + 1`` spread over the high bits of
    R, G, B; ``+ 1`` so that no class is black, the colour of ignored pixels)."""
    palette = []
    for i in range(num_classes):
        c, r, g, b = i + 1, 0, 0, 0
        for shift in range(7, -1, -1):
            r |= (c & 1) << shift
            g |= ((c >> 1) & 1) << shift
            b |= ((c >> 2) & 1) << shift
            c >>= 3
        palette.append((r, g, b))
    return palette
