"""Every script and tool is a thin ``main(argv)`` run by ``run_cli``: bad input is one ``error:`` line, exit 2."""
from __future__ import annotations

import logging
import re

import pytest

from excel.engine.cli import run_cli

from _tools import REPO  # noqa: E402

ENTRY_POINTS = sorted(p.relative_to(REPO).as_posix() for folder in ("tools", "scripts")
                      for p in (REPO / folder).glob("*.py") if not p.name.startswith("_"))


def _main(relpath: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"entry_{relpath.replace('/', '_')[:-3]}", REPO / relpath)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


@pytest.mark.parametrize("relpath", ENTRY_POINTS)
def test_entry_points_are_thin_and_run_by_run_cli(relpath):
    text = (REPO / relpath).read_text()
    assert len(text.splitlines()) < 60, f"{relpath}: move logic into the library"
    assert re.search(r"^def main\(argv", text, re.M), relpath
    _, _, main_block = text.partition('if __name__ == "__main__":')
    assert main_block and "sys.exit(run_cli(main, sys.argv[1:]))" in main_block, relpath


BAD_INPUTS = {
    "scripts/train_voc.py": (["--config", "no_such.yaml"], "config file not found: no_such.yaml"),
    "scripts/train_coco.py": (["--config", "no_such.yaml"], "config file not found: no_such.yaml"),
    "tools/build_bank.py": (["--config", "no_such.yaml"], "config file not found: no_such.yaml"),
    "tools/build_knowledge_base.py": (["--config", "no_such.yaml", "--out", "{tmp}/kb.json"],
                                      "config file not found: no_such.yaml"),
    "tools/convert_checkpoint.py": (["{tmp}/missing.pth", "{tmp}/out.pth"], "missing.pth"),
    "tools/demo.py": (["--weights", "{tmp}/nope.pt", "--out", "{tmp}/demo"], "nope.pt: no such file"),
    "tools/infer_lam.py": (["--config", "no_such.yaml"], "config file not found: no_such.yaml"),
    "tools/infer_seg_coco.py": (["--config", "no_such.yaml"], "config file not found: no_such.yaml"),
    "tools/infer_seg_voc.py": (["--config", "no_such.yaml"], "config file not found: no_such.yaml"),
    "tools/make_synthetic.py": (["--root", "{tmp}/world", "--num-train", "-1"], "image counts must be >= 0"),
    "tools/predict.py": (["{tmp}/photos", "--out", "{tmp}/out", "--classes", "cat"], "photos"),
    "tools/prepare_coco.py": (["--root", "{tmp}/no_coco"], "no_coco"),
    "tools/prepare_voc.py": (["--root", "{tmp}/no_voc"], "no_voc"),
    "tools/pretrain_organism.py": (["--device", "nonsense", "--work-dir", "{tmp}/org"], "--device nonsense"),
}


def test_every_entry_point_has_a_bad_input_case():
    assert sorted(BAD_INPUTS) == ENTRY_POINTS


@pytest.fixture()
def restore_logging():
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.mark.parametrize("relpath", sorted(BAD_INPUTS))
def test_bad_input_is_one_error_line_and_status_2(relpath, tmp_path, capsys, restore_logging):
    argv, needle = BAD_INPUTS[relpath]
    status = run_cli(_main(relpath), [a.replace("{tmp}", str(tmp_path)) for a in argv])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert status == 2 and len(lines) == 1 and needle in lines[0], err
    assert "Traceback" not in err
