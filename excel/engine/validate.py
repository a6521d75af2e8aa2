"""In-training validation (algorithm.md §8.5): single-scale segmentation and pseudo-label mIoU on the val split."""
from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch.utils.data import Dataset
from tqdm import tqdm

from excel.cam import PseudoLabeler
from excel.data.transforms import to_uint8_rgb
from excel.engine import dist
from excel.engine.inference import resize_square
from excel.engine.sharded import eval_loader
from excel.evaluation import ConfusionMatrix
from excel.model.decoder import attn_pred
from excel.utils.tensors import grid_side


@torch.no_grad()
def validate(model, dataset: Dataset, cfg: DictConfig, device: torch.device,
             labeler: PseudoLabeler) -> dict[str, Any]:
    """Score the decoder (seg) and the training-free-with-Q pseudo labels on ``dataset``; all ranks take part.

    ``labeler`` is the run's validation labeler (``PseudoLabeler.from_config(cfg, "val")``, built once). Every
    image of ``dataset`` is scored, or the first ``eval.max_images`` of them.

    ``eval.batch_size`` images share one forward pass (each resized to the square input first); every image is
    scored as at batch 1, up to the float rounding of batched matrix products: its predicted affinity Q is taken
    from its own Gram matrix, whose mean would otherwise run over the group (quirk 9).

    Returns dict(seg_miou, pseudo_miou, seg_table, pseudo_table, seg, pseudo) with the two ConfusionMatrix results.
    """
    if int(cfg.eval.batch_size) < 1:
        raise ValueError(f"eval.batch_size={cfg.eval.batch_size}: expected a positive number of images")
    limit = cfg.eval.max_images
    if limit is not None and int(limit) < 1:
        raise ValueError(f"eval.max_images={limit}: expected a positive number of images or null (all)")
    num_classes = len(cfg.data.class_names) + 1
    seg_cm = ConfusionMatrix(num_classes, device=device)
    pseudo_cm = ConfusionMatrix(num_classes, device=device)
    was_training = model.training
    model.eval()
    group: list[dict[str, Any]] = []
    loader = eval_loader(dataset, cfg, None if limit is None else int(limit))
    items = tqdm(loader, desc="validate", disable=dist.get_rank() != 0, leave=False,
                 dynamic_ncols=True)
    for index, batch in enumerate(items, start=1):
        group.append(batch)
        if len(group) == int(cfg.eval.batch_size) or index == len(items):
            _score_group(model, group, cfg, device, labeler, seg_cm, pseudo_cm)
            group = []
    seg_cm.all_reduce()
    pseudo_cm.all_reduce()
    model.train(was_training)
    names = ["background", *cfg.data.class_names]
    seg, pseudo = seg_cm.compute(), pseudo_cm.compute()
    return {"seg_miou": float(seg["miou"]), "pseudo_miou": float(pseudo["miou"]), "seg": seg, "pseudo": pseudo,
            "seg_table": seg_cm.table(names), "pseudo_table": pseudo_cm.table(names)}


def _score_group(model, group: list[dict[str, Any]], cfg: DictConfig, device: torch.device,
                 labeler: PseudoLabeler, seg_cm: ConfusionMatrix, pseudo_cm: ConfusionMatrix) -> None:
    """One forward pass over the group's square inputs, then each image scored at its own label size."""
    inputs = torch.cat([resize_square(b["image"].to(device), cfg.model.input_size) for b in group])
    out = model(inputs)
    for j, batch in enumerate(group):
        label = batch["label"].to(device)
        one = slice(j, j + 1)
        logits = F.interpolate(out.seg_logits[one].float(), size=label.shape[-2:], mode="bilinear",
                               align_corners=False)
        seg_cm.update(logits.argmax(1), label)
        q = out.attn_pred if len(group) == 1 else attn_pred(out.fused[one])   # Q of this image alone
        pseudo = labeler(out.encoded.take(one), batch["cls_label"].to(device), inputs[one], label.shape[-2:], q)
        pseudo_cm.update(pseudo, label)


@torch.no_grad()
def visual_samples(model, dataset: Dataset, indices: Sequence[int], cfg: DictConfig, device: torch.device,
                   labeler: PseudoLabeler, max_lams: int = 3) -> list[dict[str, Any]]:
    """What the TensorBoard sample grids show for the dataset items ``indices`` (this process only).

    Per item a dict: ``name``; ``rgb`` (H, W, 3) uint8; ``gt`` (H, W) int64; ``pred`` (H, W) the decoder's argmax;
    ``pseudo`` (H, W) the training-free pseudo label (plain LAM, Q = None, ``labeler``); ``lams`` a
    list of (label index c + 1, (g, g) LAM of class c) for up to ``max_lams`` of the image's classes, highest
    mean LAM first.
    """
    was_training = model.training
    model.eval()
    samples = []
    aug = cfg.data.augment
    for index in indices:
        item = dataset[int(index)]
        label = item["label"]
        inputs = resize_square(item["image"][None].to(device), cfg.model.input_size)
        out = model(inputs)
        logits = F.interpolate(out.seg_logits.float(), size=label.shape[-2:], mode="bilinear", align_corners=False)
        cls_label = item["cls_label"][None].to(device)
        pseudo = labeler(out.encoded, cls_label, inputs, label.shape[-2:])
        g = grid_side(out.lam.shape[1], "visual_samples: the LAM's patch count")
        present = torch.nonzero(cls_label[0] > 0).flatten()
        ranked = present[out.lam[0][:, present].mean(0).argsort(descending=True)][:max_lams].tolist()
        samples.append({"name": item["name"], "rgb": to_uint8_rgb(item["image"], aug.mean, aug.std),
                        "gt": label.numpy(), "pred": logits.argmax(1)[0].cpu().numpy(),
                        "pseudo": pseudo[0].cpu().numpy(),
                        "lams": [(c + 1, out.lam[0, :, c].view(g, g).float().cpu().numpy()) for c in ranked]})
    model.train(was_training)
    return samples
