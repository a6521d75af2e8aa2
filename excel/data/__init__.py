"""Datasets (VOC, COCO), augmentation, class names and the VOC palette of the masks."""
from excel.data.classes import COCO_CLASSES, VOC_CLASSES
from excel.data.coco import COCODataset
from excel.data.loader import augment_config, build_dataset, num_foreground_classes
from excel.data.palette import voc_palette
from excel.data.transforms import AugmentConfig, denormalize, normalize
from excel.data.voc import DatasetError, VOCDataset, check_dataset, load_cls_labels, multi_hot, read_list

__all__ = [
    "AugmentConfig", "COCODataset", "COCO_CLASSES", "DatasetError", "VOCDataset", "VOC_CLASSES", "augment_config",
    "build_dataset", "check_dataset", "denormalize", "load_cls_labels", "multi_hot", "normalize",
    "num_foreground_classes", "read_list", "voc_palette",
]
