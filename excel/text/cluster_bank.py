"""Cluster banks for Text Semantic Enrichment (algorithm.md §3.2).

A cluster bank is the KMeans codebook of the knowledge-base sentence embeddings, stored in the authors' format:
a torch-pickled list ``[centers (D, J) float32, flags (C_fg, J) float32]`` where ``centers`` are the KMeans
centres transposed (not re-normalised) and ``flags[c, j] = 1`` when a sentence of class ``c`` fell in cluster
``j`` (flags are informational only).

:func:`get_cluster_bank` is what the model calls: the authors' bank file when ``tse.bank_file`` is set, else a
bank built from ``tse.knowledge_base`` and cached under ``tse.cache_dir`` by a content hash of everything that
changes the result (knowledge-base bytes, CLIP architecture and weights identity, class order, clustering
settings). Under torch.distributed only rank 0 builds; the others wait and load its file.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from excel.errors import ExcelError
from excel.text.knowledge import load_knowledge_base
from excel.utils.io import atomic_torch_save
from excel.utils.paths import REPO_ROOT

log = logging.getLogger(__name__)

BANK_FORMAT_VERSION = 1  # bump when the build recipe changes so old cache entries are not reused


class ClusterBankError(ExcelError, ValueError):
    """A cluster-bank file, or the config that points at one, is not what the project expects."""


@dataclass
class ClusterBank:
    """A loaded or built bank and where it came from.

    centers: (D, J) float32; flags: (C_fg, J) float32; path: the .pth file (on rank 0's disk for 'rank0');
    source: 'bank_file' | 'cache' | 'built' | 'rank0' (received from rank 0 under torch.distributed).
    """
    centers: Tensor
    flags: Tensor
    path: Path
    source: str


# ----------------------------------------------------------------------------------------------- file format

def _as_float_tensor(x: Any, what: str, path: Path) -> Tensor:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    if not isinstance(x, Tensor):
        raise ClusterBankError(f"cluster bank {path}: {what} must be a tensor, got {type(x).__name__}")
    if x.dim() != 2:
        raise ClusterBankError(f"cluster bank {path}: {what} must be 2-D, got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ClusterBankError(f"cluster bank {path}: {what} must be floating point, got {x.dtype}")
    return x.detach().to(dtype=torch.float32, device="cpu").contiguous()


def load_cluster_bank(path: str | os.PathLike) -> tuple[Tensor, Tensor]:
    """Load a bank in the authors' format.

    Returns:
        centers (D, J) float32 and flags (C_fg, J) float32, on CPU.
    Raises:
        ClusterBankError: missing/unreadable file, not a 2-element list, wrong ranks, dtypes or a J mismatch;
        the message names the file.
    """
    path = Path(path)
    if not path.is_file():
        raise ClusterBankError(f"cluster bank file not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, struct.error) as err:  # struct: junk bytes
        raise ClusterBankError(f"cannot read cluster bank {path} (expected torch.save([centers, flags])): "
                               f"{err}") from err
    if not isinstance(obj, (list, tuple)) or len(obj) != 2:
        length = f" of length {len(obj)}" if isinstance(obj, (list, tuple)) else ""
        raise ClusterBankError(f"cluster bank {path} must hold a list [centers (D,J), flags (C_fg,J)], "
                               f"got {type(obj).__name__}{length}")
    centers = _as_float_tensor(obj[0], "centers (D,J)", path)
    flags = _as_float_tensor(obj[1], "flags (C_fg,J)", path)
    if centers.shape[1] != flags.shape[1]:
        raise ClusterBankError(f"cluster bank {path}: centers have {centers.shape[1]} clusters (shape "
                               f"{tuple(centers.shape)}) but flags have {flags.shape[1]} (shape {tuple(flags.shape)})")
    return centers, flags


def save_cluster_bank(path: str | os.PathLike, centers: Tensor, flags: Tensor) -> None:
    """Write ``[centers (D,J), flags (C_fg,J)]`` float32 in the authors' format, atomically."""
    atomic_torch_save([centers.detach().float().cpu().contiguous(), flags.detach().float().cpu().contiguous()], path)


# ------------------------------------------------------------------------------------------------- building

def text_embed_dim(clip_model: torch.nn.Module) -> int:
    """D, the width of ``clip_model.encode_text`` outputs."""
    proj = getattr(clip_model, "text_projection", None)
    if isinstance(proj, Tensor) and proj.dim() == 2:
        return int(proj.shape[1])
    if isinstance(proj, torch.nn.Linear):
        return int(proj.out_features)
    embed_dim = getattr(clip_model, "embed_dim", None)
    if isinstance(embed_dim, int):
        return embed_dim
    raise ClusterBankError(f"cannot tell the text embedding width of {type(clip_model).__name__}")


@torch.no_grad()
def encode_sentences(clip_model: torch.nn.Module, tokenizer: Callable[[list[str]], Tensor], sentences: Sequence[str],
                     batch_size: int = 256, progress: bool = False) -> Tensor:
    """Encode sentences with the CLIP text tower and L2-normalise (fp32).

    Returns:
        (S, D) float32 on CPU, rows of unit norm.
    """
    from tqdm import tqdm

    device = next(clip_model.parameters()).device
    chunks = []
    starts = range(0, len(sentences), batch_size)
    for s in tqdm(starts, desc="encode sentences", unit="batch", disable=not progress):
        tokens = tokenizer(list(sentences[s:s + batch_size])).to(device)
        emb = clip_model.encode_text(tokens).float()
        chunks.append(F.normalize(emb, dim=-1).cpu())
    return torch.cat(chunks, dim=0)


def kmeans_bank(embeddings: Tensor, labels: Tensor, num_classes: int, num_clusters: int, seed: int = 0,
                n_init: int = 10) -> tuple[Tensor, Tensor]:
    """KMeans codebook of sentence embeddings (algorithm.md §3.2 fallback generation).

    Args:
        embeddings: (S, D) unit rows. labels: (S,) class index of each sentence in [0, num_classes).
    Returns:
        centers (D, J) float32 (centres transposed, not re-normalised); flags (num_classes, J) float32 with
        flags[c, j] = 1 iff a sentence of class c is assigned to cluster j.
    """
    from sklearn.cluster import KMeans

    n = embeddings.shape[0]
    if num_clusters > n:
        raise ClusterBankError(f"tse.num_clusters={num_clusters} is larger than the number of knowledge-base "
                               f"sentences ({n}); KMeans needs at least one sentence per cluster")
    x = embeddings.detach().float().cpu().numpy()
    km = KMeans(n_clusters=num_clusters, random_state=seed, n_init=n_init).fit(x)
    centers = torch.from_numpy(np.ascontiguousarray(km.cluster_centers_.T)).float()
    assign = torch.from_numpy(km.labels_.astype(np.int64))
    flags = torch.zeros(num_classes, num_clusters, dtype=torch.float32)
    flags[labels.long(), assign] = 1.0
    return centers, flags


def build_cluster_bank(clip_model: torch.nn.Module, tokenizer: Callable[[list[str]], Tensor],
                       knowledge: dict[str, list[str]], num_clusters: int, seed: int = 0, n_init: int = 10,
                       batch_size: int = 256, progress: bool = False) -> tuple[Tensor, Tensor]:
    """Lower-case, encode, L2-normalise and cluster every sentence of ``knowledge`` (classes in dict order).

    Returns:
        centers (D, J) float32 and flags (len(knowledge), J) float32.
    """
    sentences, labels = [], []
    for c, (_, sents) in enumerate(knowledge.items()):
        sentences.extend(s.lower() for s in sents)
        labels.extend([c] * len(sents))
    if num_clusters > len(sentences):
        raise ClusterBankError(f"tse.num_clusters={num_clusters} is larger than the number of knowledge-base "
                               f"sentences ({len(sentences)}); lower tse.num_clusters or add sentences")
    emb = encode_sentences(clip_model, tokenizer, sentences, batch_size=batch_size, progress=progress)
    return kmeans_bank(emb, torch.tensor(labels), len(knowledge), num_clusters, seed=seed, n_init=n_init)


# ---------------------------------------------------------------------------------------------- config glue

def resolve_path(path: str | os.PathLike) -> Path:
    """A relative path is taken from the working directory if it exists there, else from the folder above the
    package (the repository root; site-packages once installed, so ``excel/knowledge/...`` finds the shipped files)."""
    p = Path(path).expanduser()
    if p.is_absolute() or p.exists():
        return p
    alt = REPO_ROOT / p
    return alt if alt.exists() else p


def _weights_identity(clip_cfg: Any, clip_model: torch.nn.Module) -> dict[str, Any]:
    """What identifies the text tower's weights: the pretrained tag, a local file's size and mtime, or, for
    random init, cheap statistics of every text-tower tensor (so two random models never share a bank)."""
    pretrained = clip_cfg.pretrained
    ident: dict[str, Any] = {"pretrained": None if pretrained is None else str(pretrained)}
    if pretrained is not None and Path(str(pretrained)).expanduser().is_file():
        st = Path(str(pretrained)).expanduser().stat()
        ident["file"] = [str(Path(str(pretrained)).expanduser().resolve()), st.st_size, st.st_mtime_ns]
    elif pretrained is None:
        stats = []
        for name, t in clip_model.state_dict().items():
            if name.startswith("visual.") or not t.is_floating_point():
                continue
            t64 = t.detach().double()
            stats.append([name, list(t.shape), f"{t64.sum().item():.10e}", f"{t64.square().sum().item():.10e}"])
        ident["text_tensors"] = stats
    return ident


def bank_cache_key(kb_path: Path, cfg: Any, clip_model: torch.nn.Module) -> str:
    """sha256 over everything the built bank depends on."""
    desc = {
        "format": BANK_FORMAT_VERSION,
        "kb_sha256": hashlib.sha256(kb_path.read_bytes()).hexdigest(),
        "clip_name": str(cfg.model.clip.name),
        "force_quick_gelu": bool(cfg.model.clip.force_quick_gelu),
        "weights": _weights_identity(cfg.model.clip, clip_model),
        "class_names": list(cfg.data.class_names),
        "prompt_names": list(cfg.data.prompt_names),
        "num_clusters": int(cfg.tse.num_clusters),
        "kmeans_seed": int(cfg.tse.kmeans_seed),
        "kmeans_n_init": int(cfg.tse.kmeans_n_init),
    }
    return hashlib.sha256(json.dumps(desc, sort_keys=True).encode("utf-8")).hexdigest()


def bank_cache_path(cfg: Any, clip_model: torch.nn.Module) -> Path:
    """Where the bank for this config and model is cached: ``<cache_dir>/<kb>_<clip>_J<J>_<hash16>.pth``."""
    kb_path = resolve_path(cfg.tse.knowledge_base)
    if not kb_path.is_file():
        raise ClusterBankError(f"tse.knowledge_base: file not found: {cfg.tse.knowledge_base}")
    key = bank_cache_key(kb_path, cfg, clip_model)
    name = f"{kb_path.stem}_{str(cfg.model.clip.name).replace('/', '-')}_J{int(cfg.tse.num_clusters)}_{key[:16]}.pth"
    return Path(cfg.tse.cache_dir).expanduser() / name


def _load_or_build(cfg: Any, clip_model: torch.nn.Module, tokenizer: Any, progress: bool) -> ClusterBank:
    path = bank_cache_path(cfg, clip_model)
    if path.is_file():
        centers, flags = load_cluster_bank(path)
        log.info("TSE cluster bank: cache hit %s", path)
        return ClusterBank(centers, flags, path, "cache")
    kb_path = resolve_path(cfg.tse.knowledge_base)
    knowledge = load_knowledge_base(kb_path, list(cfg.data.class_names), list(cfg.data.prompt_names),
                                    tokenizer=tokenizer, min_sentences=int(cfg.tse.min_sentences))
    log.info("TSE cluster bank: building %d clusters from %s (%d sentences)", int(cfg.tse.num_clusters), kb_path,
             sum(len(v) for v in knowledge.values()))
    centers, flags = build_cluster_bank(clip_model, tokenizer, knowledge, int(cfg.tse.num_clusters),
                                        seed=int(cfg.tse.kmeans_seed), n_init=int(cfg.tse.kmeans_n_init),
                                        batch_size=int(cfg.tse.encode_batch_size), progress=progress)
    save_cluster_bank(path, centers, flags)
    log.info("TSE cluster bank: saved %s", path)
    return ClusterBank(centers, flags, path, "built")


def _check_bank(centers: Tensor, flags: Tensor, path: Path, clip_model: torch.nn.Module, cfg: Any) -> None:
    dim = text_embed_dim(clip_model)
    if centers.shape[0] != dim:
        raise ClusterBankError(f"cluster bank {path}: centers have dimension D={centers.shape[0]} but the text "
                               f"encoder {cfg.model.clip.name} embeds to D={dim}")
    n_cls = len(cfg.data.class_names)
    if n_cls and flags.shape[0] != n_cls:
        raise ClusterBankError(f"cluster bank {path}: flags have {flags.shape[0]} class rows but data.class_names "
                               f"has {n_cls} classes (a bank for another dataset?)")


def check_text_sources(cfg: Any) -> None:
    """Check what the bank will be made from, before any CLIP weights are read: ``tse.bank_file`` exists, or the
    ``tse.knowledge_base`` loads for the config's classes (keys, sentence lengths, ``tse.min_sentences``).

    Raises:
        ClusterBankError, KnowledgeBaseError: naming the file and what is wrong.
    """
    if not cfg.tse.enabled:
        return
    if cfg.tse.bank_file:
        path = resolve_path(cfg.tse.bank_file)
        if not path.is_file():
            raise ClusterBankError(f"tse.bank_file: cluster bank file not found: {path}")
    elif cfg.tse.knowledge_base:
        load_knowledge_base(resolve_path(cfg.tse.knowledge_base), list(cfg.data.class_names),
                            list(cfg.data.prompt_names), min_sentences=int(cfg.tse.min_sentences))


def prepare_cluster_bank(cfg: Any, clip_model: torch.nn.Module, tokenizer: Any,
                         progress: bool = True) -> ClusterBank | None:
    """The bank the config asks for, with its origin; None when TSE is off or has no source.

    Order: ``tse.enabled`` false -> None; ``tse.bank_file`` -> that file as is; ``tse.knowledge_base`` ->
    cached bank, built on a miss (rank 0 only under torch.distributed); neither -> None.
    """
    if not cfg.tse.enabled:
        return None
    if cfg.tse.bank_file:
        path = resolve_path(cfg.tse.bank_file)
        centers, flags = load_cluster_bank(path)
        _check_bank(centers, flags, path, clip_model, cfg)
        if centers.shape[1] != int(cfg.tse.num_clusters):
            log.warning("tse.bank_file %s has J=%d clusters; tse.num_clusters=%d is ignored", path,
                        centers.shape[1], int(cfg.tse.num_clusters))
        return ClusterBank(centers, flags, path, "bank_file")
    if not cfg.tse.knowledge_base:
        log.warning("tse.enabled is true but neither tse.bank_file nor tse.knowledge_base is set: TSE is off")
        return None

    dist = torch.distributed
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        # rank 0 builds (or reads its cache) and sends the tensors themselves: other machines need no shared disk
        rank = dist.get_rank()
        bank, error = None, None
        payload: list[Any] = [None, None]
        if rank == 0:
            try:
                bank = _load_or_build(cfg, clip_model, tokenizer, progress)
                payload = [(bank.centers.cpu(), bank.flags.cpu(), str(bank.path)), None]
            except Exception as err:  # forwarded to the other ranks so they fail instead of waiting forever
                error = err
                payload = [None, f"{type(err).__name__}: {err}"]
        dist.broadcast_object_list(payload, src=0)   # staged on this rank's current GPU under nccl
        if error is not None:
            raise error
        if payload[1] is not None:
            raise ClusterBankError(f"rank 0 failed to prepare the TSE cluster bank: {payload[1]}")
        if bank is None:
            centers, flags, path = payload[0]
            bank = ClusterBank(centers, flags, Path(path), "rank0")
    else:
        bank = _load_or_build(cfg, clip_model, tokenizer, progress)
    _check_bank(bank.centers, bank.flags, bank.path, clip_model, cfg)
    return bank


def get_cluster_bank(cfg: Any, clip_model: torch.nn.Module, tokenizer: Any, progress: bool = True) -> Tensor | None:
    """The TSE centres (D, J) float32 on CPU for this config, or None when TSE is off (see prepare_cluster_bank)."""
    bank = prepare_cluster_bank(cfg, clip_model, tokenizer, progress=progress)
    return None if bank is None else bank.centers


def describe_bank(bank: ClusterBank, class_names: Sequence[str]) -> list[str]:
    """Report lines on a bank: clusters per class, how many clusters several classes share, and a warning line for
    each group of classes whose cluster sets coincide (TSE cannot tell those apart; also logged)."""
    flags = bank.flags > 0  # (C_fg, J)
    names = list(class_names) if len(class_names) == flags.shape[0] else [f"class {i}" for i in range(flags.shape[0])]
    width = max(len(n) for n in names)
    shared = int((flags.sum(dim=0) > 1).sum())
    lines = [f"clusters per class (J={bank.centers.shape[1]}, D={bank.centers.shape[0]}, {shared} clusters shared by "
             f"several classes):"]
    lines += [f"  {n:<{width}}  {c:4d}" for n, c in zip(names, flags.sum(dim=1).tolist())]
    groups: dict[tuple[int, ...], list[str]] = {}
    for n, row in zip(names, flags.tolist()):
        groups.setdefault(tuple(j for j, f in enumerate(row) if f), []).append(n)
    for group in (g for g in groups.values() if len(g) > 1):
        log.warning("classes %s fall in exactly the same clusters; TSE cannot tell them apart", group)
        lines.append(f"WARNING: classes {group} have identical cluster sets")
    return lines
