"""Write a TSE knowledge base (algorithm.md §3.1) with an OpenAI-compatible chat API.

For every class the model is asked for ``n`` attribute sentences (``tse.llm.prompt_template``); each answer is
validated (``n`` distinct sentences, no other class named, within CLIP's 77 tokens) and re-asked when invalid;
transient API errors are retried with backoff. Finished classes are written to ``--out`` as they complete, and a
rerun resumes. Stored sentences are ``tse.prefix_template.format(class) + attribute``. Needs the openai package:
``pip install "excel[llm]"``. The API key is read from $OPENAI_API_KEY only; a --base-url server needs none.

    export OPENAI_API_KEY=sk-...
    python tools/build_knowledge_base.py --config configs/voc.yaml --out excel/knowledge/voc_knowledge_base.json
    python tools/build_knowledge_base.py --classes-file my_classes.txt --out kb.json \\
        --base-url http://localhost:8000/v1 --model my-model -n 20 tse.llm.temperature=0.5
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from typing import Callable, Sequence

from excel.engine.cli import config_from_args, config_parser, run_cli
from excel.text.llm import make_client, read_class_names, write_knowledge_base


def main(argv: Sequence[str] | None = None, sleep: Callable[[float], None] = time.sleep) -> dict[str, list[str]]:
    """Run the tool; returns the written knowledge base."""
    parser = config_parser(__doc__.split("\n\n")[0], None)
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--classes-file", default=None, help="one class name a line (instead of data.class_names)")
    parser.add_argument("--out", required=True, help="output JSON; an existing file is resumed")
    parser.add_argument("--model", default=None, help="chat model (default tse.llm.model)")
    parser.add_argument("--base-url", default=None, help="API base URL (default tse.llm.base_url, else the client's)")
    parser.add_argument("-n", "--num-sentences", type=int, default=None,
                        help="sentences per class (default tse.llm.num_sentences)")
    args = parser.parse_intermixed_args(argv)
    cfg = config_from_args(args, None)
    llm = cfg.tse.llm
    if args.model:
        llm.model = args.model
    n = int(args.num_sentences if args.num_sentences is not None else llm.num_sentences)
    classes = read_class_names(args.classes_file, cfg, args.config)
    client = make_client(llm, args.base_url)
    start = time.time()
    kb = write_knowledge_base(client, llm, classes, n, str(cfg.tse.prefix_template), args.out, sleep=sleep)
    print(f"knowledge base with {len(classes)} classes x {n} sentences written to {args.out} "
          f"({time.time() - start:.1f}s)")
    return kb


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    sys.exit(run_cli(main, sys.argv[1:]))
