"""Build (or find in the cache) the TSE cluster bank of a config (algorithm.md §3.2) and report on it.

    python tools/build_bank.py --config configs/voc.yaml
    python tools/build_bank.py --config configs/coco.yaml model.clip.pretrained=/path/ViT-B-16.pt --force

The bank goes to ``tse.cache_dir`` under a content-hash name, the same file training will pick up; with
``tse.bank_file`` set the authors' file is only loaded and summarised. Prints clusters per class, warns about
classes with identical cluster sets, and where the bank is and how long it took.
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from typing import Sequence

import torch

from excel.backbone import load_clip, load_tokenizer
from excel.config import ConfigError, load_config, resolve_device
from excel.engine.cli import run_cli
from excel.text.cluster_bank import ClusterBank, bank_cache_path, check_text_sources, prepare_cluster_bank

log = logging.getLogger("build_bank")


def summarize(flags: torch.Tensor, class_names: Sequence[str]) -> tuple[list[str], list[list[str]]]:
    """Per-class cluster-count lines, and the groups of classes (size > 1) whose cluster sets coincide.

    flags: (C_fg, J) 0/1.
    """
    names = list(class_names) if len(class_names) == flags.shape[0] else [f"class {i}" for i in range(flags.shape[0])]
    counts = (flags > 0).sum(dim=1).tolist()
    width = max(len(n) for n in names)
    lines = [f"  {n:<{width}}  {c:4d}" for n, c in zip(names, counts)]
    groups: dict[tuple[int, ...], list[str]] = {}
    for n, row in zip(names, (flags > 0).tolist()):
        groups.setdefault(tuple(j for j, f in enumerate(row) if f), []).append(n)
    return lines, [g for g in groups.values() if len(g) > 1]


def main(argv: Sequence[str] | None = None) -> ClusterBank:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=None, help="experiment YAML (default base.yaml)")
    parser.add_argument("--force", action="store_true", help="delete a cached bank for this config and rebuild it")
    parser.add_argument("overrides", nargs="*", help="config overrides key=value")
    args = parser.parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    if not cfg.tse.enabled or not (cfg.tse.bank_file or cfg.tse.knowledge_base):
        raise ConfigError("nothing to build: set tse.enabled=true and tse.knowledge_base (or tse.bank_file)")
    check_text_sources(cfg)  # before any CLIP weights are read

    torch.manual_seed(int(cfg.run.seed))  # a random-init model (pretrained=null) is then the same on every run
    clip_cfg = cfg.model.clip
    clip_model = load_clip(clip_cfg.name, clip_cfg.pretrained, clip_cfg.force_quick_gelu, clip_cfg.cache_dir)
    clip_model.to(resolve_device(cfg.run.device))
    tokenizer = load_tokenizer(clip_cfg.name)
    if args.force and not cfg.tse.bank_file:
        cached = bank_cache_path(cfg, clip_model)
        if cached.is_file():
            cached.unlink()
            print(f"removed cached bank {cached}")

    start = time.perf_counter()
    bank = prepare_cluster_bank(cfg, clip_model, tokenizer, progress=True)
    elapsed = time.perf_counter() - start
    assert bank is not None  # checked above

    lines, same = summarize(bank.flags, list(cfg.data.class_names))
    shared = int(((bank.flags > 0).sum(dim=0) > 1).sum())
    print(f"clusters per class (J={bank.centers.shape[1]}, D={bank.centers.shape[0]}, "
          f"{shared} clusters shared by several classes):")
    print("\n".join(lines))
    for group in same:
        log.warning("classes %s fall in exactly the same clusters; TSE cannot tell them apart", group)
        print(f"WARNING: classes {group} have identical cluster sets")
    verb = {"built": "built and saved", "cache": "found in the cache", "bank_file": "loaded (tse.bank_file)"}
    print(f"bank {verb[bank.source]}: {bank.path} ({elapsed:.1f}s)")
    return bank


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    sys.exit(run_cli(main, sys.argv[1:]))
