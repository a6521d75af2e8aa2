"""Contrastive pretraining of the organism CLIP on image-caption pairs drawn from the generated world.

Every training pair is a pure function of (seed, sample index): a scene of :class:`excel.organism.world.World`, seen
either whole (squashed to a square, as evaluation sees images) or through a random square crop (as training crops
see them), and a caption naming the classes visible in that view. Fresh scenes every step, so the model cannot
memorise a pool. The loss is open_clip's ``ClipLoss`` (:func:`contrastive_loss` when ``background_negatives`` adds
background-only crops without a caption, negatives of every caption). Held-out zero-shot multi-label mAP (the text
bank's own prompt, "a clean origami {name}.") is printed as training goes.

Beside the contrastive loss, two terms give the tower the dense knowledge a web-scale CLIP has, where ExCEL reads
it, and leave the ordinary path's output tokens alone (in a web-scale CLIP they are global: the reason for SVC):

- a local term (CLIPSelf, Wu et al., ICLR 2024): for random boxes on the patch grid, the mean of the student's
  dense features inside a box is pulled, by cosine, towards the image embedding an EMA teacher gives the box's
  crop. The dense features are read where ExCEL reads them, through the calibrated path of the last five blocks
  (q-q + k-k + v-v attention on the ordinary path's states, heads summed), or, with
  ``local_path="value"``, through the last block's value path as MaskCLIP reads them. Weight ``local_weight``.
- an attention term (self-distillation of affinities, as SILC distils from an EMA teacher): the ordinary q-k
  attention among patches of layers 6-11 (the layers ExCEL's affinity averages; the class token's column left
  out and each row renormalised, so the class token may still draw any share) is pulled, by KL divergence,
  towards the softmax of the teacher's calibrated-feature cosines between patches. Weight ``attention_weight``.

Both live in :mod:`excel.organism.dense`.

Two savings keep the default run within 90 min on two CPU cores: captions are encoded only up to the batch's
longest one (exact: the text tower is causal), and for all but the closing ``full_view_steps`` of the run the image
tower sees a random half of the patches (FLIP-style patch dropout, the kept patches drawn from (seed, step)); the
closing steps see every patch, as the pipeline does. A checkpoint holds model, teacher, optimiser and step, is
written atomically, and a rerun resumes from it.
"""
from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from excel.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from excel.organism.dense import (affinity_target, attention_loss, draw_boxes, ema_update, encode_image_dense,
                                  local_loss, teacher_dense)
from excel.organism.world import World
from excel.utils.io import atomic_torch_save

log = logging.getLogger(__name__)

EVAL_SEED_OFFSET = 7_919  # the held-out stream: never used for training pairs
LOCAL_SEED_OFFSET = 104_729  # the local term's boxes draw from their own stream


@dataclass
class PretrainConfig:
    """Settings of one pretraining run (the defaults are the shipped organism's)."""

    model: str = "excel-organism"
    image_size: int = 192
    steps: int = 1400
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.1
    warmup: int = 140
    seed: int = 0
    crop_prob: float = 0.5          # share of pairs seen through a random square crop
    background_views: float = 0.0   # share of pairs that are background-only crops, captioned by their stuff words
    background_caption: float = 0.3  # probability that a caption naming objects names the background too
    object_template: float = 0.0    # probability that a caption calls its objects "a clean origami {}", any lead
    background_negatives: float = 0.0  # share of pairs that are background-only crops without a caption: negatives
    object_scale: float = 1.0       # the world's object size factor (excel.organism.world.World)
    parts: bool = False             # the world's objects carry parts (wheels, legs, ...; World(parts=True))
    varied_backdrops: float = 0.0   # chance of an unnamed backdrop of random looks (World(varied_backdrops=...))
    patch_dropout: float = 0.5      # share of image patches dropped per view while dropout is on (0: never)
    full_view_steps: float = 0.15   # closing share of the steps that see every patch
    local_weight: float = 1.0       # weight of the CLIPSelf-style local term (0: contrastive loss only)
    local_path: str = "calibrated"  # the dense features it trains: "calibrated" (ExCEL's SVC path) or "value"
    local_images: int = 16          # images of each batch that get one box for the local term
    attention_weight: float = 1.0   # weight of the attention self-distillation term (0: off)
    attention_temperature: float = 0.05  # its target: softmax over patches of the teacher's cosines / this
    ema_momentum: float = 0.99      # the local term's teacher: EMA of the model
    eval_every: int = 250
    eval_images: int = 256
    ckpt_every: int = 100
    num_workers: int = 1            # loader processes: they change the speed, not the pairs


