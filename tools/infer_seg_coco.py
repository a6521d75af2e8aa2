"""Multi-scale + flip segmentation inference on MS COCO 2014 (algorithm.md §9.3), optional dense CRF.

COCO differs from VOC only in configs/coco.yaml: the flip is used at every scale (infer.flip_at_unit_scale=true)
and each scale's logits are reduced to int(0.2 h) x int(0.2 w) before averaging (infer.logit_scale=0.2), then
upsampled to the label size for scoring. The CRF is scored on the fly (no seg_preds PNGs unless
infer.save_overlays=true asks for overlays).
    python tools/infer_seg_coco.py data.root=/data/COCO infer.checkpoint=work_dirs/coco/checkpoints/iter_0100000.pth
    torchrun --nproc_per_node=4 tools/infer_seg_coco.py data.root=... infer.checkpoint=... infer.crf=true
    bash infer_seg_coco.sh 0,1 2 val /path/to/checkpoint.pth data.root=...
The model, its classes and the other settings come from the config stored in the checkpoint; --config files and
key=value arguments override it. The split scored is infer.split (default val; training validates on eval.split,
val_part in configs/coco.yaml).
<output_dir>/report.html shows the per-class table, the confusion heat map and the images, worst first.
"""
from __future__ import annotations

import sys
from typing import Any, Sequence

from excel.engine import dist
from excel.engine.cli import parse_config, run_cli
from excel.engine.segment import segment


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    cfg = parse_config(argv, "Multi-scale + flip segmentation inference on MS COCO 2014 (optional CRF).", "coco.yaml",
                       follow_checkpoint=True)
    try:
        return segment(cfg, tool="infer_seg_coco")
    finally:
        dist.cleanup()


if __name__ == "__main__":
    sys.exit(run_cli(main, sys.argv[1:]))
