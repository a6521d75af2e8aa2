"""Config loading: merge order, struct mode, unknown keys named, every shipped file loads."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from excel.config import ConfigError, load_config, output_dir_of, resolve_device, work_dir_of

REPO = Path(__file__).resolve().parent.parent
CONFIGS = REPO / "configs"


def test_merge_order_base_file_overrides():
    cfg = load_config(CONFIGS / "voc.yaml", ["train.max_iters=7", "optim.lr=0.5"])
    assert cfg.train.max_iters == 7 and cfg.optim.lr == 0.5
    assert cfg.tse.num_clusters == 112          # from voc.yaml
    assert cfg.optim.weight_decay == 0.01       # from base.yaml
    assert len(cfg.data.class_names) == 20 and len(cfg.data.background_names) == 25


def test_coco_values_match_the_reference():
    cfg = load_config(CONFIGS / "coco.yaml")
    assert len(cfg.data.class_names) == len(cfg.data.prompt_names) == 80
    assert len(cfg.data.background_names) == 23
    assert cfg.cam.box_threshold == 0.88 and cfg.lvc.start_iter == 30000 and cfg.train.max_iters == 100000
    assert cfg.train.aff_label_switch_iter is None and cfg.infer.flip_at_unit_scale is True
    assert cfg.eval.split == "val_part" and cfg.infer.logit_scale == 0.2
    # the reference's COCO tool scores the dense-CRF labels; VOC keeps the CRF off unless asked
    assert cfg.infer.crf is True and load_config(CONFIGS / "voc.yaml").infer.crf is False


def test_unknown_key_in_override_is_named():
    with pytest.raises(ConfigError, match="train.max_iter'"):
        load_config(CONFIGS / "voc.yaml", ["train.max_iter=3"])


def test_unknown_key_in_file_is_named(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  clip:\n    nmae: ViT-B-16\n")
    with pytest.raises(ConfigError, match="nmae"):
        load_config(bad)


def test_missing_file_and_malformed_override(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="key=value"):
        load_config(None, ["train.max_iters"])


def test_base_chain_and_list_of_files(tmp_path):
    child = tmp_path / "child.yaml"
    child.write_text(f"_base_: {CONFIGS / 'coco.yaml'}\ntrain:\n  batch_size: 3\n")
    cfg = load_config(child)
    assert cfg.train.batch_size == 3 and cfg.tse.num_clusters == 224
    cfg2 = load_config([CONFIGS / "voc.yaml", CONFIGS / "ablations" / "no_tse.yaml"])
    assert cfg2.tse.enabled is False and cfg2.tse.num_clusters == 112


def test_struct_mode_rejects_new_attribute():
    cfg = load_config(CONFIGS / "voc.yaml")
    with pytest.raises(Exception):
        cfg.train.not_a_key = 1


def test_quirks_default_faithful():
    cfg = load_config(CONFIGS / "voc.yaml")
    assert all(v is False for v in cfg.quirks.values())


@pytest.mark.parametrize("ablation", sorted((CONFIGS / "ablations").glob("*.yaml")), ids=lambda p: p.stem)
@pytest.mark.parametrize("dataset", ["voc.yaml", "coco.yaml"])
def test_every_ablation_loads(ablation, dataset):
    cfg = load_config([CONFIGS / dataset, ablation])
    assert cfg.data.name in ("voc", "coco")


def test_resolve_device():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type in ("cpu", "cuda")


def test_value_types_are_checked():
    with pytest.raises(ConfigError, match="train.max_iters.*must be a number"):
        load_config(CONFIGS / "voc.yaml", ["train.max_iters=abc"])
    with pytest.raises(ConfigError, match="'model.clip'.*must be a section"):
        load_config(CONFIGS / "voc.yaml", ["model.clip=3"])
    with pytest.raises(ConfigError, match="infer.scales.*must be a list"):
        load_config(CONFIGS / "voc.yaml", ["infer.scales=1.0"])
    cfg = load_config(CONFIGS / "voc.yaml", ["train.aff_label_switch_iter=null", "tse.bank_file=/x.pth", "optim.lr=1e-4"])
    assert cfg.train.aff_label_switch_iter is None and cfg.tse.bank_file == "/x.pth" and cfg.optim.lr == 1e-4


def test_cli_accepts_overrides_before_and_after_config(tmp_path):
    """The shell wrappers put their own key=value arguments before the user's --config FILE and overrides."""
    from excel.engine.cli import parse_config

    cfg = parse_config(["infer.split=train", "--config", str(CONFIGS / "ablations" / "no_tse.yaml"),
                        "train.max_iters=9"], "test", "voc.yaml")
    assert cfg.infer.split == "train" and cfg.tse.enabled is False and cfg.train.max_iters == 9


