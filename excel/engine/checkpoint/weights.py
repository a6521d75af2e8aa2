"""Trained weights into a model: the seeded build, the checks of a state dict against the model, and the loading of
a trained checkpoint (excel's, a plain state dict, or the reference's) for inference (algorithm.md §9.2, §9.4a)."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Mapping

import torch
from omegaconf import DictConfig

from excel.backbone.clip_loader import set_download_order
from excel.engine import dist
from excel.engine.checkpoint.files import (CheckpointError, check_compatible, class_count_mismatch, load_checkpoint,
                                           strip_module_prefix)
from excel.engine.checkpoint.reference import clip_from_state, convert_reference_state, is_reference_state
from excel.model import ExCEL, build_model

log = logging.getLogger(__name__)

# every run builds its model through this module: there the CLIP loader's one download step goes one process per
# machine first, the others after a barrier (excel.engine.dist.node_leader_first)
set_download_order(dist.node_leader_first)

__all__ = ["build_seeded_model", "load_model_weights", "load_trained_model"]

POS_EMBED_SUFFIX = "positional_embedding"


def build_seeded_model(cfg: DictConfig, mode: str = "val", clip_model: torch.nn.Module | None = None) -> ExCEL:
    """``build_model(cfg, mode=mode)`` with torch's generator seeded by ``run.seed`` (the caller's RNG is kept).

    Training seeds torch right before building the model, so a random-init CLIP (``model.clip.pretrained=null``)
    comes out identical here, and a decoder-only checkpoint of such a run can be evaluated.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(cfg.run.seed))
        return build_model(cfg, clip_model=clip_model, mode=mode)


def _shape_problems(state: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor], prefix: str) -> list[str]:
    problems = []
    for key, value in state.items():
        if key in expected and tuple(value.shape) != tuple(expected[key].shape):
            problems.append(f"{prefix}{key} has shape {tuple(value.shape)} in the checkpoint but "
                            f"{tuple(expected[key].shape)} in the model")
    return problems


def _mismatch_hint(state: Mapping[str, torch.Tensor], model: ExCEL) -> str:
    """Name the likely cause of a shape mismatch: class count (classifier rows) or backbone (fusion input width)."""
    hints = []
    cls_w = state.get("classifier.weight")
    if cls_w is not None and cls_w.shape[0] != model.decoder.classifier.out_channels:
        hints.append(class_count_mismatch(int(cls_w.shape[0]), int(model.decoder.classifier.out_channels)))
    fc1 = state.get("fusion.fc1_weight")
    expected = model.decoder.fusion.fc1_weight
    if fc1 is not None and fc1.dim() == 3 and (fc1.shape[0] != expected.shape[0] or fc1.shape[2] != expected.shape[2]):
        hints.append(f"the checkpoint's decoder reads {fc1.shape[0]} layers of width {fc1.shape[2]} but the "
                     f"backbone (model.clip.name) has {expected.shape[0]} layers of width {expected.shape[2]}")
    return ("; " + "; ".join(hints)) if hints else ""


def load_model_weights(model: ExCEL, state: Mapping[str, torch.Tensor], source: str = "checkpoint") -> None:
    """Check a decoder-only or full-model state dict against ``model``, then load it (``ExCEL.load_decoder_state``).

    ``module.`` prefixes are stripped; a full-model state (keys ``decoder.*``, ``visual.vit.*``) also restores the
    CLIP weights except the positional embedding, which is always discarded (algorithm.md §9.2, quirk 8).

    Raises:
        CheckpointError: a shape differs (another class count, backbone or decoder width), or decoder keys are
            missing or unexpected; the message names the keys and the likely cause.
    """
    state = strip_module_prefix(state)
    full = any(k.startswith("decoder.") for k in state)
    decoder_state = {k[len("decoder."):]: v for k, v in state.items() if k.startswith("decoder.")} if full else \
        dict(state)
    expected = model.decoder.state_dict()
    problems = _shape_problems(decoder_state, expected, "decoder." if full else "")
    missing = sorted(set(expected) - set(decoder_state))
    unexpected = sorted(set(decoder_state) - set(expected))
    if missing:
        problems.append(f"decoder keys missing from the checkpoint: {missing[:6]}{' ...' if len(missing) > 6 else ''}")
    if unexpected:
        problems.append(f"unexpected decoder keys in the checkpoint: {unexpected[:6]}"
                        f"{' ...' if len(unexpected) > 6 else ''}")
    if full:
        vit_state = {k[len("visual.vit."):]: v for k, v in state.items()
                     if k.startswith("visual.vit.") and not k.endswith(POS_EMBED_SUFFIX)}
        problems += _shape_problems(vit_state, model.visual.vit.state_dict(), "visual.vit.")[:4]
    if problems:
        raise CheckpointError(f"{source} does not fit the model built from the config: " + "; ".join(problems)
                              + _mismatch_hint(decoder_state, model))
    try:
        model.load_decoder_state(dict(state), strict=True)
    except RuntimeError as err:
        raise CheckpointError(f"{source} does not fit the model built from the config: {err}") from err
    if full:
        log.info("%s: full model; CLIP weights restored except the positional embedding", source)


