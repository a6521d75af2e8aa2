"""tools/build_knowledge_base.py (and excel.text.llm behind it) against a real local HTTP server speaking the OpenAI
chat-completions protocol."""
from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

import pytest
from _fake_llm import FakeOpenAI
from _tools import load_tool

from excel.engine.cli import run_cli
from excel.text import llm

tool = load_tool("build_knowledge_base")

CLASSES = ["cat", "dog", "hot dog"]
PROMPT = "CLASS=<{class_name}> N={n} OTHERS=<{other_classes}>"


@pytest.fixture()
def server(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    fake = FakeOpenAI(n=3)
    yield fake
    fake.close()


def run_tool(server: FakeOpenAI, out: Path, classes_file: Path, *extra: str):
    sleeps: list[float] = []
    argv = ["--classes-file", str(classes_file), "--out", str(out), "--base-url", server.base_url,
            "--model", "fake-model", "-n", str(server.n), f"tse.llm.prompt_template='{PROMPT}'",
            "tse.llm.backoff_base=0.001", "tse.llm.backoff_max=0.01", "tse.llm.max_retries=2",
            "tse.llm.max_invalid_retries=2", *extra]
    kb = tool.main(argv, sleep=sleeps.append)
    return kb, sleeps


@pytest.fixture()
def classes_file(tmp_path):
    path = tmp_path / "classes.txt"
    path.write_text("\n".join(CLASSES) + "\n")
    return path


def test_success_path_writes_prefixed_sentences(server, tmp_path, classes_file):
    out = tmp_path / "kb.json"
    kb, sleeps = run_tool(server, out, classes_file)
    on_disk = json.loads(out.read_text())
    assert on_disk == kb
    assert list(on_disk) == CLASSES
    assert on_disk["cat"][0] == "a clean origami cat. it has visible part number 1 of this cat."
    assert all(len(v) == 3 for v in on_disk.values())
    assert server.counts == Counter({"cat": 1, "dog": 1, "hot dog": 1})
    assert sleeps == []
    # the request carried the model, the system prompt and the filled template
    body = server.bodies[0]
    assert body["model"] == "fake-model"
    assert body["messages"][0]["role"] == "system"
    assert body["messages"][1]["content"] == "CLASS=<cat> N=3 OTHERS=<dog, hot dog>"
    # "hot dog" mentions "dog" only inside its own name: accepted without re-asking
    assert server.counts["hot dog"] == 1


def test_malformed_answer_is_reasked(server, tmp_path, classes_file):
    server.script["dog"] = [(200, "1. it has fur.\n2. it has fur."),  # too few, duplicate
                            (200, "1. it has a tail like a cat\n2. it barks loud at night\n3. it has four legs")]
    out = tmp_path / "kb.json"
    kb, _ = run_tool(server, out, classes_file)
    assert server.counts["dog"] == 3
    assert kb["dog"] == [f"a clean origami dog. it has visible part number {i} of this dog." for i in (1, 2, 3)]
    # the re-ask carries the conversation and says what was wrong
    reask = [b["messages"] for b in server.bodies if b["messages"][1]["content"].startswith("CLASS=<dog>")][-1]
    assert [m["role"] for m in reask] == ["system", "user", "assistant", "user", "assistant", "user"]
    assert "names other classes ['cat']" in reask[-1]["content"]


def test_invalid_answers_exhaust_limit(server, tmp_path, classes_file):
    server.script["cat"] = [(200, "nothing useful")] * 3
    with pytest.raises(llm.LLMToolError, match="class 'cat': no valid answer after 3 tries"):
        run_tool(server, tmp_path / "kb.json", classes_file)
    assert server.counts["cat"] == 3


def test_server_error_is_retried_with_backoff(server, tmp_path, classes_file):
    server.script["cat"] = [(500, "boom"), (503, "busy")]
    kb, sleeps = run_tool(server, tmp_path / "kb.json", classes_file)
    assert server.counts["cat"] == 3
    assert sleeps == pytest.approx([0.001, 0.002])
    assert len(kb["cat"]) == 3


def test_timeout_is_retried(server, tmp_path, classes_file):
    server.script["dog"] = [(0, "")]
    kb, sleeps = run_tool(server, tmp_path / "kb.json", classes_file, "tse.llm.timeout=0.2")
    assert server.counts["dog"] == 2 and sleeps == pytest.approx([0.001])
    assert len(kb["dog"]) == 3


def test_auth_failure_names_base_url_and_env_var(server, tmp_path, classes_file):
    server.script["cat"] = [(401, "Incorrect API key provided")]
    with pytest.raises(llm.LLMToolError) as info:
        run_tool(server, tmp_path / "kb.json", classes_file)
    msg = str(info.value)
    assert "OPENAI_API_KEY" in msg and f"127.0.0.1:{server.server.server_address[1]}" in msg
    assert server.counts["cat"] == 1  # not retried
    assert not (tmp_path / "kb.json").exists()


def test_missing_key_is_a_clear_error(server, tmp_path, classes_file, monkeypatch):
    """Without --base-url the key is needed (the hosted API): the error comes before any request."""
    monkeypatch.delenv("OPENAI_API_KEY")
    with pytest.raises(llm.LLMToolError, match="OPENAI_API_KEY is not set.*or give --base-url for a local server"):
        tool.main(["--classes-file", str(classes_file), "--out", str(tmp_path / "kb.json")])
    assert sum(server.counts.values()) == 0 and not (tmp_path / "kb.json").exists()


def test_a_base_url_server_needs_no_key(server, tmp_path, classes_file, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY")
    kb, _ = run_tool(server, tmp_path / "kb.json", classes_file)
    assert list(kb) == CLASSES
    assert {h.get("authorization") for h in server.headers} == {f"Bearer {llm.LOCAL_KEY_PLACEHOLDER}"}


def test_resume_after_interruption_never_reasks_finished(server, tmp_path, classes_file):
    out = tmp_path / "kb.json"
    server.script["dog"] = [(500, "down")] * 3  # more failures than max_retries=2 -> the run stops at "dog"
    with pytest.raises(llm.LLMToolError, match="giving up after 3 attempts"):
        run_tool(server, out, classes_file)
    partial = json.loads(out.read_text())
    assert list(partial) == ["cat"]
    kb, _ = run_tool(server, out, classes_file)
    assert list(kb) == CLASSES
    assert kb["cat"] == partial["cat"]
    assert server.counts == Counter({"cat": 1, "dog": 4, "hot dog": 1})


def test_resume_from_preexisting_file_in_class_order(server, tmp_path, classes_file):
    out = tmp_path / "kb.json"
    out.write_text(json.dumps({"hot dog": ["a clean origami hot dog. it is kept."]}))
    kb, _ = run_tool(server, out, classes_file)
    assert list(kb) == CLASSES
    assert kb["hot dog"] == ["a clean origami hot dog. it is kept."]
    assert server.counts == Counter({"cat": 1, "dog": 1})


def test_parse_answer_formats():
    assert llm.parse_answer("Here you go:\n1. a b c\n2) d e f\n\n- g h i\nThanks") == ["a b c", "d e f", "g h i"]
    assert llm.parse_answer('```json\n["x y z", "u v w"]\n```') == ["x y z", "u v w"]
    assert llm.parse_answer('{"attributes": ["x y z"]}') == ["x y z"]
    assert llm.parse_answer("plain one\nplain two") == ["plain one", "plain two"]


def test_validate_attributes_rules():
    prefix = "a clean origami cat. "
    ok = ["it has whiskers.", "its ears are pointed.", "it has soft fur."]
    assert llm.validate_attributes(ok, 3, "cat", ["dog", "hot dog"], prefix) == []
    probs = llm.validate_attributes(["it chases a dog.", "its ears are pointed.", "Its ears are  pointed.", "ok"],
                                     3, "cat", ["dog", "hot dog"], prefix)
    text = " | ".join(probs)
    assert "expected exactly 3" in text and "names other classes ['dog']" in text
    assert "repeats item 2" in text and "item 4 is not a sentence" in text
    # whole words only: "dogged" is not "dog"
    assert llm.validate_attributes(["it is dogged and calm."], 1, "cat", ["dog"], prefix) == []
    long = "it has " + " ".join(["whiskers"] * 80) + "."
    assert "too long" in " ".join(llm.validate_attributes([long], 1, "cat", [], prefix))
    assert llm.clean_attribute(' "It has a tail" ') == "it has a tail."


def test_configs_layer_like_the_other_tools(server, tmp_path):
    """--config is repeatable: the class list and tse.llm.* come from the layered files, key=value on top."""
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text("data:\n  class_names: [cat, dog, hot dog]\ntse:\n  llm:\n    model: overlay-model\n"
                       "    num_sentences: 3\n")
    out = tmp_path / "kb.json"
    tool.main(["--config", "voc.yaml", "--config", str(overlay), "--out", str(out), "--base-url", server.base_url,
               f"tse.llm.prompt_template='{PROMPT}'"])
    assert list(json.loads(out.read_text())) == CLASSES
    assert {b["model"] for b in server.bodies} == {"overlay-model"}
    assert server.bodies[0]["messages"][1]["content"] == "CLASS=<cat> N=3 OTHERS=<dog, hot dog>"


def test_without_openai_the_error_names_the_extra(tmp_path, classes_file, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "openai", None)  # import openai now raises ImportError
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    argv = ["--classes-file", str(classes_file), "--out", str(tmp_path / "kb.json")]
    with pytest.raises(llm.LLMToolError, match=r'pip install "excel\[llm\]" \(or pip install openai\)'):
        tool.main(argv)
    assert run_cli(tool.main, argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: writing a knowledge base needs the openai package") and err.count("\n") == 1
    assert not (tmp_path / "kb.json").exists()
