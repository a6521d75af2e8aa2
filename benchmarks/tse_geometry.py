"""What TSE does to the text bank, and how the image's patches read what it adds.

    python benchmarks/tse_geometry.py [--config configs/organism.yaml] [--split val] [--images 50] [key=value ...]

TSE (algorithm.md §3.3) adds to each class text a mix of the knowledge base's cluster centres, weighted by a softmax
of cosines at temperature 1, so the weights are close to uniform and most of the mix is the same for every class.
This prints, for the config's CLIP and knowledge base:

- the bank: clusters per class, and the weight a class's softmax puts on its own clusters;
- the mix: the norm of the part every class shares (``tse.mix: shared``) against the class-specific rest;
- the text bank before and after TSE: the mean cosine between class rows, between class and background rows, and
  between a class's row before and after; and the mean cosine of the class rows and of the background rows to the
  class prompts' mean direction (which of the two sits nearer what every class shares);
- with ``--images N`` and a dataset with masks: over the first N images of ``--split``, the AUC with which the
  patches' dense features (the ones the class maps are made of, algorithm.md §1.7) tell foreground from background
  along the shared part of the mix (0.5: the shared part is image-neutral; above 0.5 it marks objects, below 0.5 it
  marks background), the same AUC along the mean of the class prompts and along the mean of the background prompts
  (whether any direction the texts share marks background, or only TSE's) and along the mean of the images'
  embeddings (what the images share; its norm and its cosines to the class prompts' mean and to the shared part
  are printed too), and the AUC with which they tell a class's patches from the image's other labelled patches
  along the class rows minus their mean, before and after TSE;
- with ``--crops K`` (K random boxes on the patch grid of each of those images), the cosine of the CLIP's image
  embedding of each box's crop (resized to the CLIP's own input side: what the organism's local pretraining term
  distils into the box's dense features) to the class prompts' mean, by the share of the crop's labelled patches on objects.

``configs/ablations/tse_shared_only.yaml`` and ``tse_class_specific.yaml`` then measure what each part does to the
pseudo labels. Needs the config's CLIP weights and, for ``--images``, a dataset, e.g.
``python tools/make_synthetic.py --root DIR``.
"""
from __future__ import annotations

import argparse
import json
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from tqdm import tqdm

from excel.config import CONFIG_DIR, load_config


def text_geometry(fg: torch.Tensor, bg: torch.Tensor, centers: torch.Tensor, flags: torch.Tensor,
                  top_k: float) -> dict[str, Any]:
    """The bank and text-bank figures (see the module docstring) from fg (C,D), bg (K-C,D), centers (D,J),
    flags (C,J)."""
    from excel.text import build_text_bank
    from excel.text.analysis import mean_pairwise_cosine, tse_parts

    alpha, mix, shared = tse_parts(fg, centers, top_k)
    own = (alpha * (flags > 0).to(alpha)).sum(dim=1)
    enriched = build_text_bank(fg, bg, centers, top_k)[:fg.shape[0]]
    centre = F.normalize(fg.mean(dim=0), dim=0)                   # the class prompts' mean direction
    return {
        "clusters_per_class": (flags > 0).sum(dim=1).tolist(),
        "shared_clusters": int(((flags > 0).sum(dim=0) > 1).sum()),
        "own_cluster_weight": own.tolist(),
        "mix_norm": float(mix.norm(dim=1).mean()),
        "shared_norm": float(shared.norm()),
        "class_specific_norm": float((mix - shared).norm(dim=1).mean()),
        "class_class_cos": [mean_pairwise_cosine(fg), mean_pairwise_cosine(enriched)],
        "class_background_cos": [mean_pairwise_cosine(fg, bg), mean_pairwise_cosine(enriched, bg)],
        "before_after_cos": float(F.cosine_similarity(fg, enriched, dim=-1).mean()),
        "shared_background_cos": mean_pairwise_cosine(shared[None], bg),
        "class_to_class_mean": float((F.normalize(fg, dim=-1) @ centre).mean()),
        "background_to_class_mean": float((F.normalize(bg, dim=-1) @ centre).mean()),
    }


