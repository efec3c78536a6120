"""Keeps timm's AutoAugment / RandAugment / AugMix policies working with current Pillow.

The problem (issue #19.1). timm 1.0.31 maps the posterize magnitude to a bit count that can be 0
or less: ``PosterizeIncreasing`` (every ``-inc1`` RandAugment and AugMix) keeps
``4 - int(level / 10 * 4)`` bits, i.e. 0 bits at level 10, reached by ``rand-m9-mstd0.5-inc1``
whenever the magnitude noise lands at or above 10 (and -4 bits at level 20 with ``mmax20``);
``Posterize`` keeps ``int(level / 10 * 4)`` bits, 0 at levels below 2.5 (AutoAugment ``v0``'s
``('Posterize', 0.8, 2)``, or RandAugment magnitudes pushed down by ``mstd``). Pillow < 10
accepted such counts: ``ImageOps.posterize`` masks every value with ``~(2 ** (8 - bits) - 1)``,
which for ``bits <= 0`` is 0 in the low 8 bits, so the result was a black image (timm's
``auto_augment_policy_v0`` comments on exactly that). Pillow >= 10 raises
``ValueError: bits must be between or equal to 1 and 8`` instead, which kills a training run
after a few steps.

The fix. :func:`posterize` is timm's posterize op with the Pillow < 10 result for ``bits <= 0``
(an all-zero image of the same mode and size, for the modes old Pillow accepted, L and RGB); for
1..8 bits it is Pillow's ``ImageOps.posterize`` unchanged, and 8 or more bits return the image as
timm does. :func:`install` puts it into ``timm.data.auto_augment.NAME_TO_OP`` for the three
posterize ops, so every policy timm builds afterwards (``create_transform(auto_augment=...)``,
``rand_augment_transform``, ``auto_augment_transform``, ``augment_and_mix_transform``) uses it.
``import visionattn`` calls :func:`install`, so our tools (train, validate, coco) and any user
script that imports the package before building transforms are covered; the only behaviour it
changes is the case that raised. :func:`uninstall` restores timm's op.

Ops are looked up when a policy is built (``AugmentOp.__init__``), so a transform built before
``import visionattn`` keeps timm's op.
"""
from __future__ import annotations

from typing import Any

from PIL import Image, ImageOps
from timm.data import auto_augment as _timm_aa

__all__ = ["posterize", "install", "uninstall", "is_installed", "POSTERIZE_OPS"]

#: timm's op names that call its posterize function.
POSTERIZE_OPS = ("Posterize", "PosterizeIncreasing", "PosterizeOriginal")

_TIMM_POSTERIZE = _timm_aa.posterize


def posterize(img: Image.Image, bits_to_keep: int, **_: Any) -> Image.Image:
    """Keep the ``bits_to_keep`` most significant bits of every channel (timm's posterize op).

    Args:
        img: a PIL image (RandAugment works on RGB; L is accepted too).
        bits_to_keep: bits per channel to keep. ``>= 8``: the image is returned as is (as timm
            does); 1..7: ``PIL.ImageOps.posterize``; ``<= 0``: every channel becomes 0, the
            result of Pillow < 10, whose mask ``~(2 ** (8 - bits) - 1)`` has no low bits set.
        **_: timm passes ``fillcolor``/``resample`` to every op; ignored here.

    Returns:
        A PIL image of the same mode and size.

    Raises:
        ValueError: ``bits_to_keep <= 0`` for an image mode other than L or RGB (Pillow < 10
            did not posterize those either).
    """
    if bits_to_keep >= 8:
        return img
    if bits_to_keep >= 1:
        return ImageOps.posterize(img, int(bits_to_keep))
    if img.mode not in ("L", "RGB"):
        raise ValueError(f"posterize to {bits_to_keep} bits is defined for L and RGB images (Pillow < 10 gave "
                         f"black); got a {img.mode} image: convert it to RGB first")
    return img.point([0] * (256 * len(img.getbands())))


def install() -> None:
    """Make timm's posterize ops use :func:`posterize` (idempotent; called by ``import visionattn``).

    Only entries that still hold timm's own function are replaced, so an op someone else put in
    ``NAME_TO_OP`` is left alone.
    """
    for name in POSTERIZE_OPS:
        if _timm_aa.NAME_TO_OP.get(name) is _TIMM_POSTERIZE:
            _timm_aa.NAME_TO_OP[name] = posterize


def uninstall() -> None:
    """Give timm's posterize ops back their original function (the one that fails on 0 bits)."""
    for name in POSTERIZE_OPS:
        if _timm_aa.NAME_TO_OP.get(name) is posterize:
            _timm_aa.NAME_TO_OP[name] = _TIMM_POSTERIZE


def is_installed() -> bool:
    """Whether every timm posterize op currently uses :func:`posterize`."""
    return all(_timm_aa.NAME_TO_OP.get(name) is posterize for name in POSTERIZE_OPS)