def load_trained_model(cfg: DictConfig, checkpoint: str | Path | None, device: torch.device,
                       mode: str = "val") -> ExCEL:
    """Build the model for inference on split ``mode`` and load a trained checkpoint into it.

    The permanent positional resize happens only when ``mode`` contains "train" (quirk 8); the checkpoint's
    positional embedding, if it holds a full model, is always discarded. ``module.`` prefixes are stripped, and a
    checkpoint for another backbone or class count is refused with a message naming the mismatch.

    A file written by the reference's training script (algorithm.md §9.4a) is recognised and its decoder converted.
    CLIP weights stored with the decoder (the reference's ``encoder.*``, or the ``clip`` entry that
    ``tools/convert_checkpoint.py`` writes) are used when ``model.clip.pretrained`` is unset; their positional
    table is then the one the file holds.

    Args:
        checkpoint: an excel checkpoint, a plain state dict file or a reference checkpoint; None keeps the built
            (random) decoder.
    Returns:
        The model on ``device`` in eval mode.
    Raises:
        FileNotFoundError, CheckpointError: see :func:`excel.engine.checkpoint.load_checkpoint` and
            :func:`load_model_weights`.
    """
    if checkpoint is None:
        return build_seeded_model(cfg, mode=mode).to(device).eval()
    ckpt = load_checkpoint(checkpoint, map_location="cpu")
    state, clip_state = ckpt["model"], ckpt.get("clip") or {}
    if is_reference_state(state):
        converted = convert_reference_state(state, source=str(checkpoint))
        state, clip_state = converted.decoder, converted.clip
        log.info("%s was written by the reference's training script: decoder converted (algorithm.md §9.4a)",
                 checkpoint)
    unset = cfg.model.clip.pretrained in (None, "")
    clip_model = None
    if clip_state and unset:
        clip_model = clip_from_state(str(cfg.model.clip.name), clip_state, bool(cfg.model.clip.force_quick_gelu),
                                     source=str(checkpoint))
        log.info("CLIP weights from %s (model.clip.pretrained is unset)", checkpoint)
    elif clip_state:
        log.info("%s also holds CLIP weights; model.clip.pretrained=%s is used instead", checkpoint,
                 cfg.model.clip.pretrained)
    model = build_seeded_model(cfg, mode=mode, clip_model=clip_model)
    native = getattr(model.visual.vit, "grid_size", (model.visual.pos_grid,))[0]
    if clip_model is not None and "train" not in mode and model.visual.pos_grid != native:
        log.warning("the positional table stored in %s is %dx%d and the original %dx%d one is not in the file: "
                    "other input sizes interpolate from the stored table (algorithm.md §1.2, §9.4a)", checkpoint,
                    model.visual.pos_grid, model.visual.pos_grid, native, native)
    check_compatible(ckpt.get("meta") or {}, model.meta(), source=str(checkpoint))
    load_model_weights(model, state, source=str(checkpoint))
    log.info("loaded %s (iteration %s)", checkpoint, ckpt.get("iteration"))
    if unset and not clip_state and not any(k.startswith("visual.") for k in strip_module_prefix(state)):
        log.warning("model.clip.pretrained is null and %s holds the decoder only: CLIP is rebuilt at random with "
                    "run.seed=%s, which matches the trained run only if it used the same seed", checkpoint,
                    cfg.run.seed)
    return model.to(device).eval()
