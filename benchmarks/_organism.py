"""Shared steps of the organism benchmarks: data, configs, and one call per pipeline stage (no re-implementation:
each stage is the library's own runner, as the tools call it)."""
from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import Any, Sequence

from excel.config import CONFIG_DIR, load_config
from excel.organism.world import BACKDROP_KINDS


PARTS_KNOWLEDGE_BASE = "excel/knowledge/organism_parts_knowledge_base.json"   # the part world's (World(parts=True))


def world_parser(description: str, out: str, skip_help: str) -> argparse.ArgumentParser:
    """The arguments every organism benchmark takes: world seed, output folder, data sizes, --skip-training."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--seed", type=int, default=2026, help="world seed of the evaluation data")
    parser.add_argument("--out", default=out, help="output folder")
    parser.add_argument("--num-train", type=int, default=500)
    parser.add_argument("--num-val", type=int, default=100)
    parser.add_argument("--skip-training", action="store_true", help=skip_help)
    parser.add_argument("--object-scale", type=float, default=1.0,
                        help="object size factor of the generated world (1.0: the world the organism learned)")
    parser.add_argument("--parts", action="store_true",
                        help="a world whose objects carry parts (make_synthetic.py --parts), with its knowledge base")
    parser.add_argument("--varied-backdrops", type=float, default=0.0,
                        help="chance of an unnamed backdrop in the generated world (make_synthetic.py "
                             "--varied-backdrops; 0: the world the organism learned)")
    parser.add_argument("--backdrop-kinds", nargs="+", choices=BACKDROP_KINDS, default=list(BACKDROP_KINDS),
                        help="the kinds of unnamed backdrop drawn (make_synthetic.py --backdrop-kinds)")
    parser.add_argument("--weights", default="organism",
                        help="organism weights: 'organism' (shipped) or a file from tools/pretrain_organism.py")
    return parser


def world_run(args: argparse.Namespace) -> tuple[Path, Path, list[str]]:
    """From :func:`world_parser`'s arguments: the run folder (``<out>/seed<S>``, tagged with a non-default object
    scale or weight file), its data (generated on first use) and the config overrides that select the weights."""
    tag = f"seed{args.seed}"
    if args.object_scale != 1.0:
        tag += f"_objects{args.object_scale:g}"
    if args.parts:
        tag += "_parts"
    if args.varied_backdrops:
        tag += f"_backdrops{args.varied_backdrops:g}"
        if tuple(args.backdrop_kinds) != BACKDROP_KINDS:
            tag += "-" + "-".join(args.backdrop_kinds)
    if args.weights != "organism":
        tag += f"_{Path(args.weights).stem}"
    out = Path(args.out).resolve() / tag
    data = make_data(out / "data", args.seed, args.num_train, args.num_val, args.object_scale, args.parts,
                     args.varied_backdrops, args.backdrop_kinds)
    weights = args.weights if args.weights == "organism" else str(Path(args.weights).resolve())
    overrides = [f"model.clip.pretrained={weights}"]
    if args.parts:
        overrides.append(f"tse.knowledge_base={PARTS_KNOWLEDGE_BASE}")
    return out, data, overrides


def make_data(root: Path, seed: int, num_train: int, num_val: int, object_scale: float = 1.0,
              parts: bool = False, varied_backdrops: float = 0.0,
              backdrop_kinds: Sequence[str] = BACKDROP_KINDS) -> Path:
    """The world's data for ``seed`` (reused when ``root`` already holds it)."""
    from excel.organism.synthetic import WORLD_SIZE, make_synthetic_voc

    if not (root / "lists" / "val.txt").is_file():
        make_synthetic_voc(root, num_train=num_train, num_val=num_val, num_test=0, size=WORLD_SIZE, seed=seed,
                           progress=True, object_scale=object_scale, parts=parts,
                           varied_backdrops=varied_backdrops, backdrop_kinds=backdrop_kinds)
    return root


def organism_config(data: Path, out: Path, layers: Sequence[str | Path] = (), overrides: Sequence[str] = ()) -> Any:
    """configs/organism.yaml, then ``layers`` (e.g. an ablation file), then ``overrides``."""
    return load_config([CONFIG_DIR / "organism.yaml", *layers],
                       [f"data.root={data}", f"run.work_dir={out}", f"tse.cache_dir={out.parent / 'banks'}",
                        "data.train_split=train", *overrides])


def pseudo_label_miou(cfg: Any, out: Path, crf: bool = False) -> dict[str, Any]:
    """Training-free pseudo labels on val (infer_lam); returns its results record."""
    from excel.engine.infer_lam import run_infer_lam

    cfg = cfg.copy()
    cfg.infer.split, cfg.infer.crf, cfg.infer.output_dir = "val", crf, str(out)
    return run_infer_lam(cfg)


def train_and_segment(cfg: Any, crf: bool = True, checkpoint: str | None = None) -> dict[str, Any]:
    """The standard organism training (or a given ``checkpoint`` of it), then MS+flip inference on val (+CRF);
    returns mIoUs and the training seconds."""
    from excel.engine.segment import segment
    from excel.engine.train import train

    t0 = time.perf_counter()
    if checkpoint is None:
        train(cfg)
    seconds = time.perf_counter() - t0
    ckpt = Path(checkpoint) if checkpoint else max((Path(cfg.run.work_dir) / "checkpoints").glob("iter_*.pth"))
    seg_cfg = cfg.copy()
    seg_cfg.infer.split, seg_cfg.infer.checkpoint, seg_cfg.infer.crf = "val", str(ckpt), crf
    seg_cfg.infer.output_dir = str(Path(cfg.run.work_dir) / "segmentation")
    seg = segment(seg_cfg, tool="infer_seg_voc")
    scores = seg["scores"]
    return {"seg_miou": scores["raw"]["miou"], "seg_crf_miou": (scores.get("crf") or {}).get("miou"),
            "train_seconds": seconds, "checkpoint": str(ckpt)}


def validation_log(cfg: Any) -> list[dict[str, Any]]:
    """The in-training validations of a finished run (``<work_dir>/val.jsonl``: iter, seg_miou, pseudo_miou)."""
    path = Path(cfg.run.work_dir) / "val.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def quiet() -> None:
    """Keep the runners' INFO logs off the screen (the tables are the output)."""
    logging.basicConfig(level=logging.WARNING)
    for name in ("excel", "open_clip"):
        logging.getLogger(name).setLevel(logging.WARNING)
