"""Detection data: COCO and VOC readers, the Dataset and collate, box-aware augmentations.

data = load_coco("train.json")                       # skipped bad entries: one warning line
dataset = DetectionDataset(data, ssd_train_transform(320))
images, targets = collate([dataset[0], dataset[1]])
"""

from mnasnet.detection.data.coco import load_coco
from mnasnet.detection.data.dataset import DetectionDataset, collate
from mnasnet.detection.data.records import AnnotationWarning, DetectionData, DetectionRecord, SkipReport
from mnasnet.detection.data.transforms import (
    Sample,
    eval_transform,
    retinanet_train_transform,
    ssd_train_transform,
)
from mnasnet.detection.data.voc import VOC_CLASSES, load_voc

__all__ = [
    "VOC_CLASSES",
    "AnnotationWarning",
    "DetectionData",
    "DetectionDataset",
    "DetectionRecord",
    "Sample",
    "SkipReport",
    "collate",
    "eval_transform",
    "load_coco",
    "load_voc",
    "retinanet_train_transform",
    "ssd_train_transform",
]
