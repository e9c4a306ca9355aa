"""Face-detection data: readers of WIDER / RetinaFace / FDDB / VOC / dlib / COCO annotations, the
WIDER prediction writer, the synthetic face generator, and domains made from real photos."""

from __future__ import annotations

from .formats import (
    DETECTION_FORMATS,
    attach_box_attributes,
    face_records,
    read_coco,
    read_detection,
    read_dlib,
    read_fddb,
    read_retinaface,
    read_voc,
    read_wider,
    read_wider_predictions,
    write_wider_predictions,
)
from .synthetic import DOMAINS, generate_detection_dataset, synthesize_detection_image

__all__ = [
    "DETECTION_FORMATS",
    "DetectionDataset",
    "FaceDetectionDataModule",
    "collate_eval",
    "collate_train",
    "DOMAINS",
    "DOMAIN_FAMILIES",
    "Domain",
    "FaceArrays",
    "build_domain",
    "attach_box_attributes",
    "face_records",
    "generate_detection_dataset",
    "read_coco",
    "read_detection",
    "read_dlib",
    "read_fddb",
    "read_retinaface",
    "read_voc",
    "read_wider",
    "read_wider_predictions",
    "synthesize_detection_image",
    "write_wider_predictions",
]


# the data modules (and Lightning under them) are imported on first use, so that the readers
# serve `facenas data check` and `facenas eval detections` without paying for Lightning
_LAZY = {"DetectionDataset", "FaceDetectionDataModule", "collate_eval", "collate_train"}
# the domain transforms (scipy, PIL) likewise
_DOMAINS = {"DOMAIN_FAMILIES", "Domain", "FaceArrays", "build_domain"}


def __getattr__(name: str):
    if name in _LAZY:
        from . import datamodule

        return getattr(datamodule, name)
    if name in _DOMAINS:
        from . import domains

        return getattr(domains, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
