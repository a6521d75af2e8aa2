"""Datasets from the config, and the evaluation sampler that shards a split over the processes."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterator

from omegaconf import DictConfig, OmegaConf
from torch.utils.data import Dataset, Sampler

from excel.data.coco import COCODataset
from excel.data.transforms import AugmentConfig
from excel.data.voc import DatasetError, VOCDataset

TEST_ROOT_FILE = "test_root.txt"  # in the lists folder: where the test images are (prepare_voc --test-root)

log = logging.getLogger(__name__)

DEFAULT_NUM_CLASSES = {"voc": 20, "coco": 80}


def augment_config(cfg: DictConfig) -> AugmentConfig:
    """``data.augment`` + ``quirks.crop_without_gt`` + ``data.ignore_index`` as an :class:`AugmentConfig`."""
    aug = OmegaConf.to_container(cfg.data.augment, resolve=True)
    return AugmentConfig.from_mapping(aug, crop_without_gt=bool(cfg.quirks.crop_without_gt),  # type: ignore[arg-type]
                                      ignore_index=int(cfg.data.ignore_index))


def num_foreground_classes(cfg: DictConfig) -> int:
    """C_fg: the length of ``data.class_names`` when set, else 20 (voc) / 80 (coco)."""
    names = list(cfg.data.class_names)
    if names:
        return len(names)
    if cfg.data.name not in DEFAULT_NUM_CLASSES:
        raise DatasetError(f"data.name={cfg.data.name!r} needs data.class_names to know the number of classes")
    return DEFAULT_NUM_CLASSES[cfg.data.name]


def build_dataset(cfg: DictConfig, split: str | None = None, stage: str = "train") -> VOCDataset:
    """The dataset of ``cfg.data.name`` (voc | coco | custom = VOC layout with ``data.class_names``).

    Args:
        split: list name; None = ``data.train_split`` (train), ``eval.split`` (val) or ``test``.
        stage: ``train`` | ``val`` | ``test``. Test images are read from ``data.test_root`` when it is set, else
            from the folder named in ``<list_dir>/test_root.txt`` (``tools/prepare_voc.py --test-root``), else
            from ``data.root``.
    """
    data = cfg.data
    if data.name not in ("voc", "coco", "custom"):
        raise DatasetError(f"data.name={data.name!r} is not one of voc, coco, custom")
    if split is None:
        split = {"train": data.train_split, "val": cfg.eval.split, "test": "test"}.get(stage, stage)
    root = Path(data.root)
    list_dir = Path(data.list_dir) if data.list_dir else root / "lists"
    if stage == "test" and data.test_root:
        root = Path(data.test_root)
    elif stage == "test" and (list_dir / TEST_ROOT_FILE).is_file():  # written by tools/prepare_voc.py --test-root
        root = Path((list_dir / TEST_ROOT_FILE).read_text(encoding="utf-8").strip())
        log.info("test images from %s (%s)", root, list_dir / TEST_ROOT_FILE)
    kwargs = dict(list_dir=list_dir, stage=stage, augment=augment_config(cfg), image_dir=data.image_dir,
                  label_dir=data.label_dir, num_classes=num_foreground_classes(cfg),
                  ignore_index=int(data.ignore_index))
    dataset = (COCODataset if data.name == "coco" else VOCDataset)(root, split, **kwargs)
    log.info("%r from list %s", dataset, dataset.list_file)
    return dataset


class ShardSampler(Sampler[int]):
    """Rank r of w gets indices r, r + w, ... in order: no padding, so every item is scored exactly once."""

    def __init__(self, dataset: Dataset, rank: int, world_size: int) -> None:
        self.n, self.rank, self.world = len(dataset), rank, world_size  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.n, self.world))

    def __len__(self) -> int:
        return len(range(self.rank, self.n, self.world))