def test_malformed_yaml_is_named(tmp_path):
    bad = tmp_path / "broken.yaml"
    bad.write_text("train:\n  max_iters: [1, 2\n")
    with pytest.raises(ConfigError, match="broken.yaml"):
        load_config(bad)


# ----------------------------------------------------------------------------- layering
def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.fixture()
def my_data(tmp_path):
    """An experiment file of one's own dataset, chained to voc.yaml as the README shows."""
    return _write(tmp_path / "my_data.yaml", f"_base_: {CONFIGS / 'voc.yaml'}\ndata:\n  name: custom\n"
                  "  class_names: [kiwi, apple, pear]\n  prompt_names: [kiwi fruit, apple, pear]\n")


def test_overlays_carry_no_base():
    for path in [CONFIGS / "test_tiny.yaml", *sorted((CONFIGS / "ablations").glob("*.yaml"))]:
        assert "_base_" not in (yaml.safe_load(path.read_text()) or {}), path


def test_overlay_after_an_experiment_keeps_both(my_data):
    cfg = load_config([my_data, CONFIGS / "test_tiny.yaml"], defaults=CONFIGS / "voc.yaml")
    assert list(cfg.data.class_names) == ["kiwi", "apple", "pear"] and cfg.data.name == "custom"
    assert cfg.train.max_iters == 6 and cfg.lvc.start_iter == 3 and cfg.model.clip.name == "excel-tiny"


def test_a_later_base_chain_may_not_undo_an_earlier_layer(my_data, tmp_path):
    # the overlay first, then a file whose _base_ (voc.yaml) would bring back the VOC schedule and workers
    with pytest.raises(ConfigError) as info:
        load_config([CONFIGS / "test_tiny.yaml", my_data], defaults=CONFIGS / "voc.yaml")
    message = str(info.value)
    assert message.startswith(f"{my_data}: its _base_ chain would silently undo")
    for key, old, new in [("train.max_iters", 6, 30000), ("lvc.start_iter", 3, 14000), ("data.num_workers", 0, 10),
                          ("run.work_dir", "'work_dirs/test_tiny'", "'work_dirs/voc'")]:
        assert f"{key}: {old} (configs/test_tiny.yaml) -> {new} (configs/voc.yaml)" in message
    assert "--allow-base-reset" in message
    # an old-style overlay with its own _base_ after the experiment would bring back VOC's classes
    old_tiny = _write(tmp_path / "old_tiny.yaml", f"_base_: {CONFIGS / 'voc.yaml'}\ntrain:\n  max_iters: 6\n")
    with pytest.raises(ConfigError, match=r"data.class_names: \['kiwi', 'apple', 'pear'\] .*-> \['aeroplane'"):
        load_config([my_data, old_tiny])
    # asked for: the later file wins, as a plain merge would
    cfg = load_config([CONFIGS / "test_tiny.yaml", my_data], defaults=CONFIGS / "voc.yaml", allow_base_reset=True)
    assert cfg.train.max_iters == 30000 and list(cfg.data.class_names) == ["kiwi", "apple", "pear"]


def test_base_chains_that_agree_or_replace_the_default_are_fine(my_data):
    # my_data's _base_ re-sets voc.yaml's keys to the values they already have
    cfg = load_config([CONFIGS / "voc.yaml", my_data])
    assert cfg.data.name == "custom" and cfg.train.max_iters == 30000
    # a tool's default config is no layer: a file chained to coco.yaml replaces voc.yaml freely
    coco_exp = _write(my_data.parent / "coco_exp.yaml", f"_base_: {CONFIGS / 'coco.yaml'}\n")
    assert load_config([coco_exp], defaults=CONFIGS / "voc.yaml").data.name == "coco"
    # a key the later file sets itself is ordinary layering
    _write(my_data.parent / "long.yaml", "train:\n  max_iters: 100\n")
    explicit = _write(my_data.parent / "explicit.yaml", "_base_: long.yaml\ntrain:\n  max_iters: 9\n")
    assert load_config([CONFIGS / "test_tiny.yaml", explicit], defaults=CONFIGS / "voc.yaml").train.max_iters == 9


def test_cli_flag_allows_a_base_reset(my_data):
    from excel.engine.cli import parse_config

    argv = ["--config", str(CONFIGS / "test_tiny.yaml"), "--config", str(my_data)]
    with pytest.raises(ConfigError, match="lvc.start_iter"):
        parse_config(argv, "test", "voc.yaml")
    assert parse_config([*argv, "--allow-base-reset"], "test", "voc.yaml").lvc.start_iter == 14000


