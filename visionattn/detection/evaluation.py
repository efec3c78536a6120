"""COCO evaluation of detector outputs with pycocotools' ``COCOeval`` (bbox and segm).

Per-image model outputs are turned into COCO result dicts (``image_id``, original
``category_id``, ``bbox`` ``[x, y, w, h]``, ``score``, ``segmentation`` RLE with ``str`` counts);
under ``torch.distributed`` every rank's results and image ids are gathered to rank 0 and
de-duplicated by image id (a padded sampler may have shown an image twice), then
``loadRes`` -> ``COCOeval.evaluate/accumulate/summarize`` on exactly the evaluated image ids.
Crowd ground truth is handled by COCOeval itself (detections matched to crowd regions are
ignored). Follows torchvision ``references/detection/coco_eval.py`` and pycocotools 2.0.11.
"""
from __future__ import annotations

import contextlib
import copy
import io
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence

import numpy as np
import torch
import torch.distributed as dist
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

__all__ = ["STAT_NAMES", "CocoEvaluator", "outputs_to_coco_results", "evaluate_coco_results", "format_stats"]

STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


def outputs_to_coco_results(image_id: int, output: Mapping[str, torch.Tensor], label_to_cat_id: Mapping[int, int],
                            mask_threshold: float = 0.5) -> Dict[str, List[Dict[str, Any]]]:
    """One image's detector output -> ``{'bbox': [...], 'segm': [...]}`` COCO result lists.

    Args:
        image_id: the COCO image id.
        output: ``boxes`` ``(N, 4)`` XYXY pixels of the original image, ``scores`` ``(N,)``,
            ``labels`` ``(N,)`` contiguous 1..C, optional ``masks`` ``(N, 1, H, W)`` (or
            ``(N, H, W)``) probabilities or binary masks.
        label_to_cat_id: contiguous label -> original COCO category id.
        mask_threshold: masks are binarised with ``> mask_threshold``.

    Raises:
        KeyError: a label with no category id.
    """
    boxes = output["boxes"].detach().float().cpu()
    scores = output["scores"].detach().float().cpu().tolist()
    labels = output["labels"].detach().cpu().tolist()
    xywh = boxes.clone()
    xywh[:, 2:] -= xywh[:, :2]
    cats = [label_to_cat_id[int(lab)] for lab in labels]
    bbox = [{"image_id": int(image_id), "category_id": c, "bbox": [round(float(v), 3) for v in b], "score": float(s)}
            for c, b, s in zip(cats, xywh.tolist(), scores)]
    segm = []
    if "masks" in output:
        masks = output["masks"].detach().cpu()
        if masks.dim() == 4:
            masks = masks[:, 0]
        binary = (masks > mask_threshold).numpy().astype(np.uint8)
        if len(binary):
            rles = mask_utils.encode(np.asfortranarray(binary.transpose(1, 2, 0)))
            for c, s, rle in zip(cats, scores, rles):
                rle["counts"] = rle["counts"].decode("utf-8")
                segm.append({"image_id": int(image_id), "category_id": c, "segmentation": rle, "score": float(s)})
    return {"bbox": bbox, "segm": segm}


