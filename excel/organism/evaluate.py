"""Zero-shot multi-label mAP of a CLIP on a dataset split: how well the organism has learned its world."""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm import tqdm

from excel.organism.pretrain import average_precision


@torch.no_grad()
def split_zero_shot_scores(cfg: Any, split: str = "val", max_images: int | None = None
                           ) -> tuple[Tensor, Tensor, Tensor]:
    """(N, C) zero-shot scores, (N, C) image labels and (N, C) pixel share of each class on ``split`` of
    ``cfg.data``: every image resized to ``model.input_size`` squared, each class scored by the cosine to its prompt
    (``text.templates[0]`` with ``data.prompt_names``)."""
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
    scores, labels, areas = [], [], []
    size = int(cfg.model.input_size)
    classes = torch.arange(1, text.shape[0] + 1)
    for i in tqdm(range(count), desc=f"zero-shot {split}", dynamic_ncols=True, leave=False):
        item = dataset[i]
        x = F.interpolate(item["image"][None], size=(size, size), mode="bilinear", align_corners=False)
        scores.append(F.normalize(model.encode_image(x), dim=-1) @ text.T)
        labels.append(item["cls_label"][None])
        label = torch.as_tensor(item["label"])
        areas.append((label.flatten()[None] == classes[:, None]).float().mean(dim=1)[None])
    return torch.cat(scores), torch.cat(labels), torch.cat(areas)


def split_zero_shot_map(cfg: Any, split: str = "val", max_images: int | None = None) -> float:
    """Zero-shot mAP on ``split`` of ``cfg.data`` (:func:`split_zero_shot_scores`)."""
    scores, labels, _ = split_zero_shot_scores(cfg, split, max_images)
    return float(average_precision(scores, labels).nanmean())


def negatives_below(scores: Tensor, labels: Tensor) -> Tensor:
    """For each positive (image, class) of (N, C) ``labels``, the share of that class's negative images that score
    below it in (N, C) ``scores`` (1: ranked above every negative); NaN where the entry is not a positive or the
    class has no negative."""
    share = torch.full_like(scores, float("nan"))
    for c in range(scores.shape[1]):
        pos = labels[:, c] > 0
        negatives = scores[~pos, c].sort().values
        if negatives.numel() and pos.any():
            below = torch.searchsorted(negatives, scores[pos, c].contiguous(), right=False)  # negatives strictly below
            share[pos, c] = below.to(scores.dtype) / negatives.numel()
    return share
