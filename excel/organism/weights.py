"""The shipped organism weights: fp16 storage, and only the token-embedding rows that the world's texts use.

File layout (``torch.save`` of a dict): ``format`` ("excel-organism/1"), ``model`` (the open_clip architecture
name), ``state_dict`` (fp16 tensors; ``token_embedding.weight`` holds the kept rows only), ``token_ids`` (the
kept rows' ids), ``vocab_size``, ``meta`` (how it was made and its held-out zero-shot mAP). Loading fills the
dropped rows with zeros and copies the fp16 values into the fp32 model, as OpenAI's fp16 weights are loaded.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from excel.backbone.clip_loader import WeightFormat, register_weights
from excel.errors import ExcelError
from excel.utils.io import atomic_torch_save

FORMAT = "excel-organism/1"
SHIPPED = Path(__file__).resolve().parent / "weights" / "excel-organism.pt"


class OrganismWeightsError(ExcelError, RuntimeError):
    """An organism weight file is missing, of another format, or of another architecture."""


def save_organism_weights(model: nn.Module, keep: Tensor, path: str | Path, meta: dict[str, Any]) -> None:
    """Write ``model`` in the shipped format, keeping the token-embedding rows where ``keep`` (V,) is True."""
    ids = keep.nonzero().flatten()
    state = {k: v.detach().to(torch.float16).clone() for k, v in model.state_dict().items()
             if not k.endswith("attn_mask")}
    state["token_embedding.weight"] = state["token_embedding.weight"][ids].clone()
    atomic_torch_save({"format": FORMAT, "model": "excel-organism", "state_dict": state, "token_ids": ids,
                       "vocab_size": int(keep.numel()), "meta": meta}, path)


def is_organism_file(path: str | Path) -> bool:
    """Whether ``path`` is a file in the shipped organism format (cheap: reads the dict's keys)."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - any unreadable file is simply not ours
        return False
    return isinstance(obj, dict) and obj.get("format") == FORMAT


def load_organism_weights(model: nn.Module, path: str | Path = SHIPPED) -> dict[str, Any]:
    """Copy the organism weights at ``path`` into ``model`` (built as ``excel-organism``); returns ``meta``."""
    path = Path(path)
    if not path.is_file():
        raise OrganismWeightsError(f"organism weights not found: {path}; the package ships them at {SHIPPED} "
                                   f"(rebuild with: python tools/pretrain_organism.py)")
    obj = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise OrganismWeightsError(f"{path} is not an organism weight file (expected format {FORMAT!r})")
    state = dict(obj["state_dict"])
    emb = model.token_embedding.weight
    if emb.shape[0] != obj["vocab_size"] or emb.shape[1] != state["token_embedding.weight"].shape[1]:
        raise OrganismWeightsError(f"{path} holds a {obj['vocab_size']}x{state['token_embedding.weight'].shape[1]} "
                                   f"token table but the model has {tuple(emb.shape)}: build it as "
                                   f"model.clip.name=excel-organism")
    full = torch.zeros(obj["vocab_size"], emb.shape[1], dtype=torch.float16)
    full[obj["token_ids"]] = state["token_embedding.weight"]
    state["token_embedding.weight"] = full
    own = model.state_dict()
    wrong = [k for k, v in state.items() if k not in own or own[k].shape != v.shape]
    missing = [k for k in own if k not in state and not k.endswith("attn_mask")]
    if wrong or missing:
        raise OrganismWeightsError(f"{path} does not match the model's architecture: unexpected or mis-shaped "
                                   f"{wrong[:4]}, missing {missing[:4]}; build it as model.clip.name=excel-organism")
    model.load_state_dict({k: v.float() for k, v in state.items()}, strict=False)
    return dict(obj.get("meta", {}))


register_weights(WeightFormat("organism", SHIPPED, is_organism_file, load_organism_weights))
