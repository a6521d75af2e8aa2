"""Train ExCEL on PASCAL VOC 2012 (configs/voc.yaml).

One process (CPU or one GPU):
    python scripts/train_voc.py data.root=/data/VOC2012
torchrun, 2 GPUs (nccl; gloo on CPU):
    torchrun --nproc_per_node=2 scripts/train_voc.py data.root=/data/VOC2012
or with the reference's wrapper:
    bash run_train.sh scripts/train_voc.py 0,1 2 29501 my_tag data.root=/data/VOC2012
Several machines: NNODES, NODE_RANK, MASTER_ADDR and MASTER_PORT with run_train.sh (docs/training.md).
train.batch_size is per process; the effective batch is train.batch_size x the number of processes.
Resume: add train.resume=auto. Ablations: --config configs/ablations/<name>.yaml.
"""
from __future__ import annotations

import sys
from typing import Sequence

from excel.engine import dist
from excel.engine.cli import parse_config, run_cli
from excel.engine.train import train


def main(argv: Sequence[str] | None = None) -> dict:
    cfg = parse_config(argv, "Train ExCEL on PASCAL VOC 2012.", "voc.yaml")
    dist.init_distributed(cfg.run.device, timeout=cfg.run.dist_timeout)  # under torchrun; train() leaves it
    return train(cfg)


if __name__ == "__main__":
    sys.exit(run_cli(main, sys.argv[1:]))
