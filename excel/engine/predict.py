"""Prediction on any images: label PNGs and colour overlays with a legend.

Two modes:

- **trained**: a checkpoint's decoder, multi-scale + flip logits as configured (``infer.scales``,
  ``infer.flip_at_unit_scale``), argmax, optionally the dense CRF (``infer.crf``);
- **training-free** (open vocabulary): any class names; the LAM + pseudo-label pipeline of algorithm.md §9.4
  (input resized to ``model.input_size``, plain LAM, Q = None, ϑ = ``infer.box_threshold``, PAR on the normalised
  input). Its image-level label vector is chosen per image:

  * ``labels="cls"`` (default): CLIP zero-shot classification. The CLS embedding (row 0 of Y, which is CLIP's
    ordinary image embedding, L2-normalised over channels) is compared with the foreground text rows, scaled by
    CLIP's own logit scale and soft-maxed over the given classes; a class is present when its probability is at
    least ``cls_threshold``, and the top class is always present. Reason: the pseudo-label pipeline min-max
    normalises every requested class, so an absent class would otherwise still claim pixels.
  * ``labels="all"``: every given class is present (right when the user lists only what is in the image).

  The text bank uses TSE when a knowledge base is given (its cluster bank is built on the fly and cached), plain
  prompts otherwise.

Outputs under ``output_dir``: ``labels/<name>.png`` (palette PNG, index 0 = background, c + 1 = class c),
``overlays/<name>.png`` (the image with the label colours and a legend), ``classes.json`` and
``predictions.json`` (per image: source file, size, classes found, and the CLS scores in training-free mode), and
``report.html`` (classes found, a gallery of thumbnails; see :mod:`excel.evaluation.report`).
"""
from __future__ import annotations

import glob
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from omegaconf import DictConfig

from excel.errors import UsageError
from excel.config import CONFIG_DIR, load_config
from excel.cam import PseudoLabeler
from excel.data.transforms import normalize
from excel.data.voc import load_image
from excel.engine.cli import config_for_checkpoint
from excel.engine.checkpoint import build_seeded_model, load_trained_model
from excel.engine.inference import multiscale_logits, resize_square
from excel.evaluation import crf_params, dense_crf
from excel.evaluation.report import Gallery
from excel.model import load_configured_clip
from excel.utils.io import atomic_save_png, atomic_write_json
from excel.utils.palette import voc_palette
from excel.utils.vis import save_overlay

log = logging.getLogger(__name__)

__all__ = ["IMAGE_SUFFIXES", "collect_images", "parse_class_list", "read_class_file", "set_vocabulary",
           "predict_config", "Prediction", "Predictor", "predict_images"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
LABEL_MODES = ("cls", "all")
CLUSTERS_PER_SENTENCE = 112 / 400  # the VOC ratio (algorithm.md §3.2), used to size the bank of a small knowledge base


# ----------------------------------------------------------------------------- files
def collect_images(inputs: Sequence[str]) -> list[Path]:
    """Image files named by ``inputs``: files, folders (searched recursively) or glob patterns, sorted per input.

    Raises:
        FileNotFoundError: an input matches nothing, or no image is found at all.
    """
    found: list[Path] = []
    for item in inputs:
        path = Path(item).expanduser()
        if path.is_dir():
            matches = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        elif path.is_file():
            matches = [path]
        else:
            matches = sorted(Path(p) for p in glob.glob(str(path), recursive=True)
                             if Path(p).is_file() and Path(p).suffix.lower() in IMAGE_SUFFIXES)
        if not matches:
            raise FileNotFoundError(f"predict: {item!r} is not an image file, a folder with images, nor a glob that "
                                    f"matches any (image suffixes: {', '.join(IMAGE_SUFFIXES)})")
        found.extend(m for m in matches if m not in found)
    return found


def _output_names(paths: Sequence[Path]) -> list[str]:
    """Unique output stems: the file stem, prefixed with its parent folder (then a number) on a clash."""
    names: list[str] = []
    for p in paths:
        name = p.stem
        if name in names:
            name = f"{p.parent.name}_{p.stem}"
        base, k = name, 1
        while name in names:
            k += 1
            name = f"{base}_{k}"
        names.append(name)
    return names


# ----------------------------------------------------------------------------- vocabulary
def parse_class_list(text: str) -> list[str]:
    """``"cat, dog,traffic light"`` -> ``["cat", "dog", "traffic light"]`` (empty entries are an error)."""
    names = [n.strip() for n in text.split(",")]
    if not names or any(not n for n in names):
        raise UsageError(f"--classes {text!r}: expected comma-separated class names, e.g. \"cat,dog\"")
    return names


def read_class_file(path: str | Path) -> dict[str, list[str]]:
    """Read a class YAML: a list of names, or a mapping with ``class_names`` and optionally ``prompt_names`` and
    ``background_names``. Returns those keys (absent ones omitted)."""
    from omegaconf import ListConfig, OmegaConf

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"class file not found: {path}")
    data = OmegaConf.load(path)
    if isinstance(data, ListConfig):
        data = OmegaConf.create({"class_names": list(data)})
    known = {"class_names", "prompt_names", "background_names"}
    unknown = set(data.keys()) - known
    if unknown or "class_names" not in data:
        raise UsageError(f"class file {path}: expected a list of names or a mapping with class_names (and optionally "
                         f"prompt_names, background_names); got keys {sorted(map(str, data.keys()))}")
    out = {k: [str(v) for v in data[k]] for k in known if k in data}
    if not out["class_names"]:
        raise UsageError(f"class file {path}: class_names is empty")
    if "prompt_names" in out and len(out["prompt_names"]) != len(out["class_names"]):
        raise UsageError(f"class file {path}: prompt_names has {len(out['prompt_names'])} entries but class_names "
                         f"has {len(out['class_names'])}")
    return out


