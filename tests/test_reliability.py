"""Reliability suite: interrupted training resumes exactly, bad input gives one clear error, outputs are atomic.

Most cases call the entry points' ``main(argv)`` in-process (imports are paid once); three run the real scripts
as subprocesses to check what a user sees: the exit status, one ``error:`` line, no traceback.
"""
from __future__ import annotations

import importlib.util
import json
import logging
import os
import random
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from excel.config import ConfigError, load_config
from excel.data.voc import DatasetError
from excel.engine.checkpoint import (CheckpointError, build_seeded_model, latest_checkpoint, load_checkpoint,
                                     load_trained_model, periodic_checkpoint_path, save_checkpoint)
from excel.errors import ExcelError, user_message
from excel.model import build_model
from excel.utils.io import atomic_save_png, atomic_torch_save, atomic_write_json

REPO = Path(__file__).resolve().parent.parent
TINY = str(REPO / "configs" / "test_tiny.yaml")
TINY_STACK = [str(REPO / "configs" / "voc.yaml"), TINY]  # test_tiny is an overlay (no _base_)


# ----------------------------------------------------------------------------- helpers
def _script_main(relpath: str):
    """``main`` of a script under scripts/ or tools/ (they are not packages)."""
    path = REPO / relpath
    spec = importlib.util.spec_from_file_location(f"_reliability_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module.main


@pytest.fixture(scope="module")
def train_main():
    return _script_main("scripts/train_voc.py")


@pytest.fixture(scope="module")
def infer_main():
    return _script_main("tools/infer_lam.py")


@pytest.fixture()
def isolated():
    """Run an entry point in-process: one torch thread (as the subprocesses), RNG and logging restored after."""
    threads = torch.get_num_threads()
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    np_state, py_state = np.random.get_state(), random.getstate()
    torch.set_num_threads(1)
    with torch.random.fork_rng(devices=[]):
        yield
    torch.set_num_threads(threads)
    np.random.set_state(np_state)
    random.setstate(py_state)
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
            handler.close()
    for handler in handlers:
        if handler not in root.handlers:
            root.addHandler(handler)
    root.setLevel(level)


def _run(relpath: str, args: list[str], extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run a script as a user would (single process, offline, one thread, like the in-process runs)."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", **(extra_env or {}))
    return subprocess.run([sys.executable, str(REPO / relpath), *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)


def _assert_clean_cli_error(proc: subprocess.CompletedProcess, *needles: str) -> str:
    """Exit status 2, exactly one ``error:`` line on stderr holding every needle, and no traceback anywhere."""
    assert proc.returncode == 2, f"exit status {proc.returncode}\nstderr:\n{proc.stderr[-3000:]}"
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, proc.stderr[-3000:]
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def _metrics(work_dir: Path) -> list[dict]:
    """The logged values of each iteration, without its wall time (step_s)."""
    rows = [json.loads(line) for line in (work_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [{k: v for k, v in row.items() if k != "step_s"} for row in rows]


def _copy_dataset(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _first_id(root: Path, split: str) -> str:
    return (root / "lists" / f"{split}.txt").read_text().split()[0]


# ----------------------------------------------------------------------------- interrupted training
def test_killed_training_resumes_with_the_identical_loss_sequence(mini_voc, tmp_path, train_main, isolated):
    common = ["--config", TINY, f"data.root={mini_voc}", "train.max_iters=6", "train.eval_iters=3",
              "train.keep_checkpoints=5", "data.num_workers=0"]
    killed, ref = tmp_path / "killed", tmp_path / "ref"

    # 1. A real process SIGKILLs itself right after iteration 5 (0-based 4): the last checkpoint is iteration 3.
    proc = _run("tests/_kill_after.py", ["5", *common, f"run.work_dir={killed}"])
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    assert sorted(p.name for p in (killed / "checkpoints").iterdir()) == ["iter_0000003.pth"]
    before_kill = _metrics(killed)
    assert [r["iter"] for r in before_kill] == [0, 1, 2, 3, 4]

    # 2. An uninterrupted run in another work dir.
    train_main(common + [f"run.work_dir={ref}"])
    reference = _metrics(ref)
    assert [r["iter"] for r in reference] == list(range(6))
    assert all(np.isfinite(r["loss"]) for r in reference)
    assert before_kill == reference[:5]  # the killed process saw exactly the same iterations

    # 3. Resume: iterations 3..5 are recomputed from the checkpoint and match bit for bit.
    train_main(common + [f"run.work_dir={killed}", "train.resume=auto"])
    resumed = _metrics(killed)
    assert [r["iter"] for r in resumed] == list(range(6))
    assert resumed == reference  # exact float equality of every loss, the lr and the LVC switch
    assert (killed / "val.jsonl").read_text() == (ref / "val.jsonl").read_text()
    a = load_checkpoint(periodic_checkpoint_path(killed, 6))
    b = load_checkpoint(periodic_checkpoint_path(ref, 6))
    assert a["iteration"] == b["iteration"] == 6 and a["model"].keys() == b["model"].keys()
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert torch.equal(a["optimizer"]["state"][0]["exp_avg"], b["optimizer"]["state"][0]["exp_avg"])

    # 4. A rerun of a finished run does no work: no iteration, no new checkpoint, the records untouched.
    files = {p.name: p.stat().st_mtime_ns for p in (killed / "checkpoints").iterdir()}
    metrics_text = (killed / "metrics.jsonl").read_text()
    train_main(common + [f"run.work_dir={killed}", "train.resume=auto"])
    assert (killed / "metrics.jsonl").read_text() == metrics_text
    assert {p.name: p.stat().st_mtime_ns for p in (killed / "checkpoints").iterdir()} == files


# ----------------------------------------------------------------------------- bad data
def _corrupt_jpeg(root: Path, name: str) -> Path:
    path = root / "JPEGImages" / f"{name}.jpg"
    path.write_bytes(b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + bytes(range(256)) * 3)  # a JPEG header, then junk
    return path


def _truncated_png(root: Path, name: str) -> Path:
    path = root / "SegmentationClassAug" / f"{name}.png"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def _missing_mask(root: Path, name: str) -> Path:
    path = root / "SegmentationClassAug" / f"{name}.png"
    path.unlink()
    return path


def _wrong_mask_size(root: Path, name: str) -> Path:
    path = root / "SegmentationClassAug" / f"{name}.png"
    with Image.open(path) as img:
        img.resize((img.width // 2, img.height + 3), Image.NEAREST).save(path)
    return path


def _label_out_of_range(root: Path, name: str) -> Path:
    path = root / "SegmentationClassAug" / f"{name}.png"
    with Image.open(path) as img:
        mask, palette = np.array(img), img.getpalette()
    mask[:4, :4] = 42  # VOC has 0..20 and 255
    out = Image.fromarray(mask, mode="P")
    out.putpalette(palette)
    out.save(path)
    return path


def _empty_split(root: Path, name: str) -> Path:
    path = root / "lists" / "val.txt"
    path.write_text("\n")
    return path


def _missing_image(root: Path, name: str) -> Path:
    path = root / "JPEGImages" / f"{name}.jpg"
    path.unlink()
    return path


@pytest.mark.parametrize("corrupt, words", [
    (_corrupt_jpeg, "cannot read image"),
    (_truncated_png, "cannot read label"),
    (_missing_mask, "label file not found"),
    (_wrong_mask_size, "but its image is"),
    (_label_out_of_range, "holds values [42]"),
    (_empty_split, "is empty"),
    (_missing_image, "does not exist"),
], ids=lambda v: getattr(v, "__name__", "")[1:] if callable(v) else "")
def test_bad_dataset_files_give_an_error_naming_the_file(mini_voc, tmp_path, infer_main, isolated, corrupt, words):
    root = _copy_dataset(mini_voc, tmp_path / "data")
    bad = corrupt(root, _first_id(root, "val"))
    with pytest.raises(DatasetError) as info:
        infer_main(["--config", TINY, f"data.root={root}", "infer.split=val", f"infer.output_dir={tmp_path / 'out'}"])
    message = str(info.value)
    assert str(bad) in message and words in message, message
    assert "\n" not in message


def test_corrupt_image_in_a_dataloader_worker_gives_one_clean_error_line(mini_voc, tmp_path):
    """A DataLoader worker wraps the error with its traceback: the CLI must still print only the message."""
    root = _copy_dataset(mini_voc, tmp_path / "data")
    bad = _corrupt_jpeg(root, _first_id(root, "train"))
    proc = _run("scripts/train_voc.py", ["--config", TINY, f"data.root={root}", f"run.work_dir={tmp_path / 'w'}",
                                         "data.num_workers=1", "train.max_iters=2",
                                         "data.check_files=false"])  # the worker meets the file, not the check
    line = _assert_clean_cli_error(proc, str(bad), "cannot read image")
    assert "DataLoader worker" not in line


def test_user_message_unwraps_a_dataloader_worker_error(mini_voc, tmp_path):
    from torch._utils import ExceptionWrapper  # what a DataLoader worker sends back to the main process

    from excel.data.voc import load_image

    root = _copy_dataset(mini_voc, tmp_path / "data")
    bad = _corrupt_jpeg(root, _first_id(root, "val"))
    with pytest.raises(DatasetError) as direct:
        try:
            load_image(bad)
        except DatasetError:
            ExceptionWrapper(where="in DataLoader worker process 0").reraise()
    wrapped = direct.value
    assert "Traceback" in str(wrapped) and str(wrapped).startswith("Caught DatasetError")
    assert user_message(wrapped) == str(wrapped.__context__)  # the original one-line message
    assert user_message(wrapped).startswith(f"cannot read image {bad}: ") and "\n" not in user_message(wrapped)
    with pytest.raises(FileNotFoundError) as info:
        try:
            raise FileNotFoundError("checkpoint not found: x.pth")
        except FileNotFoundError:
            ExceptionWrapper(where="in DataLoader worker process 1").reraise()
    assert user_message(info.value) == "checkpoint not found: x.pth"
    assert user_message(DatasetError("split list a.txt is empty")) == "split list a.txt is empty"


# ----------------------------------------------------------------------------- bad config
def test_unknown_config_key_is_named(tmp_path, train_main, infer_main):
    with pytest.raises(ConfigError, match=re.escape("'train.max_iterz'")):
        train_main(["--config", TINY, "train.max_iterz=3"])
    experiment = tmp_path / "exp.yaml"
    experiment.write_text("_base_: " + TINY + "\nmodel:\n  decoder:\n    depht: 2\n")
    with pytest.raises(ConfigError) as info:
        infer_main(["--config", str(experiment)])
    assert "depht" in str(info.value) and str(experiment) in str(info.value)
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")


# ----------------------------------------------------------------------------- checkpoints
def _checkpoint_for_81_classes(cfg, path: Path, with_meta: bool = True) -> Path:
    """A decoder checkpoint whose classifier predicts 81 classes (COCO + background) for a 21-class config."""
    model = build_seeded_model(cfg)
    state = model.decoder_state_dict()
    state["classifier.weight"] = torch.zeros(81, *state["classifier.weight"].shape[1:])
    state["classifier.bias"] = torch.zeros(81)
    if with_meta:
        return save_checkpoint(path, state, None, 10, cfg, meta={**model.meta(), "num_classes": 81})
    torch.save(state, path)  # a plain state dict: no metadata, only the shapes tell
    return path


def test_wrong_class_count_checkpoint_is_refused_with_the_mismatch(tiny_cfg, tmp_path, mini_voc, train_main, isolated):
    ckpt = _checkpoint_for_81_classes(tiny_cfg, tmp_path / "coco81.pth")
    with pytest.raises(CheckpointError) as info:
        load_trained_model(tiny_cfg, ckpt, torch.device("cpu"))
    message = str(info.value)  # counts in the user's terms, background apart
    assert "80 foreground classes (+ background), but the config has 20 foreground" in message and str(ckpt) in message

    plain = _checkpoint_for_81_classes(tiny_cfg, tmp_path / "plain81.pth", with_meta=False)
    with pytest.raises(CheckpointError) as info:
        load_trained_model(tiny_cfg, plain, torch.device("cpu"))
    assert "predicts 81 classes" in str(info.value) and str(plain) in str(info.value)

    # Training resume from such a file: the same clear error, not torch's load_state_dict size mismatch.
    with pytest.raises(CheckpointError) as info:
        train_main(["--config", TINY, f"data.root={mini_voc}", f"run.work_dir={tmp_path / 'w'}",
                    f"train.resume={ckpt}"])
    assert "80 foreground classes (+ background)" in str(info.value) and str(ckpt) in str(info.value)

    weights_only = tmp_path / "weights21.pth"  # fits the model, but holds no optimizer state nor iteration
    torch.save(build_seeded_model(tiny_cfg).decoder_state_dict(), weights_only)
    with pytest.raises(CheckpointError, match="holds model weights only"):
        train_main(["--config", TINY, f"data.root={mini_voc}", f"run.work_dir={tmp_path / 'w'}",
                    f"train.resume={weights_only}"])


def test_wrong_class_count_checkpoint_cli(tiny_cfg, tmp_path, mini_voc):
    ckpt = _checkpoint_for_81_classes(tiny_cfg, tmp_path / "coco81.pth")
    proc = _run("tools/infer_lam.py", ["--config", TINY, f"data.root={mini_voc}", f"infer.checkpoint={ckpt}",
                                       f"infer.output_dir={tmp_path / 'out'}"])
    _assert_clean_cli_error(proc, str(ckpt), "predicts 81 classes, i.e. 80 foreground classes (+ background)")


def test_absent_clip_weights_offline_say_what_to_pass(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cache = tmp_path / "empty_cache"
    cache.mkdir()
    cfg = load_config(TINY_STACK, ["model.clip.name=ViT-B-16", "model.clip.pretrained=openai",
                             f"model.clip.cache_dir={cache}"])
    with pytest.raises(ExcelError) as info:
        build_model(cfg)
    message = str(info.value)
    assert "model.clip.pretrained=/path/to/" in message and "openai" in message and "ViT-B-16" in message

    missing = tmp_path / "weights" / "ViT-B-16.pt"
    cfg = load_config(TINY_STACK, ["model.clip.name=ViT-B-16", f"model.clip.pretrained={missing}"])
    with pytest.raises((ExcelError, FileNotFoundError)) as info:
        build_model(cfg)
    assert str(missing) in str(info.value)


def test_bad_knowledge_base_or_cluster_bank_is_named(tmp_path):
    not_json = tmp_path / "kb.json"
    not_json.write_text("not json {")
    junk = tmp_path / "bank.pth"
    junk.write_bytes(b"junk")
    cases = [(f"tse.knowledge_base={tmp_path / 'missing.json'}", "missing.json"),
             (f"tse.knowledge_base={not_json}", str(not_json)),
             (f"tse.bank_file={tmp_path / 'missing.pth'}", "missing.pth"),
             (f"tse.bank_file={junk}", str(junk))]
    for override, needle in cases:
        cfg = load_config(TINY_STACK, [override, f"tse.cache_dir={tmp_path / 'cache'}"])
        with pytest.raises(ExcelError) as info:
            build_model(cfg)
        assert needle in str(info.value), (override, str(info.value))


# ----------------------------------------------------------------------------- atomic outputs
def _listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def _half_writer(real, target: Path, seen: list):
    """Wrap a writer ``real(obj, dest, ...)``: write half of what it would write to ``dest``, then fail.

    At the moment of failure (where a crash could happen) it records the target's bytes (None when absent).
    """
    def write(obj, dest, *args, **kwargs):
        scratch = Path(str(dest) + ".full")
        real(obj, scratch, *args, **kwargs)
        data = scratch.read_bytes()
        scratch.unlink()
        Path(dest).write_bytes(data[: len(data) // 2])
        seen.append(target.read_bytes() if target.exists() else None)
        raise OSError(28, "No space left on device")
    return write


def test_png_writer_never_leaves_a_half_written_file(tmp_path, monkeypatch):
    target = tmp_path / "labels" / "a.png"
    mask = (np.arange(48).reshape(6, 8) % 21).astype(np.uint8)
    seen: list = []
    real_save = Image.Image.save
    monkeypatch.setattr(Image.Image, "save", _half_writer(real_save, target, seen))
    with pytest.raises(OSError, match="No space"):
        atomic_save_png(mask, target)
    assert seen == [None] and not target.exists() and _listing(target.parent) == []

    monkeypatch.setattr(Image.Image, "save", real_save)
    atomic_save_png(mask, target)
    old = target.read_bytes()
    monkeypatch.setattr(Image.Image, "save", _half_writer(real_save, target, seen))
    with pytest.raises(OSError):
        atomic_save_png(np.zeros((6, 8), np.uint8), target)
    monkeypatch.undo()
    assert seen[-1] == old and target.read_bytes() == old and _listing(target.parent) == ["a.png"]
    assert np.array_equal(np.array(Image.open(target)), mask)


def test_checkpoint_and_json_writers_keep_the_old_file_on_failure(tmp_path, tiny_cfg, monkeypatch):
    state = {"w": torch.arange(6.0)}
    first = save_checkpoint(tmp_path, state, None, 3, tiny_cfg)
    old = first.read_bytes()
    seen: list = []
    real_save = torch.save
    monkeypatch.setattr(torch, "save", _half_writer(real_save, periodic_checkpoint_path(tmp_path, 6), seen))
    with pytest.raises(OSError):
        save_checkpoint(tmp_path, {"w": torch.zeros(6)}, None, 6, tiny_cfg)
    monkeypatch.setattr(torch, "save", _half_writer(real_save, first, seen))
    with pytest.raises(OSError):
        atomic_torch_save({"w": torch.zeros(6)}, first)  # over an existing file
    monkeypatch.undo()
    assert seen == [None, old]  # at the moment of the crash: no iteration-6 file, the old file intact
    assert _listing(tmp_path / "checkpoints") == [first.name] and first.read_bytes() == old
    assert latest_checkpoint(tmp_path) == first and torch.equal(load_checkpoint(first)["model"]["w"], state["w"])

    # A process killed mid-write can leave its temporary file: nothing mistakes it for a checkpoint.
    (tmp_path / "checkpoints" / ".iter_0000009.pth.x1y2.tmp").write_bytes(b"PK\x03\x04 half")
    assert latest_checkpoint(tmp_path) == first

    results = tmp_path / "results.json"
    atomic_write_json(results, {"miou": 0.5})
    real_write_text = Path.write_text

    def failing_write_text(self, text, *args, **kwargs):
        real_write_text(self, text[: len(text) // 2], *args, **kwargs)
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(Path, "write_text", failing_write_text)
    with pytest.raises(OSError):
        atomic_write_json(results, {"miou": 0.75, "skipped_existing": 4})
    monkeypatch.undo()
    assert json.loads(results.read_text()) == {"miou": 0.5}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".results.json")]


def test_infer_lam_rerun_skips_finished_images(mini_voc, tmp_path, infer_main, isolated):
    out = tmp_path / "out"
    argv = ["--config", TINY, f"data.root={mini_voc}", "infer.split=val", f"infer.output_dir={out}"]
    first = infer_main(argv)
    labels = out / "pseudo_labels"
    names = (mini_voc / "lists" / "val.txt").read_text().split()
    assert first["skipped_existing"] == 0 and _listing(labels) == sorted(f"{n}.png" for n in names)
    content = {p.name: p.read_bytes() for p in labels.iterdir()}
    stamps = {p.name: p.stat().st_mtime_ns for p in labels.iterdir()}

    # One label lost (e.g. the run was killed while writing it, leaving a temporary file), then a rerun.
    lost = f"{names[1]}.png"
    (labels / lost).unlink()
    (labels / f".{lost}.abc123.tmp").write_bytes(b"\x89PNG half")
    second = infer_main(argv)
    assert second["skipped_existing"] == len(names) - 1
    assert second["miou"] == first["miou"] and second["num_images"] == first["num_images"]
    assert (labels / lost).read_bytes() == content[lost]  # rewritten identically
    assert all((labels / n).stat().st_mtime_ns == t for n, t in stamps.items() if n != lost)  # others untouched
    assert json.loads((out / "results.json").read_text())["skipped_existing"] == len(names) - 1