def binned_means(shares: torch.Tensor, values: torch.Tensor, edges: Sequence[float]) -> list[tuple[int, float]]:
    """(count, mean of ``values``) of the items whose ``shares`` fall in each [edges[i], edges[i+1]) (the last bin
    closed on the right); NaN for an empty bin."""
    out = []
    for i, (lo, hi) in enumerate(zip(edges[:-1], edges[1:])):
        last = i == len(edges) - 2
        inside = (shares >= lo) & ((shares <= hi) if last else (shares < hi))
        out.append((int(inside.sum()), float(values[inside].mean()) if inside.any() else float("nan")))
    return out


def bin_label(lo: float, hi: float) -> str:
    """How a bin of :func:`binned_means` prints: "[lo, hi)", or "[lo, hi]" for the last one (hi = 1)."""
    return f"[{lo:.2f}, {hi:.2f}{']' if hi == 1 else ')'}"


CROP_BINS = (0.0, 0.02, 0.2, 0.5, 1.0)


@torch.no_grad()
def crop_centrality(clip: Any, direction: torch.Tensor, dataset: Any, count: int, size: int, boxes: int,
                    seed: int = 0) -> list[dict[str, Any]]:
    """Cosine of the image embedding of box crops to ``direction`` (D,), binned by the crop's object share
    (:data:`CROP_BINS`); ``boxes`` grid boxes per image (the pretraining's local-term boxes), first ``count`` items
    of ``dataset``."""
    from attention_locality import patch_labels
    from excel.organism.dense import crop_views, draw_boxes

    generator = torch.Generator().manual_seed(seed)
    patch = int(clip.visual.patch_size[0])
    grid = size // patch
    native = clip.visual.image_size
    native = int(native[0] if isinstance(native, (tuple, list)) else native)
    shares, cosines = [], []
    for i in tqdm(range(count), desc="crops", dynamic_ncols=True, leave=False):
        item = dataset[i]
        x = F.interpolate(item["image"][None], size=(size, size), mode="bilinear", align_corners=False)
        labels = patch_labels(item["label"], size, grid).view(grid, grid)
        grid_boxes = draw_boxes(grid, boxes, generator)
        embedding = F.normalize(clip.encode_image(crop_views(x, grid_boxes[None], patch, native)), dim=-1)
        for (y0, x0, y1, x1), e in zip(grid_boxes.tolist(), embedding):
            inside = labels[y0:y1, x0:x1]
            known = inside[inside >= 0]
            if known.numel():
                shares.append(float((known > 0).float().mean()))
                cosines.append(float(e @ direction))
    bins = binned_means(torch.tensor(shares), torch.tensor(cosines), CROP_BINS)
    return [{"object_share": [lo, hi], "crops": n, "cos_to_class_mean": v}
            for (lo, hi), (n, v) in zip(zip(CROP_BINS[:-1], CROP_BINS[1:]), bins)]


@torch.no_grad()
def mean_image_embedding(clip: Any, dataset: Any, count: int) -> torch.Tensor:
    """The mean (D,) of the unit image embeddings of the first ``count`` items of ``dataset`` (each image resized to
    the CLIP's input side); its norm is 1 when all images embed alike and near 0 when they share nothing."""
    native = clip.visual.image_size
    native = int(native[0] if isinstance(native, (tuple, list)) else native)
    total = None
    for i in range(count):
        x = F.interpolate(dataset[i]["image"][None], size=(native, native), mode="bilinear", align_corners=False)
        e = F.normalize(clip.encode_image(x), dim=-1)[0]
        total = e if total is None else total + e
    return total / count


def direction_aucs(dense: torch.Tensor, foreground: torch.Tensor, directions: dict[str, torch.Tensor]) -> dict[str, float]:
    """For each named direction (D,), the AUC with which the projection of the patches' features dense (P, D) on it
    ranks the foreground patches (boolean (P,)) above the background ones: 0.5 image-neutral, below 0.5 it marks
    background."""
    from excel.text.analysis import rank_auc

    return {name: rank_auc(dense @ v, foreground) for name, v in directions.items()}


