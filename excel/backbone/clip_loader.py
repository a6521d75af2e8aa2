"""Loading the frozen open_clip model (algorithm.md §1.1) and its tokenizer.

``excel/backbone/model_configs/*.json`` (the tiny ``excel-tiny`` test architecture) are registered with open_clip
on first use, so they build like any built-in name. Other packages may register weight files of their own format
under a tag (:func:`register_weights`; the model organism registers ``organism``), which ``load_clip`` then reads.
"""
from __future__ import annotations

import logging
import os
import socket
import warnings
import zipfile
from contextlib import contextmanager
from pathlib import Path
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import open_clip
import torch
from torch import nn

from excel.errors import ExcelError

log = logging.getLogger(__name__)

MODEL_CONFIG_DIR = Path(__file__).resolve().parent / "model_configs"
_WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt", ".npz")
_registered = False


class ClipWeightsError(ExcelError, RuntimeError):
    """The CLIP weights named by model.clip.pretrained cannot be obtained (e.g. offline); says what to pass."""


def register_model_configs() -> None:
    """Register this package's architecture JSON files with open_clip (idempotent)."""
    global _registered
    if not _registered:
        open_clip.add_model_config(MODEL_CONFIG_DIR)
        _registered = True


def _is_torchscript_archive(path: str) -> bool:
    """True for a TorchScript zip such as OpenAI's ``ViT-B-16.pt`` (it holds a ``constants.pkl`` record)."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith("/constants.pkl") or name == "constants.pkl" for name in archive.namelist())


def _load_torchscript_weights(model: nn.Module, path: str) -> None:
    """Copy the weights of an OpenAI JIT archive into ``model``.

    OpenAI stores fp16 values; copying them into the fp32 model gives fp16-rounded fp32 weights (algorithm.md §1.1).
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load deprecation notice
        scripted = torch.jit.load(path, map_location="cpu")
    state = {k: v for k, v in scripted.state_dict().items()
             if k not in ("input_resolution", "context_length", "vocab_size") and not k.endswith("attn_mask")}
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("attn_mask")]
    if missing or unexpected:
        raise RuntimeError(f"TorchScript checkpoint {path} does not match the architecture: "
                           f"missing {missing[:5]}, unexpected {unexpected[:5]}")


class _DropRandomInitNotice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "initialized randomly" not in record.getMessage()


@contextmanager
def _quiet_random_init_notice() -> Iterator[None]:
    """Hide open_clip's "initialized randomly" warning while weights that follow are loaded by hand."""
    notice = _DropRandomInitNotice()
    root = logging.getLogger()
    root.addFilter(notice)
    try:
        yield
    finally:
        root.removeFilter(notice)


@dataclass(frozen=True)
class WeightFormat:
    """A weight-file format that :func:`load_clip` reads besides open_clip's and OpenAI's: the file shipped under
    its tag, a cheap test of whether a file is of the format, and the loader (model, path) -> metadata."""
    tag: str
    shipped: Path
    recognises: Callable[[str], bool]
    load: Callable[[nn.Module, str], dict[str, Any]]


_FORMATS: dict[str, WeightFormat] = {}


def _leader_only(leader: Callable[[], nn.Module], others: Callable[[], nn.Module]) -> nn.Module:
    return leader()


_download_order: Callable[[Callable[[], nn.Module], Callable[[], nn.Module]], nn.Module] = _leader_only


def set_download_order(order: Callable[[Callable[[], nn.Module], Callable[[], nn.Module]], nn.Module]) -> None:
    """How processes take turns at the one step that may download weights: ``order(leader, others)`` runs
    ``leader`` (download into the cache) and ``others`` (read the cache) as it sees fit. A single process runs
    ``leader``; ``excel.engine.dist`` sets one process per machine first, the others after a barrier."""
    global _download_order
    _download_order = order


def register_weights(fmt: WeightFormat) -> None:
    """Make ``model.clip.pretrained=<fmt.tag>`` (and files ``fmt.recognises``) loadable (idempotent)."""
    _FORMATS[fmt.tag] = fmt


def _format_of(pretrained: str) -> WeightFormat | None:
    """The registered format ``pretrained`` names by tag or whose test recognises the file, else None."""
    if pretrained in _FORMATS:
        return _FORMATS[pretrained]
    if not (os.path.isfile(pretrained) and pretrained.endswith((".pt", ".pth"))
            and not _is_torchscript_archive(pretrained)):
        return None
    return next((fmt for fmt in _FORMATS.values() if fmt.recognises(pretrained)), None)


def _offline_hint(name: str, pretrained: str, cache_dir: str | None) -> str:
    where = cache_dir if cache_dir else "open_clip's default cache (~/.cache/huggingface)"
    return (f"could not fetch the '{pretrained}' weights of {name} (offline?). Pass a local file instead: "
            f"model.clip.pretrained=/path/to/ViT-B-16.pt (OpenAI's JIT file or an open_clip checkpoint), or place "
            f"the weights in the cache folder {where} (model.clip.cache_dir), or use model.clip.pretrained=null "
            f"for random initialisation")


