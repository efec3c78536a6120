"""The papers' ADE20K semantic-segmentation results (UPerNet 160k and Semantic FPN), per backbone.

``PAPER_SEGMENTATION[model_name][head]`` -> dict with

- ``params_m``: parameters in millions as the paper/README reports them (UPerNet with its FCN
  auxiliary head and 150 classes, as mmseg counts the model; rounded as published), or None
  where the source gives none;
- ``miou`` / ``miou_ms``: single-scale and multi-scale + flip mIoU (%), None where not reported;
- ``iters``, ``crop``: schedule length and training crop (square side);
- ``pretrain``: the backbone's pre-training (``in1k`` / ``in22k``);
- ``repo``, ``source``: the official repository and the file holding the numbers; ``config``:
  the official config file of the row (None where the repository has none);
- ``note`` (optional): what to know about the row.

``model_name`` is the visionattn name of the backbone (``timm.create_model(model_name)``);
``head`` is ``'upernet'`` or ``'fpn'`` (:func:`visionattn.segmentation.build_segmentor`).
``tests/test_segmentation.py`` checks every ``params_m`` against the model this package builds
(within 1%, or within the published rounding); the one row where the paper's own number
disagrees with its config is annotated in ``note``. MaxViT reports no ADE20K result.
"""
from __future__ import annotations

from typing import Dict

__all__ = ["PAPER_SEGMENTATION"]

_NAT = "SHI-Labs/Neighborhood-Attention-Transformer"
_CSWIN = "microsoft/CSWin-Transformer"
_BIF = "rayleizhu/BiFormer"
_DAVIT = "dingmyu/davit"
_AGENT = "LeapLabTHU/Agent-Attention"


def _row(params_m, miou, miou_ms, repo, source, config, iters=160_000, crop=512, pretrain="in1k", note=None):
    row = dict(params_m=params_m, miou=miou, miou_ms=miou_ms, iters=iters, crop=crop, pretrain=pretrain,
               repo=repo, source=source, config=config)
    if note:
        row["note"] = note
    return row


def _nat(size, params, miou, ms, family="nat", crop=512, pretrain="in1k"):
    md = {"nat": "NAT.md", "dinat": "DiNAT.md", "dinat_s": "DiNAT.md"}[family]
    cfg = f"segmentation/configs/{family}/upernet_{family}_{size}_{crop}x{crop}_160k_ade20k.py"
    return {"upernet": _row(params, miou, ms, _NAT, f"segmentation/{md}", cfg, crop=crop, pretrain=pretrain)}


_CSWIN_FPN_SRC = "paper (Dong et al., CVPR 2022), Table 7: Semantic FPN 80k"
_CSWIN_T_NOTE = ("the paper and README give 60M, but the official config (upernet_cswin_tiny.py: embed_dim 64, "
                 "depth [1,2,21,1], UPerHead 512 ch on [64,128,256,512] + FCN aux 256) builds 52.1M, as here; "
                 "the same backbone's Semantic FPN row (26.1M) and the S/B UPerNet rows match")