def scene_size(rng: np.random.Generator, long_lo: int = 200, long_hi: int = 288) -> tuple[int, int]:
    """(h, w) with a VOC-like aspect ratio (short/long in [0.66, 1]), landscape two times in three."""
    long = int(rng.integers(long_lo, long_hi + 1))
    short = int(round(long * rng.uniform(0.66, 1.0)))
    return (short, long) if rng.uniform() < 2 / 3 else (long, short)


def normalise(image: np.ndarray) -> Tensor:
    """(H, W, 3) uint8 -> (3, H, W) float32 ImageNet-normalised on the 0-255 scale (the pipeline's input)."""
    x = torch.from_numpy(np.array(image, dtype=np.float32))
    x = (x - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    return x.permute(2, 0, 1).contiguous()


def view_of_scene(rng: np.random.Generator, world: World, size: int,
                  crop_prob: float) -> tuple[np.ndarray, list[int], list[str]]:
    """A (size, size, 3) uint8 view of a fresh scene, the classes visible in it (>= 40% of their pixels) and the
    scene's background kinds (stuff and props)."""
    h, w = scene_size(rng)
    scene = world.render(rng, h, w)
    image, mask = scene.image, scene.mask
    if rng.uniform() < crop_prob:
        side = int(min(h, w) * rng.uniform(0.55, 1.0))
        y0, x0 = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
        image, mask = image[y0:y0 + side, x0:x0 + side], mask[y0:y0 + side, x0:x0 + side]
        full = np.bincount(scene.mask.ravel(), minlength=world.num_classes + 1)
        kept = np.bincount(mask.ravel(), minlength=world.num_classes + 1)
        scene.classes = [c for c in scene.classes if kept[c + 1] >= 0.4 * full[c + 1]]
    view = np.asarray(Image.fromarray(image).resize((size, size), Image.BILINEAR))
    return view, scene.classes, scene.stuff + scene.props


def background_view(rng: np.random.Generator, world: World, size: int, max_object_share: float = 0.01,
                    side_range: tuple[float, float] = (0.3, 0.6)) -> tuple[np.ndarray, list[str], float]:
    """A (size, size, 3) uint8 square crop of a fresh scene with under ``max_object_share`` of its pixels on
    objects (a background-only view), the scene's background kinds, and the crop's share of object pixels. The
    crop's side is a random share ``side_range`` of the scene's short side; scenes are drawn until such a crop is
    found."""
    for _ in range(100):
        h, w = scene_size(rng)
        scene = world.render(rng, h, w)
        for _ in range(20):
            side = int(min(h, w) * rng.uniform(*side_range))
            y0, x0 = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
            crop = scene.mask[y0:y0 + side, x0:x0 + side]
            share = float(((crop > 0) & (crop < 255)).mean())
            if share < max_object_share:
                image = scene.image[y0:y0 + side, x0:x0 + side]
                view = np.asarray(Image.fromarray(image).resize((size, size), Image.BILINEAR))
                return view, scene.stuff + scene.props, share
    raise RuntimeError("background_view: no background-only crop in 100 scenes; is the world all foreground?")


class WorldPairs(Dataset):
    """Sample i -> (image (3, S, S), token ids (L,)) drawn from ``default_rng([seed, i])``: a view of a fresh scene
    (a background-only crop with probability ``background_views``) and its caption. With probability
    ``background_negatives`` the sample is a background-only crop without a caption: its token row is all zeros
    (a real caption starts with the start token), and the contrastive loss uses it only as a negative."""

    def __init__(self, world: World, tokenizer: Callable[[list[str]], Tensor], size: int, seed: int,
                 crop_prob: float, background_views: float = 0.0, background_caption: float = 0.3,
                 object_template: float = 0.0, background_negatives: float = 0.0):
        self.world, self.tokenizer, self.size, self.seed, self.crop_prob = world, tokenizer, size, seed, crop_prob
        self.background_views, self.background_caption = background_views, background_caption
        self.object_template, self.background_negatives = object_template, background_negatives

    def __len__(self) -> int:
        return 2 ** 62

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        rng = np.random.default_rng([self.seed, index])
        # the draw is skipped when both shares are 0, so that the default stream of pairs stays what it was
        u = rng.uniform() if self.background_views + self.background_negatives > 0 else 1.0
        if u < self.background_views:
            view, stuff, _ = background_view(rng, self.world, self.size)
            classes: list[int] = []
        elif u < self.background_views + self.background_negatives:
            view, _, _ = background_view(rng, self.world, self.size)
            return normalise(view), torch.zeros_like(self.tokenizer([""])[0])
        else:
            view, classes, stuff = view_of_scene(rng, self.world, self.size, self.crop_prob)
        caption = self.world.caption(rng, classes, stuff, self.background_caption, self.object_template)
        return normalise(view), self.tokenizer([caption])[0]


class _From(torch.utils.data.Sampler):
    """Indices start, start + 1, ... (resuming continues the stream exactly)."""

    def __init__(self, start: int):
        self.start = start

    def __iter__(self):
        i = self.start
        while True:
            yield i
            i += 1


def eval_set(world: World, size: int, count: int, seed: int) -> tuple[Tensor, Tensor]:
    """Held-out images (count, 3, S, S) (whole scenes, squashed) and their multi-hot labels (count, C)."""
    images, labels = [], torch.zeros(count, world.num_classes)
    for i in range(count):
        rng = np.random.default_rng([seed + EVAL_SEED_OFFSET, i])
        h, w = scene_size(rng)
        scene = world.render(rng, h, w)
        images.append(normalise(np.asarray(Image.fromarray(scene.image).resize((size, size), Image.BILINEAR))))
        labels[i, scene.classes] = 1
    return torch.stack(images), labels


def average_precision(scores: Tensor, labels: Tensor) -> Tensor:
    """Per-class AP (C,) of (N, C) scores against (N, C) binary labels; NaN for a class with no positive."""
    order = scores.argsort(dim=0, descending=True)
    hits = labels.gather(0, order)
    precision = hits.cumsum(0) / torch.arange(1, len(scores) + 1, dtype=scores.dtype)[:, None]
    positives = hits.sum(0)
    return (precision * hits).sum(0) / positives.where(positives > 0, torch.full_like(positives, float("nan")))


@torch.no_grad()
def zero_shot_map(model: nn.Module, tokenizer: Callable[[list[str]], Tensor], world: World, images: Tensor,
                  labels: Tensor, template: str = "a clean origami {}.", batch: int = 64) -> float:
    """Zero-shot multi-label mAP: image-text cosine of each class's prompt as the class score."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    tokens = tokenizer([template.format(n) for n in world.prompt_names]).to(device)
    text = F.normalize(model.encode_text(tokens), dim=-1)
    feats = torch.cat([F.normalize(model.encode_image(images[i:i + batch]), dim=-1)
                       for i in range(0, len(images), batch)])
    model.train(was_training)
    return float(average_precision((feats @ text.T).cpu(), labels.cpu()).nanmean())


_BOOKKEEPING = ("eval_every", "eval_images", "ckpt_every", "num_workers")


# settings added after weights were written: their value before they existed (files without them trained so)
_ADDED = {"background_views": 0.0, "background_caption": 0.3, "parts": False, "object_template": 0.0,
          "background_negatives": 0.0, "varied_backdrops": 0.0}


def _identity(config: dict) -> dict:
    """The settings that decide the trained weights (a resume may change how often it evaluates or saves)."""
    return {**_ADDED, **{k: v for k, v in config.items() if k not in _BOOKKEEPING}}


def dropout_on(step: int, cfg: PretrainConfig) -> bool:
    """Whether step ``step`` (0-based) drops patches: all steps before the closing ``full_view_steps`` share."""
    return cfg.patch_dropout > 0 and step < round(cfg.steps * (1 - cfg.full_view_steps))


def keep_patches(tokens: Tensor, drop: float, generator: torch.Generator,
                 return_kept: bool = False) -> Tensor | tuple[Tensor, Tensor]:
    """(B, 1 + N, D) class token + patch tokens -> (B, 1 + K, D): the class token and, per image, K = N - round(drop
    * N) patches drawn without replacement (kept in grid order, each with its own position embedding already
    added); with ``return_kept`` also the (B, K) grid indices kept."""
    b, n = tokens.shape[0], tokens.shape[1] - 1
    k = max(1, n - round(drop * n))
    order = torch.rand(b, n, generator=generator).argsort(dim=1)[:, :k].sort(dim=1).values.to(tokens.device)
    patches = tokens[:, 1:].gather(1, order[..., None].expand(b, k, tokens.shape[2]))
    out = torch.cat([tokens[:, :1], patches], dim=1)
    return (out, order) if return_kept else out


def _step_generator(seed: int, step: int) -> torch.Generator:
    """A CPU generator that is a function of (seed, step) alone, so a resumed run draws the same."""
    return torch.Generator().manual_seed(int(np.random.SeedSequence([seed, step]).generate_state(1)[0]))


class PatchSubset(nn.Module):
    """Training-time stand-in for the vision tower's ``patch_dropout`` slot: in training mode keeps a random subset
    of patches (:func:`keep_patches`) drawn from a generator seeded with (seed, step), so a resumed run draws the
    same; in eval mode (the held-out mAP) it passes every patch through, as open_clip's ``PatchDropout`` does."""

    def __init__(self, drop: float, seed: int, step: int):
        super().__init__()
        self.drop = drop
        self.generator = _step_generator(seed, step)
        self.kept: Tensor | None = None   # (B, K) grid indices of the patches the last training call kept

    def forward(self, x: Tensor) -> Tensor:
        if not self.training:
            return x
        out, self.kept = keep_patches(x, self.drop, self.generator, return_kept=True)
        return out


def encode_captions(model: nn.Module, tokens: Tensor) -> Tensor:
    """``model.encode_text`` of (B, L) token ids computed over the first L' positions only, L' = the longest
    caption (start and end tokens included): (B, D), equal to the full computation because the text tower's
    attention is causal and it pools at the end token."""
    from open_clip.transformer import text_global_pool

    length = int((tokens != 0).sum(1).max())
    tokens = tokens[:, :length]
    x = model.token_embedding(tokens) + model.positional_embedding[:length]
    x = model.ln_final(model.transformer(x, attn_mask=model.attn_mask[:length, :length]))
    x = text_global_pool(x, tokens, model.text_pool_type)
    return x @ model.text_projection


def contrastive_loss(image: Tensor, text: Tensor, captioned: Tensor, scale: Tensor) -> Tensor:
    """CLIP's symmetric cross-entropy where some images have no caption.

    ``image`` (B, D) and ``text`` (B_c, D) are unit embeddings, ``text[j]`` the caption of the j-th image whose
    ``captioned`` (B,) entry is True. Each captioned image picks its caption among the B_c captions; each caption
    picks its image among all B images, so an uncaptioned image is a negative of every caption and a positive of
    none. The mean of the two cross-entropies; with every image captioned it equals open_clip's ``ClipLoss``."""
    where = captioned.nonzero().squeeze(1)
    logits = scale * image @ text.T                                     # (B, B_c)
    labels = torch.arange(len(where), device=image.device)
    return (F.cross_entropy(logits[where], labels) + F.cross_entropy(logits.T, where)) / 2


def _smooth(average: float | None, loss: Tensor | None, rate: float = 0.05) -> float | None:
    """Exponential moving average of a logged loss (None while the term is off)."""
    if loss is None:
        return average
    return loss.item() if average is None else (1 - rate) * average + rate * loss.item()


def _shown(value: float | None) -> str:
    return "off" if value is None else f"{value:.3f}"


def lr_at(step: int, cfg: PretrainConfig) -> float:
    """Linear warm-up then cosine decay to zero."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    t = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return 0.5 * cfg.lr * (1 + math.cos(math.pi * t))


def build_optimizer(model: nn.Module, cfg: PretrainConfig) -> torch.optim.Optimizer:
    """AdamW; no weight decay on gains, biases, embeddings of positions and the logit scale."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.ndim < 2 or "positional" in name or "logit_scale" in name or "class_embedding" in name
         else decay).append(p)
    return torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}],
                             lr=cfg.lr, betas=(0.9, 0.98), eps=1e-6)


