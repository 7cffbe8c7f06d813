"""Detection heads: one detector config on CNN and ViT encoders (train losses + eval detections),
the pyramid adapter's checks, and COCO mAP checked against pycocotools on the written results file."""
import json

import pytest
import torch

from mm_ptft.encoders import build_encoder
from mm_ptft.encoders.image import IMAGE_ENCODERS, ImageEncoder, Preprocess
from mm_ptft.heads.detection import DETECTORS, DetectionTask, PyramidBackbone, build_detector, transform_kwargs
from mm_ptft.metrics.detection import DetectionMetrics
from mm_ptft.types import EncoderOutput

ENCODERS = {
    "timm_cnn": {"name": "timm", "name_or_path": "resnet10t"},
    "torchvision_resnet": {"name": "torchvision", "name_or_path": "resnet18", "img_size": 64},
    "timm_vit": {"name": "timm", "name_or_path": "vit_tiny_patch16_224", "img_size": 64},
    "tiny_vit": {"name": "tiny_vit", "img_size": 64, "patch_size": 8, "dim": 32, "depth": 1, "heads": 2},
}
DETECTOR = {"name": "faster_rcnn", "anchor_scale": 2.0, "representation_size": 32, "rpn_post_nms_top_n_train": 50,
            "box_batch_size_per_image": 16}


def batch(n: int = 2) -> dict:
    torch.manual_seed(0)
    targets = [{"boxes": torch.tensor([[4.0, 6.0, 30.0, 40.0]]), "labels": torch.tensor([1]), "image_id": torch.tensor(i)}
               for i in range(n - 1)]
    targets.append({"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64), "image_id": torch.tensor(n)})
    return {"image": [torch.rand(3, 64, 64) for _ in range(n)], "targets": targets}  # last image: no boxes


def task_for(spec: dict, detector: dict = DETECTOR) -> DetectionTask:
    enc = build_encoder(IMAGE_ENCODERS, spec, "model.image")
    det = build_detector(enc, detector, num_classes=2, transform=transform_kwargs(enc, [64], 64, [64, 64]),
                         neck_channels=32)
    return DetectionTask(det, category_ids=[11, 12])


def check_train_and_eval(task: DetectionTask) -> None:
    task.train()
    out = task(batch())
    parts = {k: v for k, v in out.items() if k.endswith("_loss")}
    assert parts and all(torch.isfinite(v) for v in parts.values())
    torch.testing.assert_close(out["loss"], sum(parts.values()))  # the task sums; the trainer sums nothing
    out["loss"].backward()
    enc = task.detector.backbone.encoder
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in enc.parameters())
    task.eval()
    with torch.no_grad():
        dets = task(batch())["detections"]
    assert len(dets) == 2
    for d in dets:
        assert d["boxes"].shape[1:] == (4,) and d["boxes"].shape[0] == d["labels"].shape[0] == d["scores"].shape[0]
        assert d["boxes"].numel() == 0 or (d["boxes"].min() >= 0 and d["boxes"].max() <= 64)


@pytest.mark.parametrize("key", sorted(ENCODERS))
def test_same_faster_rcnn_config_on_cnn_and_vit_encoders(key):
    task = task_for(ENCODERS[key])
    neck = type(task.detector.backbone.neck).__name__
    assert neck == ("SimplePyramidNeck" if "vit" in key else "FPNNeck")  # one map → ViTDet pyramid; several → FPN
    check_train_and_eval(task)


@pytest.mark.parametrize("name", sorted(set(DETECTORS.names()) - {"faster_rcnn"}))
def test_other_detectors_on_a_tiny_cnn(name):
    check_train_and_eval(task_for({"name": "tiny_cnn", "widths": [8, 16, 16, 16], "out_indices": [0, 1, 2]},
                                  {"name": name}))


def test_pyramid_strides_and_roi_levels():
    enc = build_encoder(IMAGE_ENCODERS, {"name": "tiny_cnn", "widths": [8, 16, 16, 16], "out_indices": [0, 1, 2]}, "m")
    bb = PyramidBackbone(enc, None, 16)
    maps = bb(torch.rand(1, 3, 64, 64))
    assert bb.strides == [4, 8, 16, 32] and list(maps) == ["0", "1", "2", "pool"]
    assert [m.shape[-1] for m in maps.values()] == [64 // s for s in bb.strides]
    assert bb.featmap_names == ["0", "1", "2"] and all(m.shape[1] == 16 for m in maps.values())


class NoMaps(ImageEncoder):
    """An encoder with only a pooled output."""

    def __init__(self) -> None:
        super().__init__()
        self.preprocess, self.out_dim, self.lin = Preprocess.make(32), 4, torch.nn.Linear(3, 4)

    def encode(self, images):
        return EncoderOutput(self.lin(images.mean((2, 3))))


def test_an_encoder_without_feature_maps_is_refused_with_a_reason():
    with pytest.raises(ValueError, match="no multi-scale feature maps.*out_channels"):
        PyramidBackbone(NoMaps())


def test_map_matches_pycocotools_on_the_written_results(tmp_path):
    """torchmetrics' mAP and pycocotools' COCOeval of our results JSON must agree (independent path)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gt_boxes = {1: [[10, 10, 50, 50], [60, 60, 90, 95]], 2: [[5, 5, 30, 40]]}
    gt_labels = {1: [1, 2], 2: [2]}
    preds = {1: ([[12, 9, 50, 52], [58, 61, 91, 90], [0, 0, 20, 20]], [1, 2, 1], [0.9, 0.8, 0.3]),
             2: ([[5, 6, 29, 40], [40, 40, 60, 60]], [1, 2], [0.6, 0.7])}
    metrics = DetectionMetrics(category_ids=[11, 12], results_path=str(tmp_path / "det.json"))
    for img in (1, 2):
        b, lab, s = preds[img]
        out = {"detections": [{"boxes": torch.tensor(b, dtype=torch.float), "labels": torch.tensor(lab),
                               "scores": torch.tensor(s)}]}
        tgt = {"targets": [{"boxes": torch.tensor(gt_boxes[img], dtype=torch.float), "labels": torch.tensor(gt_labels[img]),
                            "image_id": torch.tensor(img)}]}
        metrics.update(out, tgt)
    ours = metrics.compute()
    anns = [{"image_id": img, "category_id": 10 + lab, "iscrowd": 0, "bbox": [x0, y0, x1 - x0, y1 - y0],
             "area": (x1 - x0) * (y1 - y0)} for img in (1, 2) for (x0, y0, x1, y1), lab in zip(gt_boxes[img], gt_labels[img])]
    for i, a in enumerate(anns):
        a["id"] = i + 1
    gt_file = tmp_path / "gt.json"
    gt_file.write_text(json.dumps({"images": [{"id": 1, "width": 100, "height": 100}, {"id": 2, "width": 100, "height": 100}],
                                   "annotations": anns, "categories": [{"id": 11}, {"id": 12}]}))
    gt = COCO(str(gt_file))
    ev = COCOeval(gt, gt.loadRes(str(tmp_path / "det.json")), "bbox")
    ev.evaluate(), ev.accumulate(), ev.summarize()
    assert ours["map"] == pytest.approx(ev.stats[0], abs=1e-4)
    assert ours["map_50"] == pytest.approx(ev.stats[1], abs=1e-4) and ours["map_75"] == pytest.approx(ev.stats[2], abs=1e-4)
    assert 0 < ours["map"] < 1