PAPER_SEGMENTATION: Dict[str, Dict[str, dict]] = {
    "nat_mini": _nat("mini", 50, 45.1, 46.4),
    "nat_tiny": _nat("tiny", 58, 47.1, 48.4),
    "nat_small": _nat("small", 82, 48.0, 49.5),
    "nat_base": _nat("base", 123, 48.5, 49.7),
    "dinat_mini": _nat("mini", 50, 45.8, 47.2, "dinat"),
    "dinat_tiny": _nat("tiny", 58, 47.8, 48.8, "dinat"),
    "dinat_small": _nat("small", 82, 48.9, 49.9, "dinat"),
    "dinat_base": _nat("base", 123, 49.6, 50.4, "dinat"),
    # segmentation/DiNAT.md at the repository's newest commit (d334f5b, May 2024); older revisions read 53.5 / 54.6
    "dinat_large": _nat("large", 238, 54.0, 54.9, "dinat", crop=640, pretrain="in22k"),
    "dinat_s_tiny": _nat("tiny", 60, 46.0, 47.4, "dinat_s"),
    "dinat_s_small": _nat("small", 81, 48.6, 49.9, "dinat_s"),
    "dinat_s_base": _nat("base", 121, 49.4, 50.2, "dinat_s"),
    "dinat_s_large": _nat("large", 234, 53.4, 54.6, "dinat_s", crop=640, pretrain="in22k"),
    "cswin_tiny": {
        "upernet": _row(60, 49.3, 50.7, _CSWIN, "segmentation/README.md", "segmentation/configs/cswin/upernet_cswin_tiny.py",
                        note=_CSWIN_T_NOTE),
        "fpn": _row(26.1, 48.2, None, _CSWIN, _CSWIN_FPN_SRC, None, iters=80_000),
    },
    "cswin_small": {
        "upernet": _row(65, 50.4, 51.5, _CSWIN, "segmentation/README.md", "segmentation/configs/cswin/upernet_cswin_small.py"),
        "fpn": _row(38.5, 49.2, None, _CSWIN, _CSWIN_FPN_SRC, None, iters=80_000),
    },
    "cswin_base": {
        "upernet": _row(109, 51.1, 52.2, _CSWIN, "segmentation/README.md", "segmentation/configs/cswin/upernet_cswin_base.py"),
        "fpn": _row(81.2, 49.9, None, _CSWIN, _CSWIN_FPN_SRC, None, iters=80_000),
    },
    "biformer_small": {
        "upernet": _row(None, 49.8, 50.8, _BIF, "semantic_segmentation/README.md",
                        "semantic_segmentation/configs/ade20k/upernet.biformer_small.py"),
        "fpn": _row(None, 48.9, None, _BIF, "semantic_segmentation/README.md",
                    "semantic_segmentation/configs/ade20k/sfpn.biformer_small.py", iters=80_000),
    },
    "biformer_base": {
        "upernet": _row(None, 51.0, 51.7, _BIF, "semantic_segmentation/README.md",
                        "semantic_segmentation/configs/ade20k/upernet.biformer_base.py"),
        "fpn": _row(None, 49.9, None, _BIF, "semantic_segmentation/README.md",
                    "semantic_segmentation/configs/ade20k/sfpn.biformer_base.py", iters=80_000),
    },
    "davit_tiny_va": {"upernet": _row(60, 46.3, None, _DAVIT, "README.md", "mmseg/configs/upernet_davit_512x512_160k_ade20k.py")},
    "davit_small_va": {"upernet": _row(81, 48.8, None, _DAVIT, "README.md", None)},
    "davit_base_va": {"upernet": _row(121, 49.4, None, _DAVIT, "README.md", None)},
    "agent_swin_tiny": {"upernet": _row(61, 46.68, None, _AGENT, "downstream/segmentation/README.md",
                                        "downstream/segmentation/configs/agent_swin/upernet_agent_swin_t_9-12-14-7.py")},
    "agent_swin_small": {"upernet": _row(81, 48.08, None, _AGENT, "downstream/segmentation/README.md",
                                         "downstream/segmentation/configs/agent_swin/upernet_agent_swin_s_9-12-14-7.py")},
    "agent_swin_base": {"upernet": _row(121, 48.73, None, _AGENT, "downstream/segmentation/README.md",
                                        "downstream/segmentation/configs/agent_swin/upernet_agent_swin_b_9-12-14-7.py")},
    "agent_pvt_tiny": {"fpn": _row(15, 40.18, None, _AGENT, "downstream/segmentation/README.md",
                                   "downstream/segmentation/configs/agent_pvt/fpn_agent_pvt_t_12-16-28-28.py", iters=40_000)},
    "agent_pvt_small": {"fpn": _row(24, 44.18, None, _AGENT, "downstream/segmentation/README.md",
                                    "downstream/segmentation/configs/agent_pvt/fpn_agent_pvt_s_12-16-28-28.py", iters=40_000)},
    "agent_pvt_medium": {"fpn": _row(40, 44.30, None, _AGENT, "downstream/segmentation/README.md",
                                     "downstream/segmentation/configs/agent_pvt/fpn_agent_pvt_m_12-16-28-28.py", iters=40_000)},
    "agent_pvt_large": {"fpn": _row(52, 46.52, None, _AGENT, "downstream/segmentation/README.md",
                                    "downstream/segmentation/configs/agent_pvt/fpn_agent_pvt_l_12-16-28-28.py", iters=40_000)},
}
