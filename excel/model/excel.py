"""The full ExCEL model: frozen calibrated CLIP + fixed text bank + trainable decoder (algorithm.md §1-6, §12).

``build_model(cfg)`` owns every hyperparameter; ``ExCEL`` only holds built parts. Only the decoder is trained.
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, replace
from typing import Any, Iterator, Sequence

import torch
from torch import Tensor, nn

from excel.backbone import CalibratedVisual, VisualOutput, load_clip, load_tokenizer, lvc_bias
from excel.cam.surgery import feature_surgery_lam, normalize_tokens
from excel.model.decoder import build_decoder
from excel.text.bank import TSE_MIXES, build_text_bank, encode_prompts
from excel.text.cluster_bank import get_cluster_bank

log = logging.getLogger(__name__)

FROZEN_AUTOCAST = ("none", "bf16")


@dataclass
class EncodeOutput:
    """The frozen part of one pass.

    lam: (B, P, C_fg) attribute map in [0, 1] (algorithm.md §4); attn: (L, B, N, N) reported attention stack;
    features: (L, B, N, W) decoder inputs; dense: (B, N, D) normalised tokens (algorithm.md §1.7); visual: the raw
    VisualOutput (new_tokens and lvc_basis feed ``ExCEL.calibrated_lam``).
    """

    lam: Tensor
    attn: Tensor
    features: Tensor
    dense: Tensor
    visual: VisualOutput

    def take(self, index: slice) -> "EncodeOutput":
        """The images ``index`` (a slice of the batch axis) of this pass, every field sliced alike."""
        v = self.visual
        visual = replace(v, tokens=v.tokens[index], attn=None if v.attn is None else v.attn[:, index],
                         features=v.features[:, index], new_tokens=v.new_tokens[index],
                         svc_values=None if v.svc_values is None else v.svc_values[:, index])
        return replace(self, lam=self.lam[index], attn=self.attn[:, index], features=self.features[:, index],
                       dense=self.dense[index], visual=visual)


@dataclass
class ForwardOutput:
    """One training/evaluation pass.

    seg_logits: (B, C, g, g); fused: (B, E, g, g) fused decoder feature (after Dropout2d in training, not
    detached); lam, attn: as in EncodeOutput; attn_pred: (B, P, P) in (0, 1); encoded: the EncodeOutput.
    """

    seg_logits: Tensor
    fused: Tensor
    lam: Tensor
    attn: Tensor
    attn_pred: Tensor
    encoded: EncodeOutput


class ExCEL(nn.Module):
    """Frozen ``CalibratedVisual`` + fixed ``text_bank`` buffer (K, D), fg rows first + trainable ``decoder``.

    Args:
        visual: the calibrated CLIP vision tower (kept in eval mode, no gradients).
        decoder: module mapping features (L, B, N, W) to (seg_logits, fused, attn_pred).
        text_bank: (K, D) unit rows, the first ``num_fg`` are the foreground classes.
        num_fg: C_fg.
        temperature: feature-surgery CLS temperature (cam.temperature).
        normalize_over: "tokens" (faithful, quirk 5) or "channels" (quirks.channel_normalize).
        per_sample_mean: quirks.per_sample_batch_mean for the LVC similarity.
        frozen_autocast: model.clip.autocast: "none" (faithful fp32) or "bf16" (CUDA autocast of the CLIP forward;
            its outputs are cast back to float32; no-op on CPU).
        meta: what a checkpoint of this model must agree with (backbone, num_classes, ...), see ``meta()``.
    """

    def __init__(self, visual: CalibratedVisual, decoder: nn.Module, text_bank: Tensor, num_fg: int,
                 temperature: float = 2.0, normalize_over: str = "tokens", per_sample_mean: bool = False,
                 meta: dict[str, Any] | None = None, frozen_autocast: str = "none",
                 attn_layers: Sequence[int] | None = None) -> None:
        super().__init__()
        if text_bank.dim() != 2 or text_bank.shape[1] != visual.output_dim:
            raise ValueError(f"text bank must be (K, {visual.output_dim}), got {tuple(text_bank.shape)}")
        if not 1 <= num_fg <= text_bank.shape[0]:
            raise ValueError(f"num_fg={num_fg} must be in [1, K={text_bank.shape[0]}]")
        if frozen_autocast not in FROZEN_AUTOCAST:
            raise ValueError(f"model.clip.autocast={frozen_autocast!r}: expected one of {FROZEN_AUTOCAST}")
        self.frozen_autocast = frozen_autocast
        # the attention layers the pseudo labels read (cam.affinity_layers); the others skip their weights
        self.attn_layers = None if attn_layers is None else frozenset(int(l) % visual.num_layers for l in attn_layers)
        self.visual = visual
        self.decoder = decoder
        self.register_buffer("text_bank", text_bank.detach().clone(), persistent=False)
        self.num_fg = num_fg
        self.temperature = temperature
        self.normalize_over = normalize_over
        self.per_sample_mean = per_sample_mean
        self._meta = dict(meta or {})

    def train(self, mode: bool = True) -> "ExCEL":
        """Switch the decoder; CLIP stays in eval mode (CalibratedVisual ignores ``mode``)."""
        super().train(mode)
        self.visual.train(False)
        return self

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        """The decoder's parameters: the only trained ones (algorithm.md §8.2)."""
        return self.decoder.parameters()

    def decoder_state_dict(self) -> dict[str, Tensor]:
        """The decoder weights (what checkpoints hold by default)."""
        return self.decoder.state_dict()

    def meta(self) -> dict[str, Any]:
        """Checkpoint compatibility metadata: backbone, pretrained, num_classes (with background), embed_dim."""
        return dict(self._meta)

    def load_decoder_state(self, state: dict[str, Tensor], strict: bool = True) -> Any:
        """Load trained weights from ``decoder_state_dict()`` or from a full ``state_dict()``.

        A full state dict (``decoder.*`` and ``visual.vit.*`` keys) also restores the CLIP weights, except the
        positional table, which is always rebuilt from the config and ``mode`` (algorithm.md §1.2, quirk 8).
        """
        if not any(k.startswith("decoder.") for k in state):
            return self.decoder.load_state_dict(state, strict=strict)
        vit = {k[len("visual.vit."):]: v for k, v in state.items()
               if k.startswith("visual.vit.") and not k.endswith("positional_embedding")}
        if vit:
            missing, unexpected = self.visual.vit.load_state_dict(vit, strict=False)
            missing = [k for k in missing if k != "positional_embedding"]
            if strict and (missing or unexpected):
                raise RuntimeError(f"full-model checkpoint does not fit the CLIP tower: missing {missing[:5]}, "
                                   f"unexpected {unexpected[:5]}")
        decoder = {k[len("decoder."):]: v for k, v in state.items() if k.startswith("decoder.")}
        return self.decoder.load_state_dict(decoder, strict=strict)

    def _lam(self, tokens: Tensor) -> tuple[Tensor, Tensor]:
        dense = normalize_tokens(tokens, over=self.normalize_over)
        return feature_surgery_lam(dense, self.text_bank, self.num_fg, self.temperature), dense

    def _frozen_visual(self, images: Tensor, **kwargs: Any) -> VisualOutput:
        """The frozen tower in the precision ``model.clip.autocast`` says, whatever autocast the caller runs
        under (``train.amp`` is meant for the decoder); the outputs are float32 either way."""
        if self.frozen_autocast == "bf16" and images.device.type == "cuda":
            with torch.autocast("cuda", dtype=torch.bfloat16):
                return _float32(self.visual(images, **kwargs))
        with torch.autocast(images.device.type, enabled=False):
            return self.visual(images.float(), **kwargs)

    @torch.no_grad()
    def encode(self, images: Tensor) -> EncodeOutput:
        """images (B, 3, H, H) normalised -> EncodeOutput (LAM, attention stack, decoder features)."""
        vis = self._frozen_visual(images, attn_layers=self.attn_layers)
        with torch.autocast(images.device.type, enabled=False):
            lam, dense = self._lam(vis.tokens)
        return EncodeOutput(lam=lam, attn=vis.attn, features=vis.features, dense=dense, visual=vis)

    @torch.no_grad()
    def segment(self, images: Tensor) -> Tensor:
        """images (B, 3, H, H) -> seg_logits (B, C, g, g): only what the logits need (fused attention kernels, no
        attention weights, no LAM); equal to ``forward(images).seg_logits`` up to float rounding."""
        return self.decoder(self._frozen_visual(images, need_attn=False).features)[0]

    def forward(self, images: Tensor) -> ForwardOutput:
        """images (B, 3, H, H) -> ForwardOutput; gradients flow into the decoder only."""
        enc = self.encode(images)
        seg_logits, fused, attn_pred = self.decoder(enc.features)
        return ForwardOutput(seg_logits=seg_logits, fused=fused, lam=enc.lam, attn=enc.attn, attn_pred=attn_pred,
                             encoded=enc)

    @torch.no_grad()
    def calibrated_lam(self, out: EncodeOutput | ForwardOutput, fused: Tensor) -> Tensor:
        """The LVC LAM (algorithm.md §5.6) without a second CLIP pass (algorithm.md §12).

        E = lvc_bias(fused.detach()); the new-path tokens get c * E @ lvc_basis on their patch rows (c = heads
        with the faithful head sum, 1 with head mean); then projection, normalisation and feature surgery.
        Equals ``visual(images, ex_bias=E)`` followed by the same LAM steps, up to float rounding.

        Args:
            out: the EncodeOutput (or ForwardOutput) of the same images.
            fused: (B, E_dim, g, g) fused decoder feature of those images.
        Returns:
            (B, P, C_fg) in [0, 1].
        """
        vis = out.encoded.visual if isinstance(out, ForwardOutput) else out.visual
        with torch.autocast(fused.device.type, enabled=False):   # LVC math in fp32 whatever the decoder ran in
            return self._calibrated_lam(vis, fused.detach().float())

    def _calibrated_lam(self, vis: VisualOutput, fused: Tensor) -> Tensor:
        bias = lvc_bias(fused, per_sample=self.per_sample_mean)               # (B, P, P)
        batch, num_patches = vis.new_tokens.shape[0], vis.new_tokens.shape[1] - 1
        if bias.shape != (batch, num_patches, num_patches):
            raise ValueError(f"fused feature gives an LVC bias of shape {tuple(bias.shape)} but the encoded images "
                             f"have batch {batch} and {num_patches} patches")
        new_tokens = vis.new_tokens.clone()
        new_tokens[:, 1:] += self.visual.lvc_scale * (bias @ vis.lvc_basis)
        return self._lam(vis.project(new_tokens))[0]