@torch.no_grad()
def patch_auc(model: Any, fg: torch.Tensor, enriched: torch.Tensor, shared: torch.Tensor, dataset: Any,
              count: int, size: int, generic: dict[str, torch.Tensor] | None = None) -> dict[str, Any]:
    """Foreground AUC along ``shared`` and along each ``generic`` direction, and class AUCs along the centred class
    rows (before/after TSE), over the first ``count`` items of ``dataset``; patches are labelled by majority (mixed
    patches left out)."""
    from attention_locality import patch_labels
    from excel.text.analysis import rank_auc

    directions = {"before": fg - fg.mean(dim=0), "after": enriched - enriched.mean(dim=0)}
    dense_all, foreground, class_aucs = [], [], {k: [] for k in directions}
    for i in tqdm(range(count), desc="patches", dynamic_ncols=True, leave=False):
        item = dataset[i]
        x = F.interpolate(item["image"][None], size=(size, size), mode="bilinear", align_corners=False)
        dense = model.encode(x).dense[0, 1:]                                 # (P, D), CLS left out
        labels = patch_labels(item["label"], size, int(round(dense.shape[0] ** 0.5)))
        keep = labels >= 0
        dense_all.append(dense[keep])
        foreground.append(labels[keep] > 0)
        for c in labels[labels > 0].unique().tolist():
            own = labels[keep] == c
            if bool(own.all()):
                continue
            for key, rows in directions.items():
                class_aucs[key].append(rank_auc(dense[keep] @ rows[c - 1], own))
    fg_mask = torch.cat(foreground)
    if fg_mask.all() or not fg_mask.any():
        raise SystemExit(f"the first {count} images have no background or no foreground patch: nothing to measure")
    aucs = direction_aucs(torch.cat(dense_all), fg_mask, {"shared": shared, **(generic or {})})
    return {"images": count, "patches": int(fg_mask.numel()), "shared_foreground_auc": aucs.pop("shared"),
            "generic_foreground_auc": aucs,
            "class_auc": {k: sum(v) / len(v) if v else float("nan") for k, v in class_aucs.items()}}


