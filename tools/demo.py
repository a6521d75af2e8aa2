"""The embedded demo (``bash run_demo.sh``): the whole ExCEL pipeline on a generated mini dataset, on CPU.

1. generates a small dataset in VOC layout (coloured objects on textured backgrounds),
2. training-free pseudo labels (TSE + SVC LAM, affinity refinement, PAR) with their mIoU and overlays,
3. a short decoder training run (pseudo labels on line, LVC switched on half-way),
4. multi-scale + flip segmentation inference on val, with and without the dense CRF,
5. label overlays with a legend for the val images.

It uses real OpenAI ViT-B/16 weights when they can be had (``--weights FILE``, the open_clip cache, or a
download) and otherwise a tiny random-init CLIP, with a notice that the numbers then mean nothing.

    python tools/demo.py [--out demo_out] [--weights /path/to/ViT-B-16.pt] [--tiny] [key=value ...]
"""
from __future__ import annotations

import argparse
import logging
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from excel.config import CONFIG_DIR, load_config
from excel.errors import ExcelError

log = logging.getLogger("excel.demo")

NOTICE = ("NOTICE: real CLIP ViT-B/16 weights are not available here, so the demo runs a tiny RANDOM-INIT CLIP.\n"
          "        The pipeline is the real one, but its numbers are meaningless. For real numbers pass\n"
          "        --weights /path/to/ViT-B-16.pt (OpenAI's file) or run where open_clip can download 'openai'.")


def find_weights(weights: str | None, cache_dir: str | None) -> str | None:
    """The ``model.clip.pretrained`` value to use for real ViT-B/16 weights, or None when none can be had."""
    from excel.backbone import load_clip

    if weights:
        if not Path(weights).is_file():
            raise ExcelError(f"--weights {weights}: no such file (expected OpenAI's ViT-B-16.pt or an open_clip "
                             f"checkpoint)")
        return weights
    try:  # the open_clip cache, or a download when the hub is reachable (load_clip checks that quickly)
        load_clip("ViT-B-16", "openai", force_quick_gelu=True, cache_dir=cache_dir)
        return "openai"
    except (ExcelError, RuntimeError, OSError, ValueError) as err:
        log.info("no ViT-B/16 weights (%s)", str(err).splitlines()[0] if str(err) else type(err).__name__)
        return None


def demo_config(out: Path, pretrained: str | None, overrides: Sequence[str]) -> Any:
    """Config of the demo: ViT-B/16 at 320 px with real weights, else the tiny random-init model at 128 px."""
    common = [f"data.root={out / 'data'}", "data.num_workers=0", "data.train_split=train", "data.val_split=val",
              f"run.work_dir={out / 'train'}", "run.device=auto", f"tse.cache_dir={out / 'cache'}"]
    if pretrained is not None:
        files = [CONFIG_DIR / "voc.yaml"]
        specific = [f"model.clip.pretrained={pretrained}", "train.max_iters=40", "train.batch_size=2",
                    "train.eval_iters=40", "train.log_iters=10", "lvc.start_iter=20", "lvc.attn_pred_start_iter=20",
                    "train.aff_label_switch_iter=30", "optim.warmup_iters=5", "infer.scales=[1.0,0.7,1.2]"]
    else:
        files = [CONFIG_DIR / "test_tiny.yaml"]
        specific = ["model.input_size=128", "data.augment.crop_size=128", "train.max_iters=40",
                    "train.batch_size=4", "train.eval_iters=40", "train.log_iters=10", "lvc.start_iter=20",
                    "lvc.attn_pred_start_iter=20", "train.aff_label_switch_iter=30", "optim.warmup_iters=5",
                    "infer.scales=[1.0,0.75,1.25]", "tse.num_clusters=40"]
    return load_config(files, [*common, *specific, *overrides])


