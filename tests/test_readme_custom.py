"""docs/custom_dataset.md (the README points to it), run as written on a generated 3-class dataset (12 images and index
masks, nothing else): prepare_voc, the knowledge-base tool against a fake OpenAI-compatible server on 127.0.0.1
(no API key in the environment), training, infer_seg_voc and predict from the checkpoint. The commands change in
two places only: the server's port, and a test overlay (a tiny random-init CLIP, 4 iterations) appended to the
training command. The YAML and the knowledge base the section shows are the files that ship."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from _custom import CUSTOM_CLASSES, user_dataset
from _fake_llm import DEFAULT_PATTERN, FakeOpenAI

from excel.config import CONFIG_DIR, ConfigError, load_config
from excel.text.knowledge import load_knowledge_base

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = CONFIG_DIR / "examples" / "custom.yaml"
EXAMPLE_KB = CONFIG_DIR / "examples" / "custom_kb.json"
README_URL = "http://127.0.0.1:8000/v1"
README_TRAIN = "python scripts/train_voc.py --config configs/examples/custom.yaml"
TINY_OVERLAY = """\
run: {device: cpu}
model: {input_size: 64, clip: {name: excel-tiny, pretrained: null}}
data: {num_workers: 0, augment: {crop_size: 64}}
train: {max_iters: 4, batch_size: 2, log_iters: 2, eval_iters: 2, aff_label_switch_iter: 3}
lvc: {start_iter: 2, attn_pred_start_iter: 2}
optim: {warmup_iters: 1}
infer: {scales: [1.0]}
"""


def section() -> str:
    return (REPO / "docs" / "custom_dataset.md").read_text(encoding="utf-8")


def blocks(lang: str) -> list[str]:
    """The ``lang`` code blocks of the section (indented ones dedented), in order."""
    return [textwrap.dedent(body) for _, body in re.findall(rf"^( *)```{lang}\n(.*?)^\1```", section(), re.S | re.M)]


def test_the_section_shows_the_files_that_ship():
    (shown,) = blocks("yaml")
    assert shown == EXAMPLE.read_text(encoding="utf-8")
    (excerpt,) = blocks("json")
    sentences = re.findall(r'"(a clean origami [^"]+)"', excerpt)
    kb = json.loads(EXAMPLE_KB.read_text(encoding="utf-8"))
    assert sentences == [s for v in kb.values() for s in v[:2]]
    cfg = load_config([EXAMPLE], defaults=CONFIG_DIR / "voc.yaml")  # what train_voc.py loads
    assert list(cfg.data.class_names) == list(CUSTOM_CLASSES) and cfg.data.name == "custom"
    example = load_knowledge_base(EXAMPLE_KB, list(cfg.data.class_names), list(cfg.data.prompt_names),
                                  min_sentences=int(cfg.tse.min_sentences))
    assert [len(v) for v in example.values()] == [12, 12, 12]
    # an overlay after it keeps its classes; the example's _base_ after an overlay would undo it and is refused
    tiny = CONFIG_DIR / "test_tiny.yaml"
    stacked = load_config([EXAMPLE, tiny], defaults=CONFIG_DIR / "voc.yaml")
    assert list(stacked.data.class_names) == list(CUSTOM_CLASSES) and stacked.train.max_iters == 6
    with pytest.raises(ConfigError, match="lvc.start_iter: 3 .*-> 14000"):
        load_config([tiny, EXAMPLE], defaults=CONFIG_DIR / "voc.yaml")


@pytest.mark.slow
def test_the_section_runs_as_written(tmp_path, monkeypatch):
    for var in ("OPENAI_API_KEY", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    clone = tmp_path / "excel"  # the repository root as the doc's commands see it
    clone.mkdir()
    for name in ("tools", "scripts", "configs"):
        (clone / name).symlink_to(REPO / name)
    user_dataset(clone / "data" / "my_data")
    (clone / "tiny.yaml").write_text(TINY_OVERLAY)

    (script,) = blocks("bash")
    assert script.count(README_URL) == 1 and script.count(README_TRAIN) == 1
    server = FakeOpenAI(n=20, pattern=DEFAULT_PATTERN)
    try:
        script = script.replace(README_URL, server.base_url)
        script = script.replace(README_TRAIN, f"{README_TRAIN} --config tiny.yaml")
        env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
                   PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", NO_PROXY="127.0.0.1,localhost")
        proc = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=clone, env=env, capture_output=True,
                              text=True, timeout=900)
    finally:
        server.close()
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-6000:]

    assert "found 3 foreground classes (+ background) in the masks (values 1..3)" in proc.stdout
    lists = clone / "data" / "my_data" / "lists"
    assert len((lists / "train.txt").read_text().split()) == 10 and len((lists / "val.txt").read_text().split()) == 2
    kb = json.loads((clone / "data" / "my_data" / "knowledge_base.json").read_text())
    assert list(kb) == list(CUSTOM_CLASSES) and all(len(v) == 20 for v in kb.values())
    assert kb["kiwi"][0] == "a clean origami kiwi. it has visible part number 1 of this kiwi."
    assert {h["authorization"] for h in server.headers} == {"Bearer no-key"}  # no key was needed

    work = clone / "work_dirs" / "my_data"
    assert (work / "checkpoints" / "iter_0000004.pth").is_file()
    result = json.loads((work / "infer_seg_voc_val" / "results.json").read_text())
    assert result["num_images"] == 2
    assert list(result["scores"]["raw"]["iou"]) == ["background", *CUSTOM_CLASSES]
    predictions = json.loads((work / "predictions" / "predictions.json").read_text())
    assert len(predictions) == 12
    assert json.loads((work / "predictions" / "classes.json").read_text()) == {
        "0": "background", "1": "kiwi", "2": "apple", "3": "pear"}
