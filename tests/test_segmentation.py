"""Semantic segmentation (visionattn/segmentation): metrics, data, heads, inference, overlays.

Expected values are computed here independently (numpy per-image bincounts, torchmetrics, PIL,
hand-built files), never from the code under test. Real data: ``../shared/data/camvid_mini``
(CamVid in ADE20K layout, 11 classes, 0 = ignore); the cases that need it skip when it is absent.
"""
from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import visionattn  # noqa: F401
from visionattn.segmentation import SegMetric

REPO = Path(__file__).resolve().parents[1]
CAMVID = REPO.parent / "shared" / "data" / "camvid_mini"
needs_camvid = pytest.mark.skipif(not (CAMVID / "classes.txt").is_file(),
                                  reason="camvid_mini not available at ../shared/data/camvid_mini")


# ------------------------------------------------------------------------------------- metrics
def _random_maps(seed, n=4, k=5, shape=(13, 17)):
    g = torch.Generator().manual_seed(seed)
    preds, targets = [], []
    for _ in range(n):
        t = torch.randint(0, k, shape, generator=g)
        t[torch.rand(shape, generator=g) < 0.2] = 255
        p = torch.where(torch.rand(shape, generator=g) < 0.6, t.clamp(max=k - 1), torch.randint(0, k, shape, generator=g))
        preds.append(p)
        targets.append(t)
    return preds, targets


def _numpy_reference(preds, targets, k, ignore=255):
    """mmseg's intersect_and_union per image with numpy histograms, summed, then nanmean."""
    inter = np.zeros(k)
    area_p = np.zeros(k)
    area_t = np.zeros(k)
    for p, t in zip(preds, targets):
        p, t = p.numpy().ravel(), t.numpy().ravel()
        m = t != ignore
        p, t = p[m], t[m]
        inter += np.histogram(p[p == t], bins=k, range=(0, k))[0]
        area_p += np.histogram(p, bins=k, range=(0, k))[0]
        area_t += np.histogram(t, bins=k, range=(0, k))[0]
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = inter / (area_p + area_t - inter)
        acc = inter / area_t
    return dict(aAcc=inter.sum() / area_t.sum(), mIoU=np.nanmean(iou), mAcc=np.nanmean(acc), IoU=iou, Acc=acc)


def test_metric_matches_independent_computation():
    k = 5
    preds, targets = _random_maps(0, k=k)
    # class 4 absent from the ground truth but predicted somewhere: IoU 0, Acc nan (mmseg)
    for t in targets:
        t[t == 4] = 255
    preds[0][0, 0] = 4
    metric = SegMetric(k)
    for p, t in zip(preds, targets):
        metric.update(p[None], t[None])
    got = metric.compute()
    ref = _numpy_reference(preds, targets, k)
    assert got["aAcc"] == pytest.approx(ref["aAcc"]) and got["mIoU"] == pytest.approx(ref["mIoU"])
    assert got["mAcc"] == pytest.approx(ref["mAcc"])
    np.testing.assert_allclose(got["IoU"], ref["IoU"])
    np.testing.assert_allclose(got["Acc"], ref["Acc"])
    assert got["IoU"][4] == 0.0 and math.isnan(got["Acc"][4])
    # torchmetrics' per-class Jaccard (a second, independent implementation) on the same pixels
    from torchmetrics.functional.classification import multiclass_jaccard_index
    jac = multiclass_jaccard_index(torch.stack(preds), torch.stack(targets), num_classes=k, average="none",
                                   ignore_index=255)
    np.testing.assert_allclose(got["IoU"], jac.numpy(), atol=1e-6)


def test_metric_ground_truth_as_prediction_is_perfect_and_absent_classes_are_skipped():
    _, targets = _random_maps(1, k=6)
    for t in targets:
        t[t == 3] = 255  # class 3 never occurs: nan, left out of the means
    metric = SegMetric(6)
    for t in targets:
        metric.update(t.clamp(max=5), t)  # ignored pixels may hold any prediction
    got = metric.compute()
    assert got["mIoU"] == 1.0 and got["mAcc"] == 1.0 and got["aAcc"] == 1.0
    assert math.isnan(got["IoU"][3]) and sum(not math.isnan(v) for v in got["IoU"]) == 5


def test_metric_rejects_out_of_range_values():
    metric = SegMetric(3)
    with pytest.raises(ValueError, match="outside"):
        metric.update(torch.zeros(2, 2, dtype=torch.long), torch.full((2, 2), 7))
    with pytest.raises(ValueError, match="predicted classes"):
        metric.update(torch.full((2, 2), 3), torch.zeros(2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="shape"):
        metric.update(torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, 2, dtype=torch.long))


def _dist_worker(rank, world, init_file, preds, targets, k, out):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        metric = SegMetric(k)
        for p, t in list(zip(preds, targets))[rank::world]:  # each rank sees a disjoint shard
            metric.update(p[None], t[None])
        got = metric.compute()
        torch.save(got, f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


def test_metric_two_process_gloo_equals_one_process(tmp_path):
    k = 5
    preds, targets = _random_maps(2, n=5, k=k)
    single = SegMetric(k)
    for p, t in zip(preds, targets):
        single.update(p[None], t[None])
    ref = single.compute()
    out = tmp_path / "metric"
    # fork: the workers inherit the imported modules (spawn would re-import torch + the zoo per rank)
    mp.start_processes(_dist_worker, args=(2, str(tmp_path / "init"), preds, targets, k, str(out)), nprocs=2,
                       join=True, start_method="fork")
    for rank in range(2):
        got = torch.load(f"{out}.{rank}", weights_only=False)
        assert got["mIoU"] == pytest.approx(ref["mIoU"]) and got["aAcc"] == pytest.approx(ref["aAcc"])
        np.testing.assert_allclose(got["IoU"], ref["IoU"])
