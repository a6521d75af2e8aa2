"""The embedded demo (``bash run_demo.sh``, ``tools/demo.py``): the whole ExCEL pipeline on the generated world.

Offline and on CPU: the world's data in VOC layout, the CLIP's zero-shot mAP, training-free pseudo labels with and
without the dense CRF, a short decoder training run, multi-scale + flip inference with and without the CRF, and
overlays with a legend. Real OpenAI ViT-B/16 weights are used when they can be had, otherwise the model organism
(``configs/organism.yaml``), with which every number is real.
"""
from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path
from typing import Any, Sequence

from excel.config import CONFIG_DIR, load_config
from excel.errors import ExcelError

log = logging.getLogger(__name__)

NOTICE = ("Real CLIP ViT-B/16 weights are not available here, so the demo runs the model organism: a small CLIP\n"
          "pretrained on the generated world (configs/organism.yaml). Its numbers are real, on that world. For\n"
          "ViT-B/16 pass --weights /path/to/ViT-B-16.pt (OpenAI's file) or run where open_clip can download 'openai'.")


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


def demo_config(out: Path, pretrained: str | None, iters: int, overrides: Sequence[str]) -> Any:
    """Config of the demo: ViT-B/16 at 320 px with real weights, else the organism at 192 px; ``iters`` training
    iterations with every milestone at the reference's fraction of the run."""
    from excel.engine.schedule import rescale_schedule

    # the in-training validation at the end scores 20 images (step 4 then scores every val image, MS+flip)
    common = [f"data.root={out / 'data'}", "data.num_workers=0", "data.train_split=train", "eval.max_images=20",
              f"run.work_dir={out / 'train'}", "run.device=auto", f"tse.cache_dir={out / 'cache'}"]
    if pretrained is not None:
        files = [CONFIG_DIR / "voc.yaml"]
        specific = [f"model.clip.pretrained={pretrained}", "train.batch_size=2", "infer.scales=[1.0,0.7,1.2]"]
    else:
        files = [CONFIG_DIR / "organism.yaml"]
        specific = []
    base = load_config(files, [*common, *specific, *overrides])
    return load_config(files, [*common, *specific, *rescale_schedule(base, iters), "train.eval_iters=" + str(iters),
                               *overrides])


def _banner(text: str) -> None:
    print(f"\n{'=' * 100}\n{text}\n{'=' * 100}", flush=True)


def run_demo(out: str | Path = "demo_out", weights: str | None = None, organism: bool = False, num_train: int = 200,
             num_val: int = 60, iters: int = 300, num_overlays: int = 8,
             overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Run the five steps into ``out`` (each run starts fresh) and print a summary; returns its figures."""
    from excel.organism.synthetic import WORLD_SIZE, make_synthetic_voc
    from excel.engine.infer_lam import run_infer_lam
    from excel.engine.predict import Predictor, predict_images
    from excel.engine.segment import segment
    from excel.engine.train import train
    from excel.organism.evaluate import split_zero_shot_map

    out = Path(out).resolve()
    t0 = time.perf_counter()
    pretrained = None if organism else find_weights(weights, None)
    cfg = demo_config(out, pretrained, iters, overrides)
    print(NOTICE if pretrained is None else f"Using real CLIP ViT-B/16 weights ({pretrained}).", flush=True)

    for stale in ("pseudo_labels", "train", "segmentation", "predictions"):  # each demo run starts fresh
        shutil.rmtree(out / stale, ignore_errors=True)

    _banner("1/5  generating the world's data (VOC layout)")
    make_synthetic_voc(out / "data", num_train=num_train, num_val=num_val, num_test=0, size=WORLD_SIZE, seed=0,
                       progress=True)
    print(f"dataset in {out / 'data'}", flush=True)

    _banner("2/5  zero-shot multi-label mAP on val, then training-free pseudo labels on val")
    zero_shot = split_zero_shot_map(cfg, "val")
    print(f"zero-shot mAP {100 * zero_shot:.1f}", flush=True)
    lam_cfg = cfg.copy()
    lam_cfg.infer.split = "val"
    lam_cfg.infer.save_overlays = True
    lam_cfg.infer.crf = True
    lam_cfg.infer.output_dir = str(out / "pseudo_labels")
    lam = run_infer_lam(lam_cfg)

    _banner(f"3/5  training the decoder for {iters} iterations on on-line pseudo labels (LVC from "
            f"iteration {cfg.lvc.start_iter})")
    train(cfg)
    ckpt = max((out / "train" / "checkpoints").glob("iter_*.pth"))

    _banner("4/5  multi-scale + flip inference on val, raw and with the dense CRF")
    seg_cfg = cfg.copy()
    seg_cfg.infer.split = "val"
    seg_cfg.infer.checkpoint = str(ckpt)
    seg_cfg.infer.crf = True
    seg_cfg.infer.output_dir = str(out / "segmentation")
    seg = segment(seg_cfg, tool="infer_seg_voc")

    _banner("5/5  overlays with a legend for a few val images")
    predictor = Predictor(seg_cfg, checkpoint=ckpt, device="cpu")
    val_names = (out / "data" / "lists" / "val.txt").read_text().split()[:num_overlays]
    predict_images(predictor, [str(out / "data" / "JPEGImages" / f"{n}.jpg") for n in val_names],
                   out / "predictions", progress=True)

    summary = {"weights": pretrained or "organism", "zero_shot_map": zero_shot, "pseudo_label_miou": lam["miou"],
               "pseudo_label_crf_miou": lam.get("crf_miou"), "seg_miou": seg["scores"]["raw"]["miou"],
               "seg_crf_miou": seg["scores"]["crf"]["miou"], "num_val": num_val,
               "seconds": time.perf_counter() - t0}
    _banner("summary")
    print(f"CLIP weights                       {summary['weights']}")
    print(f"zero-shot multi-label mAP (val)    {100 * zero_shot:.1f}")
    print(f"training-free pseudo labels (val)  mIoU {100 * summary['pseudo_label_miou']:.1f}"
          f"   + CRF {100 * (summary['pseudo_label_crf_miou'] or float('nan')):.1f}")
    print(f"segmentation after training (val) mIoU {100 * summary['seg_miou']:.1f} (MS+flip)"
          f"   + CRF {100 * summary['seg_crf_miou']:.1f}     [{num_val} val images]")
    print(f"overlays    {out / 'pseudo_labels' / 'overlays'}  and  {out / 'predictions' / 'overlays'}")
    print(f"reports     {lam.get('report')}\n            {seg.get('report')}\n"
          f"            {out / 'predictions' / 'report.html'}   (open in a browser: tables, heat maps, worst first)")
    print(f"total time  {summary['seconds']:.0f} s")
    return summary
