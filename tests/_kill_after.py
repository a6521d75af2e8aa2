"""Fault injection for the reliability tests: ``python tests/_kill_after.py N [train_voc.py arguments ...]`` trains
like scripts/train_voc.py and SIGKILLs its own process right after iteration N (its validation and checkpoint
included), through the trainer's ``after_iteration`` hooks."""
from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from excel.engine import train as training  # noqa: E402


def main() -> None:
    kill_after, argv = int(sys.argv[1]), sys.argv[2:]
    build = training.Trainer.__init__

    def with_hook(self, cfg) -> None:
        build(self, cfg)
        self.after_iteration.append(lambda n: os.kill(os.getpid(), signal.SIGKILL) if n == kill_after else None)

    training.Trainer.__init__ = with_hook
    from scripts.train_voc import main as train_voc

    train_voc(argv)


if __name__ == "__main__":
    main()
