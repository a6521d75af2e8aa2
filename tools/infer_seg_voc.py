"""Multi-scale + flip segmentation inference on PASCAL VOC (algorithm.md §9.2, §9.5), optional dense CRF.

Score val with and without CRF (both tables go to the screen, <output_dir>/infer_seg_voc.log and results.json):
    python tools/infer_seg_voc.py data.root=/data/VOC2012 infer.checkpoint=work_dirs/voc/checkpoints/iter_0030000.pth \
        infer.crf=true
torchrun (the images are sharded over the processes; gloo on CPU):
    torchrun --nproc_per_node=2 tools/infer_seg_voc.py data.root=... infer.checkpoint=... infer.crf=true
Test set (palette PNGs in <output_dir>/results/VOC2012/Segmentation/comp6_test_cls/, nothing scored):
    python tools/infer_seg_voc.py data.root=... data.test_root=/data/VOC2012_test infer.split=test infer.checkpoint=...
or with the reference's wrapper:
    bash infer_seg_voc.sh 0 1 val /path/to/checkpoint.pth infer.crf=true data.root=...
The model, its classes and the other settings come from the config stored in the checkpoint (the training run's);
--config files and key=value arguments override it.
Keys: infer.scales, infer.flip_at_unit_scale, infer.crf, infer.crf_params, infer.crf_workers, infer.save_logits,
infer.save_overlays, infer.output_dir (default <run.work_dir>/infer_seg_voc_<split>), infer.max_images,
infer.report_max_images. <output_dir>/report.html shows the per-class table, the confusion heat map and the images,
worst first; open it in a browser.
"""
from __future__ import annotations

import sys
from typing import Any, Sequence

from excel.engine import dist
from excel.engine.cli import parse_config, run_cli
from excel.engine.segment import segment


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    cfg = parse_config(argv, "Multi-scale + flip segmentation inference on PASCAL VOC (optional CRF).", "voc.yaml",
                       follow_checkpoint=True)
    try:
        return segment(cfg, tool="infer_seg_voc")
    finally:
        dist.cleanup()


if __name__ == "__main__":
    sys.exit(run_cli(main, sys.argv[1:]))