def text_parts(cfg: Any) -> tuple[Any, torch.Tensor, torch.Tensor, Any, torch.Tensor]:
    """The config's CLIP (eval mode), its class and background prompt rows fg (C, D) and bg (K - C, D), its TSE
    cluster bank, and the part of TSE's mix every class shares (D,), not normalised."""
    from excel.backbone import load_tokenizer
    from excel.model import load_configured_clip
    from excel.text import encode_prompts, prepare_cluster_bank
    from excel.text.analysis import tse_parts

    clip = load_configured_clip(cfg.model.clip).eval()
    tokenizer = load_tokenizer(cfg.model.clip.name)
    templates = list(cfg.text.templates)
    fg = encode_prompts(clip, tokenizer, list(cfg.data.prompt_names), templates)
    bg = encode_prompts(clip, tokenizer, list(cfg.data.background_names), templates)
    bank = prepare_cluster_bank(cfg, clip, tokenizer)
    if bank is None:
        raise SystemExit("the config has no TSE source: set tse.knowledge_base or tse.bank_file")
    _, _, shared = tse_parts(fg, bank.centers.to(fg), float(cfg.tse.top_k))
    return clip, fg, bg, bank, shared


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    from excel.data import build_dataset
    from excel.model import build_model

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(CONFIG_DIR / "organism.yaml"))
    parser.add_argument("--split", default="val")
    parser.add_argument("--images", type=int, default=50, help="images whose patches are read (0: text only)")
    parser.add_argument("--crops", type=int, default=12, help="random boxes per image whose crops are embedded "
                        "(0: none)")
    parser.add_argument("overrides", nargs="*", help="config overrides, key=value")
    args = parser.parse_args(argv)
    cfg = load_config(args.config, [*args.overrides, "tse.enabled=true", "tse.mix=full"])
    clip, fg, bg, bank, shared = text_parts(cfg)
    top_k = float(cfg.tse.top_k)
    result = {"text": text_geometry(fg, bg, bank.centers.to(fg), bank.flags, top_k)}
    t = result["text"]
    own = torch.tensor(t["own_cluster_weight"])
    per_class = torch.tensor(t["clusters_per_class"], dtype=torch.float)
    print(f"bank {bank.path.name}: J={bank.centers.shape[1]}, clusters per class {int(per_class.min())}-"
          f"{int(per_class.max())} (median {per_class.median():.0f}), {t['shared_clusters']} shared by several classes")
    print(f"weight on a class's own clusters: mean {own.mean():.3f} (min {own.min():.3f}, max {own.max():.3f}); "
          f"uniform over the kept clusters would give {per_class.mean() / (bank.centers.shape[1] - int((1 - top_k) * bank.centers.shape[1])):.3f}")
    print(f"attribute mix: |mix| {t['mix_norm']:.3f}, its shared part {t['shared_norm']:.3f}, class-specific rest "
          f"{t['class_specific_norm']:.3f}; cos(shared part, background rows) {t['shared_background_cos']:.3f}")
    print(f"text bank        before TSE  after TSE\n"
          f"  class-class    {t['class_class_cos'][0]:10.3f} {t['class_class_cos'][1]:10.3f}\n"
          f"  class-bg       {t['class_background_cos'][0]:10.3f} {t['class_background_cos'][1]:10.3f}\n"
          f"  a class row before vs after: cos {t['before_after_cos']:.3f}\n"
          f"cos to the class prompts' mean: class prompts {t['class_to_class_mean']:.3f}, background prompts "
          f"{t['background_to_class_mean']:.3f}")
    if args.images > 0:
        model = build_model(cfg, clip, mode="val").eval()
        enriched = model.text_bank[:fg.shape[0]]
        dataset = build_dataset(cfg, args.split, stage="val")
        count = min(args.images, len(dataset))
        generic = {"the class prompts' mean": F.normalize(fg.mean(dim=0), dim=0),
                   "the background prompts' mean": F.normalize(bg.mean(dim=0), dim=0)}
        image_mean = mean_image_embedding(clip, dataset, count)
        generic["the images' mean embedding"] = F.normalize(image_mean, dim=0)
        result["image_mean"] = {"resultant_length": float(image_mean.norm()),
                                "cos_class_mean": float(generic["the images' mean embedding"]
                                                        @ generic["the class prompts' mean"]),
                                "cos_shared": float(generic["the images' mean embedding"] @ F.normalize(shared, dim=0))}
        im = result["image_mean"]
        print(f"the images' mean embedding ({count} images): resultant length {im['resultant_length']:.3f} (0: the "
              f"images share nothing), cos to the class prompts' mean {im['cos_class_mean']:.3f}, to the shared part "
              f"{im['cos_shared']:.3f}")
        result["patches"] = patch_auc(model, fg, enriched, F.normalize(shared, dim=0), dataset, count,
                                      int(cfg.model.input_size), generic)
        p = result["patches"]
        print(f"patches ({p['images']} {args.split} images, {p['patches']} labelled patches):\n"
              f"  foreground vs background along the shared part: AUC {p['shared_foreground_auc']:.3f} "
              f"(0.5 = image-neutral, < 0.5 = marks background)\n"
              + "".join(f"  foreground vs background along {name}: AUC {auc:.3f}\n"
                        for name, auc in p["generic_foreground_auc"].items()) +
              f"  a class's patches vs the image's others along its centred row: AUC {p['class_auc']['before']:.3f} "
              f"before TSE, {p['class_auc']['after']:.3f} after")
        if args.crops > 0:
            result["crops"] = crop_centrality(clip, generic["the class prompts' mean"], dataset, count,
                                              int(cfg.model.input_size), args.crops)
            print(f"crops ({args.crops} boxes per image): image embedding's cos to the class prompts' mean, by the "
                  f"crop's object share\n" + "".join(
                      f"  {bin_label(*r['object_share'])} {r['crops']:5d} crops  {r['cos_to_class_mean']:.3f}\n"
                      for r in result["crops"]), end="")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
