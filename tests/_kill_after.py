"""Fault injection for the reliability tests: ``python tests/_kill_after.py N [train_voc.py arguments ...]`` trains
like scripts/train_voc.py and SIGKILLs its own process right after iteration N (its validation and checkpoint
included), through the trainer's ``after_iteration`` hooks."""
from __future__ import annotations

import os
import signal
import sys

from _tools import load_script  # run by path, this folder is on sys.path
from excel.engine import train as training


def main() -> None:
    kill_after, argv = int(sys.argv[1]), sys.argv[2:]
    build = training.Trainer.__init__

    def with_hook(self, cfg) -> None:
        build(self, cfg)
        self.after_iteration.append(lambda n: os.kill(os.getpid(), signal.SIGKILL) if n == kill_after else None)

    training.Trainer.__init__ = with_hook
    load_script("scripts/train_voc.py").main(argv)


if __name__ == "__main__":
    main()
