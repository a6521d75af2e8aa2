"""Zero-shot multi-label mAP of a CLIP on a dataset split: how well the organism has learned its world."""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from tqdm import tqdm

from excel.organism.pretrain import average_precision


@torch.no_grad()
def split_zero_shot_map(cfg: Any, split: str = "val", max_images: int | None = None) -> float:
    """Zero-shot mAP on ``split`` of ``cfg.data``: every image resized to ``model.input_size`` squared, each
    class scored by the cosine to its prompt (``text.templates[0]`` with ``data.prompt_names``)."""
    from excel.backbone import load_clip
    from excel.backbone.clip_loader import load_tokenizer
    from excel.data import build_dataset

    clip_cfg = cfg.model.clip
    model = load_clip(clip_cfg.name, clip_cfg.pretrained, force_quick_gelu=bool(clip_cfg.force_quick_gelu),
                      cache_dir=clip_cfg.cache_dir)
    tokenizer = load_tokenizer(clip_cfg.name)
    template = str(cfg.text.templates[0])
    text = F.normalize(model.encode_text(tokenizer([template.format(n) for n in cfg.data.prompt_names])), dim=-1)
    dataset = build_dataset(cfg, split, stage="val")
    count = len(dataset) if max_images is None else min(len(dataset), int(max_images))
    scores, labels = [], []
    size = int(cfg.model.input_size)
    for i in tqdm(range(count), desc=f"zero-shot {split}", dynamic_ncols=True, leave=False):
        item = dataset[i]
        x = F.interpolate(item["image"][None], size=(size, size), mode="bilinear", align_corners=False)
        scores.append(F.normalize(model.encode_image(x), dim=-1) @ text.T)
        labels.append(item["cls_label"][None])
    return float(average_precision(torch.cat(scores), torch.cat(labels)).nanmean())