def _float32(vis: VisualOutput) -> VisualOutput:
    """The VisualOutput of an autocast pass with its tensors cast to float32 (LAM and pseudo labels in fp32)."""
    def f(t: Tensor | None) -> Tensor | None:
        return None if t is None else t.float()
    return dataclasses.replace(vis, tokens=f(vis.tokens), attn=f(vis.attn), features=f(vis.features),
                               new_tokens=f(vis.new_tokens), svc_values=f(vis.svc_values))


def build_text_bank_from_config(cfg: Any, clip_model: nn.Module, tokenizer: Any) -> Tensor:
    """(K, D) text bank: prompts of data.prompt_names and data.background_names with text.templates, plus TSE."""
    names, classes = list(cfg.data.prompt_names), list(cfg.data.class_names)
    if not names:
        raise ValueError("data.prompt_names is empty: the text bank needs one prompt name per foreground class")
    if classes and len(classes) != len(names):
        raise ValueError(f"data.prompt_names has {len(names)} entries but data.class_names has {len(classes)}; "
                         f"they must list the same classes in the same order")
    templates = list(cfg.text.templates)
    fg = encode_prompts(clip_model, tokenizer, names, templates)
    bg = encode_prompts(clip_model, tokenizer, list(cfg.data.background_names), templates)
    mix = str(cfg.tse.mix)
    if mix not in TSE_MIXES:
        raise ValueError(f"tse.mix={mix!r}: expected one of {', '.join(TSE_MIXES)}")
    centers = get_cluster_bank(cfg, clip_model, tokenizer) if cfg.tse.enabled else None
    log.info("text bank: %d foreground + %d background prompts, TSE %s", fg.shape[0], bg.shape[0],
             "off" if centers is None else f"on ({centers.shape[1]} clusters, top_k={cfg.tse.top_k}, mix={mix})")
    return build_text_bank(fg, bg, centers, top_k=float(cfg.tse.top_k), mix=mix)


