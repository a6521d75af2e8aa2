"""Build (or find in the cache) the TSE cluster bank of a config (algorithm.md §3.2) and report on it.

    python tools/build_bank.py --config configs/voc.yaml
    python tools/build_bank.py --config configs/coco.yaml model.clip.pretrained=/path/ViT-B-16.pt --force

The bank goes to ``tse.cache_dir`` under a content-hash name, the same file training will pick up; with
``tse.bank_file`` set the authors' file is only loaded and summarised. Prints clusters per class, warns about
classes with identical cluster sets, and where the bank is and how long it took.
"""
from __future__ import annotations

import logging
import sys
import time
from typing import Sequence

import torch

from excel.backbone import load_clip, load_tokenizer
from excel.config import ConfigError, resolve_device
from excel.engine.cli import config_from_args, config_parser, run_cli
from excel.text.cluster_bank import (ClusterBank, bank_cache_path, check_text_sources, describe_bank,
                                     prepare_cluster_bank)


def main(argv: Sequence[str] | None = None) -> ClusterBank:
    parser = config_parser(__doc__.split("\n\n")[0], None)
    parser.add_argument("--force", action="store_true", help="delete a cached bank for this config and rebuild it")
    args = parser.parse_intermixed_args(argv)
    cfg = config_from_args(args, None)
    if not cfg.tse.enabled or not (cfg.tse.bank_file or cfg.tse.knowledge_base):
        raise ConfigError("nothing to build: set tse.enabled=true and tse.knowledge_base (or tse.bank_file)")
    check_text_sources(cfg)  # before any CLIP weights are read

    torch.manual_seed(int(cfg.run.seed))  # a random-init model (pretrained=null) is then the same on every run
    clip_cfg = cfg.model.clip
    clip_model = load_clip(clip_cfg.name, clip_cfg.pretrained, clip_cfg.force_quick_gelu, clip_cfg.cache_dir)
    clip_model.to(resolve_device(cfg.run.device))
    if args.force and not cfg.tse.bank_file:
        cached = bank_cache_path(cfg, clip_model)
        if cached.is_file():
            cached.unlink()
            print(f"removed cached bank {cached}")
    start = time.perf_counter()
    bank = prepare_cluster_bank(cfg, clip_model, load_tokenizer(clip_cfg.name), progress=True)
    assert bank is not None  # checked above
    print("\n".join(describe_bank(bank, list(cfg.data.class_names))))
    verb = {"built": "built and saved", "cache": "found in the cache", "bank_file": "loaded (tse.bank_file)"}
    print(f"bank {verb[bank.source]}: {bank.path} ({time.perf_counter() - start:.1f}s)")
    return bank


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    sys.exit(run_cli(main, sys.argv[1:]))