def hub_reachable(host: str = "huggingface.co", port: int = 443, timeout: float = 3.0) -> bool:
    """Whether the weights hub answers a TCP connection (a quick check before open_clip's slow download retries)."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


@contextmanager
def _hub_cache_only(enabled: bool) -> Iterator[None]:
    """Make huggingface_hub read its cache only (it fixes HF_HUB_OFFLINE at import, so set its constant)."""
    if not enabled:
        yield
        return
    from huggingface_hub import constants

    previous = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = previous


def load_clip(name: str, pretrained: str | None, force_quick_gelu: bool = True,
              cache_dir: str | None = None) -> nn.Module:
    """Build an open_clip CLIP model, frozen and in eval mode.

    Args:
        name: an open_clip architecture (``ViT-B-16``) or one of ``excel/backbone/model_configs`` (``excel-tiny``).
        pretrained: None (or "") for random init; an open_clip tag (``openai``); a tag registered with
            :func:`register_weights` (``organism`` for the shipped organism weights, with ``excel-organism``, once
            ``excel.organism`` is imported); or a local checkpoint file (OpenAI's TorchScript ``ViT-B-16.pt``, a
            file of a registered format or any open_clip checkpoint), as a path or as a file name inside
            ``cache_dir``.
        force_quick_gelu: build QuickGELU MLPs (the OpenAI weights need them, algorithm.md §1.1).
        cache_dir: open_clip download cache folder (None = open_clip's default).
    Returns:
        ``open_clip.CLIP`` on the CPU in fp32, eval mode, ``requires_grad_(False)``.
    Raises:
        FileNotFoundError: ``pretrained`` looks like a path and the file does not exist.
        ValueError: unknown architecture or pretrained tag.
        ClipWeightsError (a RuntimeError): the tag's weights cannot be downloaded; the message says what to pass.
    """
    register_model_configs()
    if name not in open_clip.list_models():
        raise ValueError(f"model.clip.name={name!r} is not an open_clip architecture nor an excel config in "
                         f"{MODEL_CONFIG_DIR}; known names include ViT-B-16, ViT-B-16-quickgelu, excel-tiny")
    pretrained = pretrained or None

    def create(weights: str | None) -> nn.Module:
        return open_clip.create_model(name, pretrained=weights, force_quick_gelu=force_quick_gelu,
                                      cache_dir=cache_dir, device="cpu", precision="fp32")

    if pretrained is not None and not os.path.isfile(pretrained) and cache_dir:
        in_cache = os.path.join(cache_dir, pretrained)     # a bare file name placed in the cache folder
        if os.path.isfile(in_cache):
            pretrained = in_cache
    fmt = _format_of(pretrained) if pretrained is not None else None
    if fmt is not None:
        path = str(fmt.shipped) if pretrained == fmt.tag else pretrained
        with _quiet_random_init_notice():
            model = create(None)
        meta = fmt.load(model, path)
        log.info("built %s with the %s weights %s (held-out zero-shot mAP %s)", name, fmt.tag, path,
                 meta.get("zero_shot_map", "?"))
    elif pretrained is None:
        model = create(None)
        log.info("built %s with random initialisation (model.clip.pretrained=null)", name)
    elif os.path.isfile(pretrained):
        if _is_torchscript_archive(pretrained):
            model = create(None)
            _load_torchscript_weights(model, pretrained)
        else:
            model = create(pretrained)
        log.info("built %s with weights from %s", name, pretrained)
    elif os.sep in pretrained or pretrained.endswith(_WEIGHT_SUFFIXES):
        raise FileNotFoundError(f"model.clip.pretrained={pretrained!r}: no such checkpoint file; give an existing "
                                f"file, an open_clip tag such as 'openai', or null for random initialisation")
    else:
        tags = open_clip.list_pretrained_tags_by_model(name)
        if pretrained not in tags:
            raise ValueError(f"model.clip.pretrained={pretrained!r} is neither a file nor a pretrained tag of "
                             f"{name} (tags: {tags or 'none'}); give a checkpoint path or null for random init")
        def fetch(cache_only: bool) -> nn.Module:
            try:
                with _hub_cache_only(cache_only):
                    return create(pretrained)
            except RuntimeError as err:
                if "Failed to download" not in str(err):
                    raise
                raise ClipWeightsError(_offline_hint(name, pretrained, cache_dir)) from err

        # one process per machine downloads into the cache (only the cache when the hub does not answer: no
        # minute of download retries); the others wait for it, then read the cache
        model = _download_order(lambda: fetch(not hub_reachable()), lambda: fetch(True))
        log.info("built %s with open_clip weights '%s'", name, pretrained)
    model.eval()
    model.requires_grad_(False)
    return model


def load_tokenizer(name: str) -> Callable[..., torch.Tensor]:
    """The open_clip tokenizer of architecture ``name`` (CLIP BPE, 77 tokens, lower-cased)."""
    register_model_configs()
    return open_clip.get_tokenizer(name)
