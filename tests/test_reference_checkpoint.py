"""Checkpoints of the reference's training script (algorithm.md §9.4a): recognised by load_trained_model and the
inference tools, converted by tools/convert_checkpoint.py.

The file is built here from a small re-statement of the reference's decoder, written from the layout and the
decoder description of algorithm.md §6 (its own module names: ``decoder_fts_fuse.linears_modulelist.{l}.proj``,
``decoder.transformer.resblocks.{i}.ln_1`` ...), wrapped like DDP (``module.``) around a tiny open_clip CLIP
whose positional table was resized for good, as the reference's training leaves it.
"""
from __future__ import annotations

import importlib.util
import json
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from excel.backbone import CalibratedVisual, load_clip
from excel.backbone.svc import interpolate_pos_embed
from excel.config import load_config
from excel.engine.checkpoint import (CheckpointError, build_seeded_model, convert_reference_state, is_reference_state,
                                     load_checkpoint, load_trained_model, reference_key_map)

REPO = Path(__file__).resolve().parent.parent
TINY = REPO / "configs" / "test_tiny.yaml"


def load_tool(name: str):
    spec = importlib.util.spec_from_file_location(f"tool_{name}", REPO / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ----------------------------------------------------------------------------- the reference's module layout
class RefLayerMLP(nn.Module):
    def __init__(self, width: int, dim: int) -> None:
        super().__init__()
        self.proj, self.proj_2 = nn.Linear(width, dim), nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj_2(F.relu(self.proj(x)))


class RefFuse(nn.Module):
    """Per-layer MLPs on the patch tokens, concatenated in layer order, 1x1 conv (dropout: identity in eval)."""

    def __init__(self, width: int, dim: int, layers: int) -> None:
        super().__init__()
        self.linears_modulelist = nn.ModuleList(RefLayerMLP(width, dim) for _ in range(layers))
        self.linear_fuse = nn.Conv2d(layers * dim, dim, kernel_size=1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:  # (L, B, N, W) -> (B, E, g, g)
        b, n = features.shape[1], features.shape[2]
        g = int(round((n - 1) ** 0.5))
        maps = [mlp(features[i, :, 1:]).transpose(1, 2).reshape(b, -1, g, g)
                for i, mlp in enumerate(self.linears_modulelist)]
        return self.linear_fuse(torch.cat(maps, dim=1))


class QuickGELU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class RefBlock(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, heads)  # sequence-first, as CLIP's blocks
        self.ln_1, self.ln_2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.mlp = nn.Sequential(OrderedDict(c_fc=nn.Linear(dim, 4 * dim), gelu=QuickGELU(),
                                             c_proj=nn.Linear(4 * dim, dim)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (P, B, E)
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.ln_2(x))


class RefTransformer(nn.Module):
    def __init__(self, dim: int, heads: int, depth: int) -> None:
        super().__init__()
        self.resblocks = nn.Sequential(*[RefBlock(dim, heads) for _ in range(depth)])


class RefDecoder(nn.Module):
    def __init__(self, dim: int, heads: int, depth: int, classes: int) -> None:
        super().__init__()
        self.transformer = RefTransformer(dim, heads, depth)
        self.linear_pred = nn.Conv2d(dim, classes, kernel_size=1)

    def forward(self, fused: torch.Tensor) -> torch.Tensor:
        b, e, g, _ = fused.shape
        x = self.transformer.resblocks(fused.flatten(2).permute(2, 0, 1))
        return self.linear_pred(x.permute(1, 2, 0).reshape(b, e, g, g))


class RefModel(nn.Module):
    def __init__(self, clip: nn.Module, width: int, classes: int = 21) -> None:
        super().__init__()
        self.encoder = clip
        self.decoder_fts_fuse = RefFuse(width, 256, 12)
        self.decoder = RefDecoder(256, 8, 3, classes)

    def seg_logits(self, features: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.decoder_fts_fuse(features))


@pytest.fixture(scope="module")
def reference_file(tmp_path_factory):
    """A reference checkpoint of the tiny setup: CLIP drawn with seed 123 (not run.seed), positions resized to 4x4."""
    tmp = tmp_path_factory.mktemp("reference")
    with torch.random.fork_rng():
        torch.manual_seed(123)
        clip = load_clip("excel-tiny", None)
        model = RefModel(clip, width=64).eval()
        with torch.no_grad():  # no default-initialised tensor (LayerNorm 1/0, zero biases) may hide a wrong mapping
            for name, param in model.named_parameters():
                if not name.startswith("encoder."):
                    param.add_(0.05 * torch.randn_like(param))
    with torch.no_grad():
        table = clip.visual.positional_embedding
        clip.visual.positional_embedding = nn.Parameter(interpolate_pos_embed(table, 4).clone(), requires_grad=False)
    state = OrderedDict((f"module.{k}", v) for k, v in model.state_dict().items())
    path = tmp / "model_iter_30000.pth"
    torch.save(state, path)
    return {"path": path, "model": model, "state": state, "tmp": tmp}


def _cfg(tmp: Path, *extra: str):
    return load_config([REPO / "configs" / "voc.yaml", TINY],  # test_tiny is an overlay (no _base_)
                       ["tse.enabled=false", f"run.work_dir={tmp / 'work'}", *extra])  # TSE: not at stake


def _images() -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    return torch.randn(2, 3, 64, 64, generator=gen)


# ----------------------------------------------------------------------------- tests
def test_key_map_covers_the_reference_layout_exactly(reference_file):
    keys = {k[len("module."):] for k in reference_file["state"] if not k.startswith("module.encoder.")}
    assert keys == set(reference_key_map(num_layers=12, depth=3))
    assert is_reference_state(reference_file["state"])
    assert not is_reference_state(build_seeded_model(_cfg(reference_file["tmp"])).decoder.state_dict())


@pytest.mark.parametrize("mode", ["val", "train"])
def test_reference_checkpoint_gives_the_reference_logits(reference_file, mode):
    """load_trained_model reads the file as it is: the decoder's logits are those of the reference's modules on the
    same CLIP features, and the CLIP weights (text tower included) come from the file when pretrained is unset."""
    ref, tmp = reference_file["model"], reference_file["tmp"]
    cfg = _cfg(tmp)
    loaded = load_trained_model(cfg, reference_file["path"], torch.device("cpu"), mode=mode)
    assert loaded.visual.pos_grid == 4  # the file's table, in both modes
    x = _images()
    with torch.no_grad():
        features = CalibratedVisual(ref.encoder.visual)(x).features  # the file's CLIP, the reference's decoder
        expected = ref.seg_logits(features)
        out = loaded(x)
    torch.testing.assert_close(out.seg_logits, expected, atol=1e-5, rtol=1e-4)
    # the text bank comes from the file's text tower: the LAM equals that of a model built on the file's CLIP
    on_file_clip = build_seeded_model(cfg, mode=mode, clip_model=ref.encoder)
    with torch.no_grad():
        torch.testing.assert_close(out.lam, on_file_clip.encode(x).lam)
        assert not torch.allclose(out.lam, build_seeded_model(cfg, mode=mode).encode(x).lam, atol=1e-3)


def test_convert_tool_writes_an_excel_checkpoint_with_the_same_logits(reference_file, tmp_path, capsys):
    cfg = _cfg(reference_file["tmp"])
    out = tmp_path / "excel_iter_30000.pth"
    assert load_tool("convert_checkpoint").main([str(reference_file["path"]), str(out)]) == out
    assert "decoder for 21 classes (width 256), with CLIP weights" in capsys.readouterr().out
    ckpt = load_checkpoint(out)
    assert ckpt["format"] == "excel-checkpoint" and ckpt["iteration"] == 30000 and ckpt["meta"]["num_classes"] == 21
    assert set(ckpt["model"]) == set(build_seeded_model(cfg).decoder.state_dict())  # decoder only, excel names
    x = _images()
    with torch.no_grad():
        direct = load_trained_model(cfg, reference_file["path"], torch.device("cpu"))(x)
        converted = load_trained_model(cfg, out, torch.device("cpu"))(x)
    torch.testing.assert_close(converted.seg_logits, direct.seg_logits, rtol=0, atol=0)
    torch.testing.assert_close(converted.lam, direct.lam, rtol=0, atol=0)
    # the tool refuses what is not a reference checkpoint, and an output that is not a file name
    tool = load_tool("convert_checkpoint")
    with pytest.raises(CheckpointError, match="not a checkpoint of the reference's training script"):
        tool.main([str(out), str(tmp_path / "again.pth")])
    with pytest.raises(ValueError, match="expected a file name ending in"):
        tool.main([str(reference_file["path"]), str(tmp_path / "folder")])


def test_pretrained_weights_win_over_the_files_clip(reference_file, tmp_path):
    """With model.clip.pretrained set, the file's decoder is used with those CLIP weights, not the file's."""
    with torch.random.fork_rng():
        torch.manual_seed(7)
        other = load_clip("excel-tiny", None)
    weights = tmp_path / "other_clip.pt"
    torch.save(other.state_dict(), weights)
    cfg = _cfg(reference_file["tmp"], f"model.clip.pretrained={weights}")
    loaded = load_trained_model(cfg, reference_file["path"], torch.device("cpu"))
    assert loaded.visual.pos_grid == 14  # the original table; the file's is discarded (algorithm.md §1.2)
    torch.testing.assert_close(loaded.visual.vit.conv1.weight, other.visual.conv1.weight, rtol=0, atol=0)
    torch.testing.assert_close(loaded.decoder.classifier.weight,
                               reference_file["model"].decoder.linear_pred.weight, rtol=0, atol=0)


def test_broken_reference_files_are_refused_by_name(reference_file, tmp_path):
    cfg = _cfg(reference_file["tmp"])
    state = dict(reference_file["state"])
    extra = dict(state, **{"module.decoder.aux_head.weight": torch.zeros(3)})
    with pytest.raises(CheckpointError, match=r"outside the reference's layout: \['decoder.aux_head.weight'\]"):
        convert_reference_state(extra)
    short = {k: v for k, v in state.items() if "resblocks.2.ln_2" not in k}
    with pytest.raises(CheckpointError, match=r"missing decoder keys: \['decoder.transformer.resblocks.2.ln_2.bias'"):
        convert_reference_state(short)
    coco = dict(state, **{"module.decoder.linear_pred.weight": torch.zeros(81, 256, 1, 1),
                          "module.decoder.linear_pred.bias": torch.zeros(81)})
    path = tmp_path / "coco.pth"
    torch.save(coco, path)
    with pytest.raises(CheckpointError, match="predicts 81 classes"):
        load_trained_model(cfg, path, torch.device("cpu"))
    wrong_clip = {k: v for k, v in state.items() if k != "module.encoder.visual.proj"}
    torch.save(wrong_clip, path)
    with pytest.raises(CheckpointError, match=r"CLIP weights in .* do not fit model.clip.name=excel-tiny: missing "
                                              r"\['visual.proj'\]"):
        load_trained_model(cfg, path, torch.device("cpu"))


def test_inference_tools_read_the_reference_file(reference_file, mini_voc, tmp_path):
    """infer_seg_voc, infer_lam (checkpoint mode) and predict all take the reference's file as it is."""
    path = str(reference_file["path"])
    common = ["--config", str(TINY), f"data.root={mini_voc}", "tse.enabled=false", "infer.max_images=2",
              "infer.crf_workers=0"]
    seg = load_tool("infer_seg_voc").main([*common, f"infer.checkpoint={path}", f"infer.output_dir={tmp_path / 's'}"])
    assert seg["num_images"] == 2 and 0 <= seg["scores"]["raw"]["miou"] <= 1
    lam = load_tool("infer_lam").main([*common, f"infer.checkpoint={path}", f"infer.output_dir={tmp_path / 'l'}",
                                       "infer.split=val"])
    assert lam["mode"] == "checkpoint" and lam["num_images"] == 2
    image = next((mini_voc / "JPEGImages").glob("*.jpg"))
    out = tmp_path / "p"
    records = load_tool("predict").main([str(image), "--out", str(out), "--checkpoint", path, "--config", str(TINY),
                                         "tse.enabled=false"])
    assert len(records) == 1
    label = np.array(Image.open(out / "labels" / f"{image.stem}.png"))
    assert label.shape == np.array(Image.open(image)).shape[:2] and label.max() <= 20
    assert json.loads((out / "predictions.json").read_text())[0]["name"] == image.stem
