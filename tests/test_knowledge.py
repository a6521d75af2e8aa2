"""Knowledge-base loading and validation (algorithm.md §3.1)."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from excel.backbone import load_tokenizer
from excel.config import load_config
from excel.text.knowledge import (KnowledgeBaseError, count_tokens, load_knowledge_base,
                                  match_classes, normalize_name)

REPO = Path(__file__).resolve().parent.parent
AUTHORS_COCO_SPELLING = {"motorcycle": "motorbike", "airplane": "aeroplane", "couch": "sofa",
                         "potted plant": "pottedplant", "dining table": "diningtable", "tv": "tvmonitor"}


def write_kb(path: Path, kb) -> Path:
    path.write_text(json.dumps(kb))
    return path


def test_loads_in_class_order(tmp_path):
    kb = {"dog": ["a clean origami dog. it barks."],
          "cat": ["a clean origami cat. it purrs.", "a clean origami cat. x."]}
    out = load_knowledge_base(write_kb(tmp_path / "kb.json", kb), ["cat", "dog"])
    assert list(out) == ["cat", "dog"] and out["cat"] == kb["cat"]


def test_authors_coco_spellings_match_our_class_names(tmp_path):
    cfg = load_config(REPO / "configs" / "coco.yaml")
    names, prompts = list(cfg.data.class_names), list(cfg.data.prompt_names)
    keys = [AUTHORS_COCO_SPELLING.get(n, n) for n in names]
    kb = {k: [f"a clean origami {k}. it is there."] for k in reversed(keys)}
    out = load_knowledge_base(write_kb(tmp_path / "coco.json", kb), names, prompts)
    assert list(out) == names
    for ours, theirs in AUTHORS_COCO_SPELLING.items():
        assert out[ours] == [f"a clean origami {theirs}. it is there."]
    assert out["hair drier"] == ["a clean origami hair drier. it is there."]


def test_matching_rule_steps():
    # 1. class name; 2. comma part / first word of the prompt; 3. normalised form
    assert match_classes(["tv", "tvmonitor"], ["tv"], ["tvmonitor screen"]) == ["tv"]
    assert match_classes(["tvmonitor"], ["tv"], ["tvmonitor screen"]) == ["tvmonitor"]
    assert match_classes(["blowdrier"], ["hair drier"], ["hairdrier,blowdrier"]) == ["blowdrier"]
    assert match_classes(["Dining_Table"], ["dining table"]) == ["Dining_Table"]
    assert normalize_name(" Potted-plant_x ") == "pottedplantx"
    with pytest.raises(KnowledgeBaseError, match="classes 'sofa' and 'couch' both match the key 'sofa'"):
        match_classes(["sofa"], ["sofa", "couch"], ["sofa", "sofa"])
    with pytest.raises(KnowledgeBaseError, match="prompt_names has 1 entries but class_names has 2"):
        match_classes(["a", "b"], ["a", "b"], ["a"])


@pytest.mark.parametrize("kb, message", [
    ({"cat": ["a clean origami cat. x."]}, "no entry for class 'dog'"),
    ({"cat": ["a clean origami cat. x."], "dog": []}, "class 'dog' has an empty sentence list"),
    ({"cat": ["a clean origami cat. x."], "dog": "a dog"}, "class 'dog' must map to a list"),
    ({"cat": ["a clean origami cat. x.", 3], "dog": ["y"]}, "class 'cat' sentence 1 must be a non-empty string"),
    ({"cat": ["ok"], "dog": ["a clean origami dog. " + "fur " * 80]}, "class 'dog' sentence 0 has 87 CLIP tokens"),
])
def test_validation_errors_name_file_and_class(tmp_path, kb, message):
    path = write_kb(tmp_path / "bad.json", kb)
    with pytest.raises(KnowledgeBaseError, match=message) as info:
        load_knowledge_base(path, ["cat", "dog"])
    assert str(path) in str(info.value)


def test_bad_files(tmp_path):
    with pytest.raises(KnowledgeBaseError, match="not found"):
        load_knowledge_base(tmp_path / "none.json", ["cat"])
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(KnowledgeBaseError, match="broken.json is not valid UTF-8 JSON"):
        load_knowledge_base(tmp_path / "broken.json", ["cat"])
    with pytest.raises(KnowledgeBaseError, match="must hold a JSON object"):
        load_knowledge_base(write_kb(tmp_path / "list.json", [["a"]]), ["cat"])


def test_context_limit_boundary(tmp_path):
    # "a" is one BPE token: 75 of them plus start/end make exactly 77
    fits, too_long = " ".join(["a"] * 75), " ".join(["a"] * 76)
    assert count_tokens(fits) == 77 and count_tokens(too_long) == 78
    load_knowledge_base(write_kb(tmp_path / "ok.json", {"cat": [fits]}), ["cat"])
    with pytest.raises(KnowledgeBaseError, match="78 CLIP tokens"):
        load_knowledge_base(write_kb(tmp_path / "long.json", {"cat": [too_long]}), ["cat"])


def test_count_tokens_agrees_with_tokenizer():
    tokenizer = load_tokenizer("excel-tiny")
    for s in ["a clean origami aeroplane. it has wings that extend out from both sides of the main body.",
              "Its SURFACE is glossy, smooth & bright!"]:
        ids = tokenizer([s])[0]
        assert count_tokens(s, tokenizer) == int((ids != 0).sum()) == count_tokens(s)


@pytest.mark.parametrize("config", ["voc.yaml", "coco.yaml"])
def test_shipped_knowledge_bases(config):
    cfg = load_config(REPO / "configs" / config)
    path = REPO / cfg.tse.knowledge_base
    if not path.is_file():
        pytest.skip(f"{path} is not written yet")
    kb = load_knowledge_base(path, list(cfg.data.class_names), list(cfg.data.prompt_names))
    assert len(kb) == len(cfg.data.class_names)
    for sentences in kb.values():
        assert len(sentences) == 20
        assert len(set(sentences)) == 20
        assert all(s.startswith("a clean origami ") for s in sentences)


def test_a_class_with_too_few_sentences_is_refused(tmp_path):
    kb = {"kiwi": [f"a clean origami kiwi. it has trait {i}." for i in range(20)],
          "pear": [f"a clean origami pear. it has trait {i}." for i in range(3)]}
    path = write_kb(tmp_path / "kb.json", kb)
    with pytest.raises(KnowledgeBaseError) as info:
        load_knowledge_base(path, ["kiwi", "pear"], min_sentences=10)
    message = str(info.value)
    assert message.startswith(f"{path}: 1 class(es) have fewer than tse.min_sentences=10 sentences: 'pear' has 3 ")
    assert "'kiwi'" not in message
    assert list(load_knowledge_base(path, ["kiwi", "pear"], min_sentences=3)) == ["kiwi", "pear"]


def test_every_fallback_match_logs_the_key_it_used(caplog):
    caplog.set_level(logging.WARNING, logger="excel.text.knowledge")
    keys = ["green", "kiwi", "Dining_Table", "blowdrier"]
    assert match_classes(keys, ["flimp", "kiwi", "dining table", "hair drier"],
                         ["green square flimp", "kiwi fruit", "dining table", "hairdrier,blowdrier"]) == keys
    logged = [r.getMessage() for r in caplog.records]
    assert len(logged) == 3  # 'kiwi' is the class name itself: nothing to report
    assert "class 'flimp' uses the key 'green' (the first word of the prompt name 'green square flimp')" in logged[0]
    assert "class 'dining table' uses the key 'Dining_Table' (the normalised form of the class name " \
           "('diningtable'))" in logged[1]
    assert "class 'hair drier' uses the key 'blowdrier' (a part of the prompt name 'hairdrier,blowdrier')" in logged[2]