# ----------------------------------------------------------------------------- shipped configs by name, layers in memory
def test_shipped_configs_load_by_name_from_any_directory(tmp_path, monkeypatch):
    from excel.config import CONFIG_DIR, find_config, shipped_configs

    monkeypatch.chdir(tmp_path)
    assert CONFIG_DIR == CONFIGS  # in a checkout the shipped configs are the top-level configs/ folder
    for name in ("voc.yaml", "voc", "configs/voc.yaml"):
        assert find_config(name) == CONFIGS / "voc.yaml"
    assert find_config("ablations/no_tse") == CONFIGS / "ablations" / "no_tse.yaml"
    assert load_config("coco.yaml").tse.num_clusters == 224
    assert "ablations/no_lvc.yaml" in shipped_configs() and "examples/custom.yaml" in shipped_configs()
    # a file of one's own chains to a shipped config by name; a local file of that name comes first
    (tmp_path / "mine.yaml").write_text("_base_: voc.yaml\ntrain:\n  batch_size: 2\n")
    mine = load_config("mine.yaml")
    assert mine.data.name == "voc" and mine.train.batch_size == 2 and mine.tse.num_clusters == 112
    (tmp_path / "voc.yaml").write_text("_base_: configs/coco.yaml\n")
    assert load_config("voc.yaml").data.name == "coco" and load_config("mine.yaml").data.name == "coco"


def test_an_unknown_name_lists_the_shipped_configs(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_config("vocc.yaml")
    message = str(info.value)
    assert message.startswith("config file not found: vocc.yaml; the shipped configs")
    assert all(name in message for name in ("base.yaml", "coco.yaml", "voc.yaml", "ablations/no_tse.yaml"))
    with pytest.raises(ConfigError, match=r"config file not found: .*nope.yaml$"):  # an absolute path stays itself
        load_config(tmp_path / "configs" / "voc.yaml".replace("voc", "nope"))
    (tmp_path / "child.yaml").write_text("_base_: no_such_parent.yaml\n")
    with pytest.raises(ConfigError, match=f"no_such_parent.yaml \\(looked in {tmp_path}\\); the shipped configs"):
        load_config(tmp_path / "child.yaml")


def test_dicts_and_dict_configs_are_layers():
    layer = OmegaConf.create({"train": {"max_iters": 11}, "run": {"work_dir": "work_dirs/${data.name}_run"}})
    OmegaConf.set_struct(layer, True)
    plain = {"_base_": "coco.yaml", "train": {"batch_size": 3}}
    cfg = load_config(["voc.yaml", layer], ["train.eval_iters=5"])
    assert cfg.train.max_iters == 11 and cfg.train.eval_iters == 5
    assert cfg.run.work_dir == "work_dirs/voc_run"  # the interpolation is kept until read
    cfg = load_config([plain], allow_base_reset=True)
    assert cfg.data.name == "coco" and cfg.train.batch_size == 3
    assert plain == {"_base_": "coco.yaml", "train": {"batch_size": 3}} and "_base_" not in layer  # untouched
    assert load_config(None, defaults=[{"train": {"max_iters": 2}}], allow_base_reset=True).train.max_iters == 2
    # a full config (a checkpoint's, or one built in code) layers too: what was loaded comes back
    again = load_config(load_config("coco.yaml", ["train.max_iters=13"]))
    assert again == load_config("coco.yaml", ["train.max_iters=13"])
    with pytest.raises(ConfigError, match=r"unknown config key 'train.max_iter' in config layer 2 \(given in memory\)"):
        load_config(["voc.yaml", {"train": {"max_iter": 3}}])
    with pytest.raises(ConfigError, match="train.batch_size.*must be a number"):
        load_config({"train": {"batch_size": "four"}})


def test_run_folders_follow_the_config():
    cfg = load_config("voc.yaml", ["run.work_dir=work_dirs/a", "infer.split=train"])
    assert work_dir_of(cfg) == Path("work_dirs/a")
    assert output_dir_of(cfg, "infer_lam") == Path("work_dirs/a/infer_lam_train")
    cfg.run.log_tag = "x"
    assert output_dir_of(cfg, "infer_seg_voc") == Path("work_dirs/a_x/infer_seg_voc_train")
    cfg.infer.output_dir = "elsewhere"
    assert output_dir_of(cfg, "infer_lam") == Path("elsewhere") and work_dir_of(cfg) == Path("work_dirs/a_x")
