"""Pretrain the organism CLIP (``excel-organism``) on the generated world and export the shipped weights.

    python tools/pretrain_organism.py                 # the shipped weights (docs/organism.md: time, figures)
    python tools/pretrain_organism.py --device cuda --num-workers 9    # the same settings on a GPU
    python tools/pretrain_organism.py --steps 100 --work-dir /tmp/org --export /tmp/org/organism.pt

The pairs are a function of ``--seed`` alone (any device, any number of workers); rerunning with the same work dir
resumes from ``<work-dir>/last.pth``. The arithmetic differs across devices (and thread counts), so a GPU run ends
close to the shipped file, not bit-equal to it (the shipped file came from the first command).
"""
from __future__ import annotations

import argparse
import sys

from excel.engine.cli import run_cli


def main(argv: list[str] | None = None) -> int:
    import torch

    from excel.data.classes import VOC_BACKGROUND_NAMES
    from excel.errors import UsageError
    from excel.organism.pretrain import PretrainConfig, pretrain
    from excel.organism.weights import SHIPPED

    defaults = PretrainConfig()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work-dir", default="work_dirs/organism_pretrain", help="checkpoint folder (resumable)")
    parser.add_argument("--export", default=str(SHIPPED), help="where to write the shipped weight file")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (the pairs are the same on any device)")
    for key, value in vars(defaults).items():
        if key != "model":   # a flag (--x / --no-x) for a boolean, else a value of the default's type
            kind = {"action": argparse.BooleanOptionalAction} if isinstance(value, bool) else {"type": type(value)}
            parser.add_argument(f"--{key.replace('_', '-')}", default=value, **kind)
    args = parser.parse_args(argv)
    try:
        device = torch.device(args.device)
    except RuntimeError as err:
        raise UsageError(f"--device {args.device}: not a device name (cpu, cuda or cuda:N)") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {args.device}: CUDA is not available on this machine; use --device cpu")
    cfg = PretrainConfig(**{k: getattr(args, k) for k in vars(defaults) if k != "model"})
    summary = pretrain(cfg, args.work_dir, export=args.export, background_names=VOC_BACKGROUND_NAMES,
                       device=args.device)
    m_ap = summary.get("zero_shot_map")
    shown = "not measured" if m_ap is None else f"{m_ap:.3f}"
    print(f"done: step {summary.get('step')}, held-out zero-shot mAP {shown}"
          f", {summary.get('seconds', 0) / 60:.1f} min of training; weights in {args.export}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main, sys.argv[1:]))