def load_configured_clip(clip_cfg: Any) -> nn.Module:
    """The frozen open_clip model ``model.clip`` names (:func:`excel.backbone.load_clip`); the organism's weight
    tag (``pretrained: organism``) is known once :mod:`excel.organism` is imported, which this does."""
    import excel.organism  # noqa: F401  (registers model.clip.pretrained=organism)

    return load_clip(clip_cfg.name, clip_cfg.pretrained, force_quick_gelu=bool(clip_cfg.force_quick_gelu),
                     cache_dir=clip_cfg.cache_dir)


def build_model(cfg: Any, clip_model: nn.Module | None = None, mode: str = "train") -> ExCEL:
    """Build ExCEL from a config.

    Args:
        cfg: the merged config (model.clip, model.svc, model.decoder, data, text, tse, cam, quirks).
        clip_model: an already loaded open_clip CLIP (tests, or to share one); None loads ``model.clip``.
            Its visual tower is reused (not copied) and frozen; its positional table is never modified.
        mode: the split name of the reference's ``mode``: when it contains "train" and
            ``model.clip.permanent_pos_resize`` is true, the stored positional table is resized to
            input_size / 16 for good (algorithm.md §1.2, quirk 8).
    Returns:
        ExCEL on the device of ``clip_model`` (CPU when loaded here); move it with ``.to(device)``.
    """
    clip_cfg = cfg.model.clip
    if clip_model is None:
        clip_model = load_configured_clip(clip_cfg)
    clip_model.eval().requires_grad_(False)
    tokenizer = load_tokenizer(clip_cfg.name)
    visual = CalibratedVisual(clip_model.visual, num_svc_blocks=int(cfg.model.svc.num_blocks),
                              svc_enabled=bool(cfg.model.svc.enabled), head_mean=bool(cfg.quirks.svc_head_mean),
                              clean_features=bool(cfg.quirks.decoder_clean_features))
    patch = visual.vit.conv1.kernel_size[0]
    input_size = int(cfg.model.input_size)
    if input_size % patch:
        raise ValueError(f"model.input_size={input_size} is not a multiple of the patch size {patch}")
    if "train" in mode and clip_cfg.permanent_pos_resize:
        visual.resize_pos_embed_(input_size // patch)
        log.info("mode %r: positional table permanently resized to %dx%d (algorithm.md §1.2)", mode, visual.pos_grid,
                 visual.pos_grid)
    text_bank = build_text_bank_from_config(cfg, clip_model, tokenizer)
    decoder = build_decoder(cfg, in_dim=visual.width, num_layers=visual.num_layers).to(text_bank.device)
    meta = {"backbone": str(clip_cfg.name), "pretrained": clip_cfg.pretrained,
            "num_classes": len(cfg.data.prompt_names) + 1, "embed_dim": int(cfg.model.decoder.embed_dim)}
    return ExCEL(visual, decoder, text_bank, num_fg=len(cfg.data.prompt_names),
                 temperature=float(cfg.cam.temperature),
                 normalize_over="channels" if cfg.quirks.channel_normalize else "tokens",
                 per_sample_mean=bool(cfg.quirks.per_sample_batch_mean), meta=meta,
                 frozen_autocast=str(cfg.model.clip.autocast),
                 attn_layers=tuple(cfg.cam.affinity_layers) if cfg.cam.affinity_refine else ())
