"""Datasets (VOC, COCO), augmentation, the VOC palette of the masks and the generated mini dataset."""
from excel.data.coco import COCODataset
from excel.data.loader import augment_config, build_dataset, num_foreground_classes
from excel.data.palette import voc_palette
from excel.data.synthetic import VOC_CLASSES, make_synthetic_coco, make_synthetic_voc
from excel.data.transforms import AugmentConfig, denormalize, normalize
from excel.data.voc import DatasetError, VOCDataset, check_dataset, load_cls_labels, multi_hot, read_list

__all__ = [
    "AugmentConfig", "COCODataset", "DatasetError", "VOCDataset", "VOC_CLASSES", "augment_config", "build_dataset",
    "check_dataset", "denormalize", "load_cls_labels", "make_synthetic_coco", "make_synthetic_voc",
    "multi_hot", "normalize", "num_foreground_classes", "read_list", "voc_palette",
]