def set_vocabulary(cfg: DictConfig, class_names: Sequence[str], prompt_names: Sequence[str] | None = None,
                   background_names: Sequence[str] | None = None, knowledge_base: str | None = None,
                   keep_num_clusters: bool = False) -> DictConfig:
    """Point ``cfg`` (in place) at an open vocabulary: class and prompt names, optional background prompts, and
    TSE from ``knowledge_base`` (None = plain prompts, tse.enabled=false).

    Without ``keep_num_clusters`` the bank size is min(tse.num_clusters, ceil(sentences * 112 / 400)), the VOC
    clusters-per-sentence ratio, so a small knowledge base still clusters.
    """
    cfg.data.class_names = list(class_names)
    cfg.data.prompt_names = list(prompt_names) if prompt_names else list(class_names)
    if background_names is not None:
        cfg.data.background_names = list(background_names)
    cfg.tse.bank_file = None
    if knowledge_base is None:
        cfg.tse.enabled = False
        cfg.tse.knowledge_base = None
        return cfg
    from excel.text.knowledge import load_knowledge_base

    knowledge = load_knowledge_base(knowledge_base, list(class_names), list(cfg.data.prompt_names),
                                    min_sentences=int(cfg.tse.min_sentences))
    cfg.tse.enabled = True
    cfg.tse.knowledge_base = str(knowledge_base)
    if not keep_num_clusters:
        sentences = sum(len(v) for v in knowledge.values())
        cfg.tse.num_clusters = int(min(int(cfg.tse.num_clusters), max(1, math.ceil(sentences * CLUSTERS_PER_SENTENCE))))
    return cfg


