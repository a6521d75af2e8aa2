"""How object-aware a CLIP's attention is, layer by layer: of the attention an object's patches pay to the image's
patches, the share that lands on their own object, against the share the object's area would get by chance.

    python benchmarks/attention_locality.py [--config configs/organism.yaml] [--split val] [--images 50]
                                            [--random] [key=value ...]

The pseudo labels' affinity refinement (``cam.affinity_layers``, algorithm.md §5.1) spreads the class maps along
this attention: a layer whose object patches look at their own object far more than chance spreads a map inside
its object; one near chance spreads it over the background. The stack is the one the pipeline reads (head mean in
plain blocks, head sum in the calibrated ones), each row renormalised over the patches. Images are resized to
``model.input_size`` squared; a patch belongs to a class when at least half of its pixels do (mixed patches and
ignore pixels are left out). A last row measures the matrix the refinement actually multiplies by: the transition
matrix 𝒯 of the affinity layers' mean (Sinkhorn rounds, symmetrised, squared; algorithm.md §5.1 step 4).
``--random`` measures the same architecture with random weights, the chance baseline of a CLIP that has learned
nothing. Needs a dataset with masks, e.g. ``python tools/make_synthetic.py --root DIR``.
"""
from __future__ import annotations

import argparse
import json
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from tqdm import tqdm

from excel.config import CONFIG_DIR, load_config


def patch_labels(label: torch.Tensor, size: int, grid: int, ignore_index: int = 255) -> torch.Tensor:
    """(H, W) integer mask -> (grid*grid,) patch labels after a nearest resize to ``size`` squared: the class
    covering at least half of the patch, -1 for a mixed or mostly-ignored patch."""
    small = F.interpolate(label[None, None].float(), size=(size, size), mode="nearest")[0, 0].long()
    valid = small != ignore_index
    num = int(small[valid].max()) + 1 if valid.any() else 1
    onehot = F.one_hot(torch.where(valid, small, 0), num).permute(2, 0, 1).float() * valid
    share = F.avg_pool2d(onehot[None], size // grid)[0].flatten(1)          # (num, P)
    best, cls = share.max(0)
    return torch.where(best >= 0.5, cls, torch.full_like(cls, -1))


def own_region_share(attn: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, float, int]:
    """For one image: per layer, the mean over labelled foreground patches of the attention share on patches of
    the same class, and of that class's area share (chance).

    Args:
        attn: (L, P, P) attention among the patches (rows need not sum to 1; they are renormalised).
        labels: (P,) patch labels, 0 background, -1 left out.
    Returns:
        the sums over the counted patches of the share (L,) and of the chance (one number: it does not depend on
        the layer), and their count.
    """
    rows = attn / attn.sum(-1, keepdim=True).clamp_min(1e-12)
    fg = (labels > 0).nonzero().flatten()
    if fg.numel() == 0:
        return torch.zeros(attn.shape[0]), 0.0, 0
    same = (labels[fg, None] == labels[None, :]).float()                     # (F, P)
    share = (rows[:, fg, :] * same).sum(-1).sum(-1)                          # (L,)
    return share, float(same.sum()) / labels.numel(), int(fg.numel())


@torch.no_grad()
def measure(cfg, split: str, images: int, random_init: bool) -> dict[str, Any]:
    """Per-layer own-object attention share and its chance level over the first ``images`` images of ``split``."""
    from excel.cam.affinity import attention_affinity, transition_matrix
    from excel.data import build_dataset
    from excel.engine.checkpoint import build_seeded_model

    if random_init:
        cfg.model.clip.pretrained = None
    model = build_seeded_model(cfg, mode="val").eval()
    size = int(cfg.model.input_size)
    layers = model.visual.num_layers
    dataset = build_dataset(cfg, split, stage="val")
    count = min(images, len(dataset))
    share_sum, chance_sum, patches = torch.zeros(layers + 1), 0.0, 0
    for i in tqdm(range(count), desc="attention", dynamic_ncols=True, leave=False):
        item = dataset[i]
        x = F.interpolate(item["image"][None], size=(size, size), mode="bilinear", align_corners=False)
        stack = model.visual(x, attn_layers=range(layers)).attn                # (L, 1, N, N)
        trans = transition_matrix(attention_affinity(stack, list(cfg.cam.affinity_layers)), int(cfg.cam.sinkhorn_iters))
        attn = torch.cat([stack[:, 0, 1:, 1:], trans])                          # (L + 1, P, P), CLS left out
        grid = int(round(attn.shape[-1] ** 0.5))
        share, chance, n = own_region_share(attn, patch_labels(item["label"], size, grid))
        share_sum, chance_sum, patches = share_sum + share, chance_sum + chance, patches + n
    if patches == 0:
        raise SystemExit(f"no foreground patch in the first {count} images of {split!r}: nothing to measure")
    shares = (share_sum / patches).tolist()
    return {"own_share": shares[:-1], "transition_own_share": shares[-1], "chance": chance_sum / patches,
            "patches": patches, "images": count}


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(CONFIG_DIR / "organism.yaml"))
    parser.add_argument("--split", default="val")
    parser.add_argument("--images", type=int, default=50)
    parser.add_argument("--random", action="store_true", help="also measure the architecture with random weights")
    parser.add_argument("overrides", nargs="*", help="config overrides, key=value")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    runs = {"trained": False, "random": True} if args.random else {"trained": False}
    results = {}
    for name, random_init in runs.items():
        cfg = load_config(args.config, [*args.overrides, "tse.enabled=false"])
        results[name] = measure(cfg, args.split, args.images, random_init)
    read = set(int(l) % len(results["trained"]["own_share"]) for l in cfg.cam.affinity_layers)
    head = "layer  " + "".join(f"{name + ' own':>13s}" for name in results) + "       chance"
    print(f"own-object attention share of foreground patches ({results['trained']['images']} {args.split} images, "
          f"{results['trained']['patches']} patches); * = read by the affinity (cam.affinity_layers)")
    print(head)
    chance = results["trained"]["chance"]
    for layer in range(len(results["trained"]["own_share"])):
        cells = "".join(f"{100 * r['own_share'][layer]:12.1f}%" for r in results.values())
        print(f"{layer:>4d}{'*' if layer in read else ' '}  {cells}  {100 * chance:10.1f}%")
    cells = "".join(f"{100 * r['transition_own_share']:12.1f}%" for r in results.values())
    print(f"   𝒯   {cells}  {100 * chance:10.1f}%   (the refinement's transition matrix of the * layers)")
    print(json.dumps({k: {kk: ([round(x, 4) for x in v] if isinstance(v, list) else v) for kk, v in r.items()}
                      for k, r in results.items()}))
    return results


if __name__ == "__main__":
    main()
