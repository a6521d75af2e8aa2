"""Checkpoints written by the reference's training script (algorithm.md §9.4a): recognise, convert, save as excel's.

The reference saves ``model.state_dict()`` of its DDP-wrapped model, so every key starts with ``module.``:
``encoder.*`` is the whole CLIP in OpenAI's naming (open_clip uses the same names), ``decoder_fts_fuse.*`` the fusion
head with one ``proj``/``proj_2`` Linear pair per layer, ``decoder.transformer.resblocks.{i}.*`` the transformer
blocks and ``decoder.linear_pred.*`` the classifier. :func:`reference_key_map` says where each decoder tensor goes
in :class:`excel.model.decoder.SegDecoder`, whose fusion head stores the per-layer Linears stacked.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import Tensor, nn

from excel.backbone import load_clip
from excel.engine.checkpoint.files import CheckpointError, save_checkpoint, strip_module_prefix

log = logging.getLogger(__name__)

__all__ = ["ReferenceCheckpoint", "is_reference_state", "reference_key_map", "convert_reference_state",
           "clip_from_state", "save_converted"]

ENCODER = "encoder."
FUSE = "decoder_fts_fuse."
_LAYER = re.compile(r"^decoder_fts_fuse\.linears_modulelist\.(\d+)\.")
_BLOCK = re.compile(r"^decoder\.transformer\.resblocks\.(\d+)\.")
_OPENAI_EXTRAS = ("input_resolution", "context_length", "vocab_size")  # TorchScript-only entries, not weights
# reference name inside a transformer block -> SegDecoder name inside ``transformer.blocks.{i}``
_BLOCK_NAMES = {
    "attn.in_proj_weight": "attn.in_proj_weight", "attn.in_proj_bias": "attn.in_proj_bias",
    "attn.out_proj.weight": "attn.out_proj.weight", "attn.out_proj.bias": "attn.out_proj.bias",
    "ln_1.weight": "norm1.weight", "ln_1.bias": "norm1.bias", "ln_2.weight": "norm2.weight", "ln_2.bias": "norm2.bias",
    "mlp.c_fc.weight": "mlp.0.weight", "mlp.c_fc.bias": "mlp.0.bias",
    "mlp.c_proj.weight": "mlp.2.weight", "mlp.c_proj.bias": "mlp.2.bias",
}


@dataclass
class ReferenceCheckpoint:
    """A converted reference checkpoint.

    decoder: a :class:`~excel.model.decoder.SegDecoder` state dict (``fusion.fc1_weight`` (L, E, W), ...).
    clip: the open_clip CLIP state dict (OpenAI naming); its ``visual.positional_embedding`` is the table as stored
        (resized for good to the training grid, algorithm.md §1.2); empty when the file holds no ``encoder.*``.
    """

    decoder: dict[str, Tensor]
    clip: dict[str, Tensor]

    def meta(self) -> dict[str, Any]:
        """What an excel checkpoint of this decoder is checked against: class count and decoder width."""
        return {"num_classes": int(self.decoder["classifier.weight"].shape[0]),
                "embed_dim": int(self.decoder["fusion.fuse.weight"].shape[0]), "source": "reference"}


def is_reference_state(state: Mapping[str, Any]) -> bool:
    """True for a state dict laid out by the reference (``module.`` prefixes optional): it has fusion-head keys."""
    return any(k.startswith(FUSE) for k in strip_module_prefix(state))


def reference_key_map(num_layers: int = 12, depth: int = 3) -> dict[str, tuple[str, int | None]]:
    """Reference decoder key (without ``module.``) -> (SegDecoder key, index along its first axis or None).

    The per-layer ``proj`` (W -> E) and ``proj_2`` (E -> E) Linears become row ``l`` of the stacked
    ``fusion.fc{1,2}_{weight,bias}``; every other tensor maps one to one.
    """
    keys: dict[str, tuple[str, int | None]] = {}
    for layer in range(num_layers):
        for ref, ours in (("proj", "fc1"), ("proj_2", "fc2")):
            for kind in ("weight", "bias"):
                keys[f"{FUSE}linears_modulelist.{layer}.{ref}.{kind}"] = (f"fusion.{ours}_{kind}", layer)
    for kind in ("weight", "bias"):
        keys[f"{FUSE}linear_fuse.{kind}"] = (f"fusion.fuse.{kind}", None)
        keys[f"decoder.linear_pred.{kind}"] = (f"classifier.{kind}", None)
    for block in range(depth):
        for ref, ours in _BLOCK_NAMES.items():
            keys[f"decoder.transformer.resblocks.{block}.{ref}"] = (f"transformer.blocks.{block}.{ours}", None)
    return keys


def _listing(keys: list[str]) -> str:
    return f"{keys[:6]}{' ...' if len(keys) > 6 else ''}"


def convert_reference_state(state: Mapping[str, Tensor], source: str = "checkpoint") -> ReferenceCheckpoint:
    """Split a reference state dict into a SegDecoder state dict and the CLIP weights.

    Raises:
        CheckpointError: a decoder tensor is missing, a key is not part of the reference's layout, or the
            per-layer Linears differ in shape; the message names the keys.
    """
    state = strip_module_prefix(state)
    clip = {k[len(ENCODER):]: v for k, v in state.items()
            if k.startswith(ENCODER) and k[len(ENCODER):] not in _OPENAI_EXTRAS}
    rest = {k: v for k, v in state.items() if not k.startswith(ENCODER)}
    num_layers = len({int(m.group(1)) for k in rest if (m := _LAYER.match(k))})
    depth = len({int(m.group(1)) for k in rest if (m := _BLOCK.match(k))})
    keys = reference_key_map(num_layers, depth)
    unknown, missing = sorted(set(rest) - set(keys)), sorted(set(keys) - set(rest))
    if unknown or missing:
        problems = ([f"keys outside the reference's layout: {_listing(unknown)}"] if unknown else []) + \
                   ([f"missing decoder keys: {_listing(missing)}"] if missing else [])
        raise CheckpointError(f"{source} looks like a checkpoint of the reference's training script but "
                              f"{'; '.join(problems)} (algorithm.md §9.4a lists the layout)")
    decoder: dict[str, Tensor] = {}
    stacked: dict[str, list[Tensor]] = {}
    for ref, (ours, index) in keys.items():
        if index is None:
            decoder[ours] = rest[ref]
        else:
            stacked.setdefault(ours, [None] * num_layers)[index] = rest[ref]  # type: ignore[list-item]
    for ours, rows in stacked.items():
        shapes = {tuple(r.shape) for r in rows}
        if len(shapes) != 1:
            raise CheckpointError(f"{source}: the per-layer fusion Linears for {ours} differ in shape: {sorted(shapes)}")
        decoder[ours] = torch.stack(rows)
    return ReferenceCheckpoint(decoder=decoder, clip=clip)


def clip_from_state(name: str, state: Mapping[str, Tensor], force_quick_gelu: bool = True,
                    source: str = "checkpoint") -> nn.Module:
    """An open_clip model ``name`` holding the CLIP weights ``state`` (OpenAI / open_clip naming).

    A visual positional table of another grid (the reference stores the one resized for good to 20 x 20) replaces
    the architecture's table as it is.

    Raises:
        CheckpointError: the weights do not fit the architecture (names the keys or the shape).
    """
    model = load_clip(name, None, force_quick_gelu=force_quick_gelu)
    table = state.get("visual.positional_embedding")
    if table is not None and table.shape != model.visual.positional_embedding.shape:
        model.visual.positional_embedding = nn.Parameter(table.detach().clone().float(), requires_grad=False)
    try:
        missing, unexpected = model.load_state_dict(dict(state), strict=False)
    except RuntimeError as err:
        raise CheckpointError(f"the CLIP weights in {source} do not fit model.clip.name={name}: {err}") from err
    missing = [k for k in missing if not k.endswith("attn_mask")]
    if missing or unexpected:
        raise CheckpointError(f"the CLIP weights in {source} do not fit model.clip.name={name}: missing "
                              f"{_listing(missing)}, unexpected {_listing(list(unexpected))}")
    return model.eval().requires_grad_(False)


def save_converted(converted: ReferenceCheckpoint, path: str | Path, iteration: int = 0) -> Path:
    """Write ``converted`` as an excel checkpoint: ``model`` = the decoder, ``clip`` = the CLIP weights (used when
    ``model.clip.pretrained`` is unset), meta = class count and decoder width, no optimizer state."""
    extra = {"clip": converted.clip} if converted.clip else {}
    return save_checkpoint(path, converted.decoder, None, iteration, None, extra=extra, meta=converted.meta())
