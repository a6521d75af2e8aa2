"""Convert a checkpoint of the reference's training script into an excel checkpoint (algorithm.md §9.4a).

    python tools/convert_checkpoint.py work_dirs/reference/model_iter_30000.pth work_dirs/reference/iter_30000.pth

The input is the reference's ``model.state_dict()`` (``module.encoder.*``, ``module.decoder_fts_fuse.*``,
``module.decoder.*``). The output holds the decoder in excel's layout, the file's CLIP weights (used when
model.clip.pretrained is unset) and the class count; the iteration is read from a ``model_iter_<n>`` file name.
Every inference tool also reads the reference's file as it is; converting once saves the conversion at each load.
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Sequence

from excel.engine.checkpoint import (CheckpointError, convert_reference_state, is_reference_state, load_checkpoint,
                                     save_converted)
from excel.engine.cli import run_cli
from excel.errors import UsageError

SUFFIXES = (".pth", ".pt", ".ckpt")


def main(argv: Sequence[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("input", help="checkpoint written by the reference's training script")
    parser.add_argument("output", help=f"excel checkpoint to write ({', '.join(SUFFIXES)})")
    args = parser.parse_args(argv)
    out = Path(args.output)
    if out.suffix not in SUFFIXES:
        raise UsageError(f"output {out}: expected a file name ending in {', '.join(SUFFIXES)}")
    ckpt = load_checkpoint(args.input)
    if ckpt["format"] != "state_dict" or not is_reference_state(ckpt["model"]):
        raise CheckpointError(f"{args.input} is not a checkpoint of the reference's training script (expected "
                              f"module.decoder_fts_fuse.* keys, algorithm.md §9.4a); excel checkpoints need no "
                              f"conversion")
    converted = convert_reference_state(ckpt["model"], source=args.input)
    found = re.search(r"iter_(\d+)", Path(args.input).stem)
    path = save_converted(converted, out, iteration=int(found.group(1)) if found else 0)
    meta = converted.meta()
    print(f"wrote {path}: decoder for {meta['num_classes']} classes (width {meta['embed_dim']}), "
          f"{'with' if converted.clip else 'without'} CLIP weights")
    return path


if __name__ == "__main__":
    sys.exit(run_cli(main, sys.argv[1:]))