def evaluate_coco_results(coco_gt: COCO, results: Sequence[Dict[str, Any]], iou_type: str,
                          image_ids: Sequence[int], verbose: bool = True) -> np.ndarray:
    """Run COCOeval on ``results`` over ``image_ids``; returns the 12 ``stats`` (AP/AR, -1 where
    undefined). An empty result list scores 0 everywhere that has ground truth (pycocotools'
    ``loadRes`` cannot take an empty list, so an empty result set is evaluated directly).

    Raises:
        ValueError: an ``iou_type`` other than ``'bbox'`` or ``'segm'``.
    """
    if iou_type not in ("bbox", "segm"):
        raise ValueError(f"iou_type must be 'bbox' or 'segm', got {iou_type!r}")
    sink = contextlib.nullcontext() if verbose else contextlib.redirect_stdout(io.StringIO())
    with contextlib.redirect_stdout(io.StringIO()):
        if results:
            coco_dt = coco_gt.loadRes(copy.deepcopy(list(results)))
        else:
            coco_dt = COCO()
            coco_dt.dataset = {"images": coco_gt.dataset["images"], "categories": coco_gt.dataset["categories"],
                               "annotations": []}
            coco_dt.createIndex()
        ev = COCOeval(coco_gt, coco_dt, iouType=iou_type)
        ev.params.imgIds = sorted(int(i) for i in image_ids)
        ev.evaluate()
        ev.accumulate()
    with sink:
        if verbose:
            print(f"IoU metric: {iou_type}")
        ev.summarize()
    return np.asarray(ev.stats, dtype=np.float64)


def format_stats(stats: Sequence[float]) -> Dict[str, float]:
    """The 12 COCOeval numbers as a dict keyed by :data:`STAT_NAMES`."""
    return {k: float(v) for k, v in zip(STAT_NAMES, stats)}


class CocoEvaluator:
    """Accumulate detector outputs and score them with COCOeval, across ranks.

    Args:
        coco_gt: the ground-truth ``COCO`` object (the dataset's ``coco``).
        iou_types: any of ``'bbox'``, ``'segm'``.
        label_to_cat_id: contiguous label -> COCO category id (``CocoDetection.label_to_cat_id``).

    Use: ``update({image_id: output, ...})`` per batch, then ``summarize()`` on every rank (it
    holds the collective). Only rank 0 returns the stats; other ranks get ``{}``.
    """

    def __init__(self, coco_gt: COCO, iou_types: Iterable[str], label_to_cat_id: Mapping[int, int]):
        self.coco_gt = coco_gt
        self.iou_types = list(iou_types)
        bad = [t for t in self.iou_types if t not in ("bbox", "segm")]
        if bad:
            raise ValueError(f"iou_types must be among 'bbox', 'segm'; got {bad}")
        self.label_to_cat_id = dict(label_to_cat_id)
        self.results: Dict[int, Dict[str, List[Dict[str, Any]]]] = {}

    def update(self, outputs: Mapping[int, Mapping[str, torch.Tensor]]) -> None:
        """Add ``{image_id: output}``; a repeated image id keeps its first result."""
        for image_id, out in outputs.items():
            if int(image_id) in self.results:
                continue
            res = outputs_to_coco_results(int(image_id), out, self.label_to_cat_id)
            self.results[int(image_id)] = {t: res[t] for t in self.iou_types}

    def gather(self) -> Optional[Dict[int, Dict[str, List[Dict[str, Any]]]]]:
        """All ranks' per-image results merged on rank 0 (dedup by image id); None elsewhere."""
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return dict(self.results)
        parts: List[Any] = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
        dist.gather_object(self.results, parts, dst=0)
        if dist.get_rank() != 0:
            return None
        merged: Dict[int, Dict[str, List[Dict[str, Any]]]] = {}
        for part in parts:
            for image_id, res in part.items():
                merged.setdefault(int(image_id), res)
        return merged

    def summarize(self, verbose: bool = True) -> Dict[str, Any]:
        """Gather, evaluate and return ``{'bbox': {AP: ..}, 'segm': {..}, 'num_images': n,
        'results': {iou_type: [...]}}`` on rank 0 (``{}`` on other ranks)."""
        merged = self.gather()
        if merged is None:
            return {}
        image_ids = sorted(merged)
        out: Dict[str, Any] = {"num_images": len(image_ids), "results": {}}
        for t in self.iou_types:
            results = [r for i in image_ids for r in merged[i][t]]
            out["results"][t] = results
            out[t] = format_stats(evaluate_coco_results(self.coco_gt, results, t, image_ids, verbose=verbose))
        return out