def _vocabulary_ids(tokenizer: Callable[[list[str]], Tensor], texts: list[str]) -> Tensor:
    """Sorted unique token ids of ``texts`` (start, end and padding included)."""
    return torch.unique(torch.cat([tokenizer(texts[i:i + 512]).flatten() for i in range(0, len(texts), 512)]))


def pipeline_texts(world: World, templates: tuple[str, ...] = ("a clean origami {}.",),
                   background_names: tuple[str, ...] = ()) -> list[str]:
    """Every text the ExCEL pipeline feeds the organism: class prompts, background prompts, knowledge base."""
    names = list(world.prompt_names) + list(world.class_names) + list(background_names)
    kb = [s for sentences in world.knowledge_base().values() for s in sentences]
    return [t.format(n) for n in names for t in templates] + kb


def pretrain(cfg: PretrainConfig, work_dir: str | Path, export: str | Path | None = None,
             background_names: tuple[str, ...] = (), progress: bool = True, device: str = "cpu") -> dict:
    """Train (or resume) the organism CLIP on ``device``; write ``work_dir/last.pth`` as it goes and, at the end,
    the shipped weights to ``export``. Returns the final summary (step, zero-shot mAP, seconds).

    The pairs are the same on every device (each is a function of (seed, index)); the arithmetic is not bit-equal
    across devices, so a CUDA run and a CPU run of the same settings end close, not identical."""
    from excel.backbone.clip_loader import load_clip, load_tokenizer
    from excel.organism.weights import save_organism_weights
    from open_clip.loss import ClipLoss

    if not (0 <= cfg.background_views < 1 and 0 <= cfg.background_caption <= 1):
        raise ValueError(f"background_views {cfg.background_views}, background_caption {cfg.background_caption}: "
                         f"expected a share in [0, 1) and a probability in [0, 1]")
    if not 0 <= cfg.object_template <= 1:
        raise ValueError(f"object_template {cfg.object_template}: expected a probability in [0, 1]")
    if not (0 <= cfg.background_negatives and cfg.background_views + cfg.background_negatives < 1):
        raise ValueError(f"background_negatives {cfg.background_negatives}: expected a share >= 0 with "
                         f"background_views + background_negatives < 1 (background_views {cfg.background_views})")
    if not 0 <= cfg.patch_dropout < 1:
        raise ValueError(f"patch_dropout {cfg.patch_dropout}: expected a share in [0, 1)")
    if not 0 <= cfg.full_view_steps <= 1:
        raise ValueError(f"full_view_steps {cfg.full_view_steps}: expected a share in [0, 1]")
    if cfg.local_weight < 0 or not 0 <= cfg.local_images <= cfg.batch_size:
        raise ValueError(f"local_weight {cfg.local_weight}, local_images {cfg.local_images}: expected a weight >= 0 "
                         f"and 0..batch_size ({cfg.batch_size}) images")
    if not 0 <= cfg.ema_momentum < 1:
        raise ValueError(f"ema_momentum {cfg.ema_momentum}: expected a value in [0, 1)")
    if cfg.local_path not in ("calibrated", "value"):
        raise ValueError(f"local_path {cfg.local_path!r}: expected 'calibrated' or 'value'")
    if cfg.attention_weight < 0 or cfg.attention_temperature <= 0:
        raise ValueError(f"attention_weight {cfg.attention_weight}, attention_temperature "
                         f"{cfg.attention_temperature}: expected a weight >= 0 and a temperature > 0")
    if cfg.eval_images < 0 or cfg.eval_every < 1:
        raise ValueError(f"eval_images {cfg.eval_images}, eval_every {cfg.eval_every}: expected images >= 0 "
                         f"(0: no held-out evaluation) and a period >= 1")

    work_dir = Path(work_dir)
    torch.manual_seed(cfg.seed)
    dev = torch.device(device)
    model = load_clip(cfg.model, None)
    model.requires_grad_(True)
    model.train()
    tokenizer = load_tokenizer(cfg.model)
    world = World(object_scale=cfg.object_scale, parts=cfg.parts, varied_backdrops=cfg.varied_backdrops)
    model.to(dev)
    teacher = copy.deepcopy(model).requires_grad_(False).eval()
    optimizer = build_optimizer(model, cfg)
    seen = torch.zeros(model.token_embedding.num_embeddings, dtype=torch.bool)
    history: list[dict] = []
    step, elapsed = 0, 0.0
    ckpt_path = work_dir / "last.pth"
    if ckpt_path.is_file():
        state = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        if _identity(state.get("config") or {}) != _identity(asdict(cfg)):
            raise ValueError(f"{ckpt_path} was written with other settings {state.get('config')}; "
                             f"use another work dir or the same settings")
        model.load_state_dict(state["model"])
        teacher.load_state_dict(state["teacher"])
        optimizer.load_state_dict(state["optimizer"])
        step, seen, history, elapsed = state["step"], state["seen"], state["history"], state["elapsed"]
        log.info("resumed from %s at step %d", ckpt_path, step)
    images = labels = None
    if cfg.eval_images > 0:
        images, labels = eval_set(world, cfg.image_size, cfg.eval_images, cfg.seed)
        images = images.to(dev)
    loss_fn = ClipLoss()
    pairs = WorldPairs(world, tokenizer, cfg.image_size, cfg.seed, cfg.crop_prob, cfg.background_views,
                       cfg.background_caption, cfg.object_template, cfg.background_negatives)
    loader = DataLoader(pairs, batch_size=cfg.batch_size, sampler=_From(step * cfg.batch_size),
                        num_workers=cfg.num_workers, persistent_workers=cfg.num_workers > 0,
                        prefetch_factor=4 if cfg.num_workers > 0 else None, pin_memory=dev.type == "cuda")
    stream = iter(loader)

    def save() -> None:
        atomic_torch_save({"model": model.state_dict(), "teacher": teacher.state_dict(),
                           "optimizer": optimizer.state_dict(), "step": step,
                           "seen": seen, "history": history, "elapsed": elapsed, "config": asdict(cfg)}, ckpt_path)

    patch = model.visual.patch_size[0]
    grid = cfg.image_size // patch
    bar = tqdm(total=cfg.steps, initial=step, desc="pretrain organism", disable=not progress, dynamic_ncols=True)
    ema = local_ema = attention_ema = None
    n = cfg.local_images
    blocks = model.visual.transformer.resblocks
    while step < cfg.steps:
        t0 = time.perf_counter()
        x, tokens = next(stream)
        seen[tokens.flatten()] = True
        x, tokens = x.to(dev, non_blocking=True), tokens.to(dev, non_blocking=True)
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, cfg)
        subset = PatchSubset(cfg.patch_dropout, cfg.seed, step) if dropout_on(step, cfg) else nn.Identity()
        model.visual.patch_dropout = subset
        pooled, dense, states = encode_image_dense(model.visual, x, cfg.local_path, count=n)
        captioned = tokens[:, 0] != 0                 # False: an uncaptioned background crop (background_negatives)
        img = F.normalize(pooled, dim=-1)
        txt = F.normalize(encode_captions(model, tokens[captioned]), dim=-1)
        if bool(captioned.all()):                     # open_clip's ClipLoss: the shipped run's arithmetic
            contrastive = loss_fn(img, txt, model.logit_scale.exp())
        else:                                         # the uncaptioned crops are negatives of every caption
            contrastive = contrastive_loss(img, txt, captioned, model.logit_scale.exp())
        loss, local, attention = contrastive, None, None
        kept = subset.kept[:n] if isinstance(subset, PatchSubset) else None
        if cfg.local_weight > 0 and n > 0:
            boxes = draw_boxes(grid, n, _step_generator(cfg.seed + LOCAL_SEED_OFFSET, step))[:, None]
            local = local_loss(teacher, x[:n], boxes, dense, kept, patch)
            loss = loss + cfg.local_weight * local
        if cfg.attention_weight > 0 and n > 0:
            target = affinity_target(teacher_dense(teacher.visual, x[:n], kept), cfg.attention_temperature)
            attention = attention_loss(blocks, [s[:n] for s in states], target)
            loss = loss + cfg.attention_weight * attention
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        ema_update(teacher, model, cfg.ema_momentum)
        step += 1
        elapsed += time.perf_counter() - t0
        value = contrastive.item()
        ema = value if ema is None else 0.95 * ema + 0.05 * value
        local_ema = _smooth(local_ema, local)
        attention_ema = _smooth(attention_ema, attention)
        bar.update(1)
        bar.set_postfix(loss=f"{ema:.3f}", local=_shown(local_ema), attention=_shown(attention_ema))
        if step % cfg.eval_every == 0 or step == cfg.steps:
            m_ap = None if images is None else zero_shot_map(model, tokenizer, world, images, labels)
            history.append({"step": step, "loss": ema, "local_loss": local_ema, "attention_loss": attention_ema,
                            "zero_shot_map": m_ap, "seconds": round(elapsed, 1)})
            bar.write(f"step {step}: loss {ema:.3f}  local {_shown(local_ema)}  attention {_shown(attention_ema)}"
                      f"  held-out zero-shot mAP {_shown(m_ap)}  ({elapsed / 60:.1f} min)")
        if step % cfg.ckpt_every == 0 or step == cfg.steps:
            save()
    bar.close()
    model.visual.patch_dropout = nn.Identity()
    summary = dict(history[-1]) if history else {"step": step}
    if export is not None:
        keep = seen | torch.zeros_like(seen).index_fill_(
            0, _vocabulary_ids(tokenizer, pipeline_texts(world, background_names=background_names)), True)
        save_organism_weights(model.cpu(), keep, export, meta={**summary, "config": asdict(cfg)})
        log.info("wrote the organism weights to %s", export)
    return summary