def _banner(text: str) -> None:
    print(f"\n{'=' * 100}\n{text}\n{'=' * 100}", flush=True)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description="Run the ExCEL pipeline end to end on a generated mini dataset.")
    parser.add_argument("--out", default="demo_out", help="output folder (default: demo_out)")
    parser.add_argument("--weights", default=None, help="OpenAI ViT-B-16.pt (or open_clip checkpoint) to use")
    parser.add_argument("--tiny", action="store_true", help="skip the weights search: tiny random-init CLIP")
    parser.add_argument("--num-train", type=int, default=16, help="generated training images")
    parser.add_argument("--num-val", type=int, default=6, help="generated validation images")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    args = parser.parse_args(argv)

    from excel.data import make_synthetic_voc
    from excel.engine.infer_lam import run_infer_lam
    from excel.engine.predict import Predictor, predict_images
    from excel.engine.segment import segment
    from excel.engine.train import train
    from excel.utils.logging import setup_logging

    setup_logging()
    out = Path(args.out).resolve()
    t0 = time.perf_counter()
    pretrained = None if args.tiny else find_weights(args.weights, None)
    cfg = demo_config(out, pretrained, args.overrides)
    if pretrained is None:
        print(NOTICE, flush=True)
    else:
        print(f"Using real CLIP ViT-B/16 weights ({pretrained}).", flush=True)

    for stale in ("pseudo_labels", "train", "segmentation", "predictions"):  # each demo run starts fresh
        shutil.rmtree(out / stale, ignore_errors=True)

    _banner("1/5  generating the mini dataset (VOC layout)")
    make_synthetic_voc(out / "data", num_train=args.num_train, num_val=args.num_val, num_test=2, seed=0)
    print(f"dataset in {out / 'data'}", flush=True)

    _banner("2/5  training-free pseudo labels on the train split (spec 5)")
    lam_cfg = cfg.copy()
    lam_cfg.infer.split = "train"
    lam_cfg.infer.save_overlays = True
    lam_cfg.infer.crf = True
    lam_cfg.infer.output_dir = str(out / "pseudo_labels")
    lam = run_infer_lam(lam_cfg)

    _banner("3/5  short training run (decoder on on-line pseudo labels, LVC from half-way)")
    train(cfg)
    ckpt = max((out / "train" / "checkpoints").glob("iter_*.pth"))

    _banner("4/5  multi-scale + flip inference on val, raw and with the dense CRF")
    seg_cfg = cfg.copy()
    seg_cfg.infer.split = "val"
    seg_cfg.infer.checkpoint = str(ckpt)
    seg_cfg.infer.crf = True
    seg_cfg.infer.output_dir = str(out / "segmentation")
    seg = segment(seg_cfg, tool="infer_seg_voc")

    _banner("5/5  overlays with a legend for the val images")
    predictor = Predictor(seg_cfg, checkpoint=ckpt, device="cpu")
    val_images = [str(out / "data" / "JPEGImages" / f"{n}.jpg")
                  for n in (out / "data" / "lists" / "val.txt").read_text().split()]
    predict_images(predictor, val_images, out / "predictions", progress=True)

    summary = {"weights": pretrained or "random init (tiny)", "pseudo_label_miou": lam["miou"],
               "pseudo_label_crf_miou": lam.get("crf_miou"), "seg_miou": seg["scores"]["raw"]["miou"],
               "seg_crf_miou": seg["scores"]["crf"]["miou"], "seconds": time.perf_counter() - t0}
    _banner("summary")
    print(f"CLIP weights               {summary['weights']}")
    print(f"pseudo labels (train)      mIoU {100 * summary['pseudo_label_miou']:.2f}"
          f"   + CRF {100 * (summary['pseudo_label_crf_miou'] or float('nan')):.2f}")
    print(f"segmentation (val, MS+flip) mIoU {100 * summary['seg_miou']:.2f}"
          f"   + CRF {100 * summary['seg_crf_miou']:.2f}")
    print(f"outputs                    {out}/  (pseudo_labels/overlays, segmentation/, predictions/overlays/)")
    print(f"total time                 {summary['seconds']:.0f} s")
    if pretrained is None:
        print("\n" + NOTICE)
    return summary


if __name__ == "__main__":
    from excel.engine.cli import run_cli

    sys.exit(run_cli(main, sys.argv[1:]))