def predict_config(config_files: Sequence[str | Path] = (), overrides: Sequence[str] = (),
                   checkpoint: str | Path | None = None, vocabulary: dict[str, list[str]] | None = None,
                   knowledge_base: str | None = None, default_config: str = "voc.yaml",
                   allow_base_reset: bool = False) -> DictConfig:
    """The config of a prediction run.

    Trained mode: base <- the config stored in ``checkpoint`` (when it has one, else ``default_config``) <-
    ``config_files`` <- ``overrides``. Training-free mode: base <- ``default_config`` <- ``config_files`` <-
    ``overrides``, then :func:`set_vocabulary` with ``vocabulary`` (keys class_names, prompt_names,
    background_names) and ``knowledge_base``; ``tse.num_clusters`` given in ``overrides`` is kept as is.
    """
    if checkpoint is not None and vocabulary is not None:
        raise UsageError("a trained checkpoint predicts the classes it was trained on; give either a checkpoint or "
                         "--classes/--classes-file (training-free), not both")
    if checkpoint is None and vocabulary is None:
        raise UsageError("predict needs a trained checkpoint (--checkpoint) or class names (--classes / "
                         "--classes-file) for training-free pseudo labels")
    defaults = [CONFIG_DIR / default_config]
    if checkpoint is not None:
        cfg = config_for_checkpoint(checkpoint, list(config_files), list(overrides), defaults, allow_base_reset)
    else:
        cfg = load_config(list(config_files), list(overrides), defaults=defaults, allow_base_reset=allow_base_reset)
    if vocabulary is not None:
        keep = any(o.split("=", 1)[0].strip() == "tse.num_clusters" for o in overrides)
        set_vocabulary(cfg, vocabulary["class_names"], vocabulary.get("prompt_names"),
                       vocabulary.get("background_names"), knowledge_base, keep_num_clusters=keep)
    elif knowledge_base is not None:
        raise UsageError("--knowledge-base is for training-free mode; a checkpoint's text bank comes from its config")
    return cfg


# ----------------------------------------------------------------------------- the predictor
@dataclass
class Prediction:
    """One image's result: ``label`` (H, W) uint8 (0 = background, c + 1 = class c), the foreground classes
    found, and in training-free mode the per-class CLS probabilities and the label vector used."""

    label: np.ndarray
    classes: list[str]
    cls_scores: dict[str, float] = field(default_factory=dict)
    label_vector: list[str] = field(default_factory=list)


class Predictor:
    """Predict label maps for RGB images with a trained checkpoint or training-free (see the module docstring).

    Args:
        cfg: the config (data.class_names etc. set; see :func:`set_vocabulary` for a vocabulary of your own).
        checkpoint: a trained checkpoint, or None for training-free pseudo labels.
        labels: ``cls`` or ``all`` (training-free only).
        cls_threshold: the CLS probability a class needs to count as present (``labels="cls"``).
        crf: run the dense CRF (trained mode only) with ``infer.crf_params``.
        device: where the model runs.
    """

    def __init__(self, cfg: DictConfig, checkpoint: str | Path | None = None, labels: str = "cls",
                 cls_threshold: float = 0.1, crf: bool = False, device: torch.device | str = "cpu") -> None:
        if labels not in LABEL_MODES:
            raise UsageError(f"labels={labels!r}: expected one of {LABEL_MODES}")
        if not 0.0 <= cls_threshold <= 1.0:
            raise UsageError(f"cls_threshold={cls_threshold}: expected a probability in [0, 1]")
        if crf and checkpoint is None:
            raise UsageError("the CRF is applied to trained-model predictions; give a checkpoint or drop --crf")
        self.cfg, self.labels, self.cls_threshold, self.crf = cfg, labels, float(cls_threshold), crf
        self.device = torch.device(device)
        self.class_names = list(cfg.data.class_names)
        self.trained = checkpoint is not None
        if self.trained:
            self.model = load_trained_model(cfg, checkpoint, self.device, mode="val")
            self.logit_scale = None
        else:
            clip_cfg = cfg.model.clip
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(int(cfg.run.seed))
                clip = load_configured_clip(clip_cfg)
            self.logit_scale = float(clip.logit_scale.exp()) if hasattr(clip, "logit_scale") else 100.0
            self.model = build_seeded_model(cfg, mode="val", clip_model=clip).to(self.device).eval()
            self.labeler = PseudoLabeler.from_config(cfg, "infer").to(self.device)

    def _normalised(self, rgb: np.ndarray) -> torch.Tensor:
        aug = self.cfg.data.augment
        return torch.from_numpy(normalize(rgb, tuple(aug.mean), tuple(aug.std)))[None].to(self.device)

    @torch.no_grad()
    def __call__(self, rgb: np.ndarray) -> Prediction:
        """Predict for one (H, W, 3) uint8 RGB image."""
        image = self._normalised(rgb)
        h, w = rgb.shape[:2]
        if self.trained:
            inf = self.cfg.infer
            logits = multiscale_logits(self.model, image, int(self.cfg.model.input_size), list(inf.scales),
                                       bool(inf.flip_at_unit_scale), (h, w))
            if self.crf:
                probs = torch.softmax(logits, dim=0).cpu().numpy()
                # a writable copy: pydensecrf rejects read-only buffers (np.asarray of a PIL image is one)
                label = dense_crf(np.array(rgb), probs, **crf_params(inf.crf_params)).argmax(0).astype(np.uint8)
            else:
                label = logits.argmax(0).to(torch.uint8).cpu().numpy()
            return Prediction(label, self._found(label))
        return self._training_free(image, (h, w))

    def cls_probabilities(self, tokens: torch.Tensor) -> torch.Tensor:
        """(1, N, D) tokens Y -> (C_fg,) zero-shot probabilities of the foreground classes (see module docstring)."""
        cls = torch.nn.functional.normalize(tokens[0, 0].float(), dim=-1)
        text = self.model.text_bank[: self.model.num_fg].float()
        return torch.softmax(self.logit_scale * (text @ cls), dim=0)

    def _training_free(self, image: torch.Tensor, size: tuple[int, int]) -> Prediction:
        cfg = self.cfg
        x = resize_square(image, int(cfg.model.input_size))
        enc = self.model.encode(x)
        probs = self.cls_probabilities(enc.visual.tokens)
        if self.labels == "all":
            present = torch.ones_like(probs, dtype=torch.bool)
        else:
            present = probs >= self.cls_threshold
            present[probs.argmax()] = True
        label = self.labeler(enc, present[None].float(), x, size)
        label_np = label[0].to(torch.uint8).cpu().numpy()
        return Prediction(label_np, self._found(label_np),
                          cls_scores={n: float(p) for n, p in zip(self.class_names, probs.tolist())},
                          label_vector=[n for n, keep in zip(self.class_names, present.tolist()) if keep])

    def _found(self, label: np.ndarray) -> list[str]:
        return [self.class_names[int(v) - 1] for v in np.unique(label) if 1 <= v <= len(self.class_names)]


def predict_images(predictor: Predictor, inputs: Sequence[str], output_dir: str | Path,
                   progress: bool = True) -> list[dict[str, Any]]:
    """Run ``predictor`` on every image named by ``inputs`` (files, folders, globs) and write the outputs
    (module docstring). Returns the per-image records of ``predictions.json``."""
    from tqdm import tqdm

    output_dir = Path(output_dir)
    paths = collect_images(inputs)
    names = ["background", *predictor.class_names]
    palette = voc_palette()
    atomic_write_json(output_dir / "classes.json", {str(i): n for i, n in enumerate(names)})
    gallery = Gallery(output_dir, names, int(predictor.cfg.infer.report_max_images), palette=palette,
                      variants=["prediction + CRF" if predictor.crf else "prediction"])
    records = []
    for path, name in tqdm(list(zip(paths, _output_names(paths))), desc="predict", disable=not progress,
                           dynamic_ncols=True):
        rgb = load_image(path)
        pred = predictor(rgb)
        atomic_save_png(pred.label, output_dir / "labels" / f"{name}.png", palette=palette)
        save_overlay(output_dir / "overlays" / f"{name}.png", rgb, pred.label, names)
        gallery.add(name, pred.label, rgb=rgb, links={"label": f"labels/{name}.png", "overlay": f"overlays/{name}.png"})
        record: dict[str, Any] = {"file": str(path), "name": name, "height": int(rgb.shape[0]),
                                  "width": int(rgb.shape[1]), "classes": pred.classes}
        if not predictor.trained:
            record["cls_scores"] = pred.cls_scores
            record["label_vector"] = pred.label_vector
        records.append(record)
        log.info("%s: %s", path, ", ".join(pred.classes) or "background only")
    atomic_write_json(output_dir / "predictions.json", records)
    mode = "trained checkpoint" if predictor.trained else f"training-free, --labels {predictor.labels}"
    gallery.finish("predict", f"{len(records)} images ({mode})",
                   notes=[f"classes: {', '.join(predictor.class_names)}"])
    log.info("wrote %d label maps and overlays to %s", len(records), output_dir)
    return records
