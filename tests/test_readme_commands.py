"""Every command in the README's code blocks (and in the docs it points to for training, inference, configs,
performance, a custom dataset and development) names a script that exists, flags that script defines, config
files that exist and config keys that configs/base.yaml defines. Reads text only: nothing runs."""
from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from excel.config import load_config

REPO = Path(__file__).resolve().parent.parent
DOCS = ["README.md", "docs/training.md", "docs/inference.md", "docs/configs.md", "docs/performance.md",
        "docs/custom_dataset.md", "docs/development.md"]
# programs that are not this repository's scripts; a command starting with anything else is a mistake
PROGRAMS = {"python", "python3", "bash", "torchrun", "sbatch", "pip", "conda", "git", "cd", "cp", "tensorboard",
            "ls", "tail", "zip", "...", "export"}
SHARED_FLAGS = [REPO / "excel" / "engine" / "cli.py", REPO / "excel" / "data" / "prepare.py"]
KEY = re.compile(r"^[a-z_]+(\.[a-z_0-9]+)+$")
_MISSING = object()


def shell_blocks(path: Path) -> list[str]:
    """The ``bash`` code blocks of a Markdown file (indented ones dedented)."""
    text = path.read_text(encoding="utf-8")
    return [re.sub(r"(?m)^" + indent, "", body)
            for indent, body in re.findall(r"(?ms)^( *)```bash\n(.*?)^\1```", text)]


def _without_comment(line: str) -> str:
    """``line`` up to a ``#`` that starts a shell comment (outside quotes, at a word's start)."""
    quote = ""
    for i, ch in enumerate(line):
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i]
    return line


def commands(block: str) -> list[list[str]]:
    """The block's simple commands as token lists: continuations joined, comments dropped, split at && ; |."""
    joined = re.sub(r"\\\n\s*", " ", block)
    out = []
    for line in joined.splitlines():
        line = re.sub(r"\$\([^)]*\)", "$SUBST", _without_comment(line))   # $(...) stands for its output
        lexer = shlex.shlex(line, posix=True, punctuation_chars="&|;")
        lexer.whitespace_split = True
        lexer.commenters = ""
        current: list[str] = []
        for token in lexer:
            if token in ("&&", "||", "|", ";", "&"):
                out.append(current)
                current = []
            else:
                current.append(token)
        out.append(current)
    return [c for c in out if c]


def _check(tokens: list[str], where: str, cfg) -> list[str]:
    """Problems with one command (empty: none)."""
    problems = []
    while tokens and re.match(r"^[A-Z_][A-Z0-9_]*=", tokens[0]):   # VAR=value before the program
        tokens = tokens[1:]
    if not tokens:
        return problems
    program = tokens[0]
    if program not in PROGRAMS:
        return [f"{where}: unknown program {program!r} in {' '.join(tokens)!r}"]
    script: Path | None = None
    for i, token in enumerate(tokens[1:], start=1):
        if re.search(r"\.(py|sh|sbatch)$", token) and not token.startswith(("/", "<", "$")):
            path = REPO / token
            if not path.is_file():
                problems.append(f"{where}: {token} does not exist")
            elif script is None:
                script = path
        elif token == "--config" and i + 1 < len(tokens):
            target = tokens[i + 1]
            if target.startswith("configs/") and not (REPO / target).is_file():
                problems.append(f"{where}: --config {target} does not exist")
        elif "=" in token and KEY.match(token.split("=", 1)[0]):
            key = token.split("=", 1)[0]
            if OmegaConf.select(cfg, key, default=_MISSING) is _MISSING:
                problems.append(f"{where}: config key {key} is not in configs/base.yaml")
        elif token.startswith("--") and script is not None and script.suffix == ".py":
            flag = token.split("=", 1)[0]
            sources = [script.read_text(encoding="utf-8")] + [p.read_text(encoding="utf-8") for p in SHARED_FLAGS]
            if not any(f'"{flag}"' in text for text in sources):
                problems.append(f"{where}: {script.relative_to(REPO)} has no flag {flag}")
    if program == "pip" and "-r" in tokens:
        target = tokens[tokens.index("-r") + 1]
        if not (REPO / target).is_file():
            problems.append(f"{where}: {target} does not exist")
    if program in ("python", "python3") and tokens[1:2] == ["-c"]:
        for module, name in re.findall(r"from (excel[\w.]*) import (\w+)", tokens[2]):
            source = REPO / (module.replace(".", "/") + ".py")
            if not source.is_file() or not re.search(rf"(?m)^def {name}\b", source.read_text(encoding="utf-8")):
                problems.append(f"{where}: {module}.{name} does not exist")
    return problems


@pytest.mark.parametrize("doc", DOCS)
def test_every_command_names_what_exists(doc):
    cfg = load_config("voc.yaml")
    found = [cmd for block in shell_blocks(REPO / doc) for cmd in commands(block)]
    assert doc != "README.md" or len(found) >= 15, "the README's code blocks were not found"
    problems = [p for cmd in found for p in _check(cmd, doc, cfg)]
    assert not problems, "\n".join(problems)


def test_the_checker_catches_mistakes():
    cfg = load_config("voc.yaml")
    block = """bash run_train.sh scripts/train_vok.py 0 1 29501 exp1 data.rooot=data/VOC2012
python tools/prepare_voc.py --root data/VOC2012 --sbd-rot data/SBD \\
    --config configs/ablations/no_such.yaml
make all
python -c "from excel.backbone.clip_loader import load_clap"
"""
    problems = [p for cmd in commands(block) for p in _check(cmd, "t", cfg)]
    assert problems == ["t: scripts/train_vok.py does not exist",
                        "t: config key data.rooot is not in configs/base.yaml",
                        "t: tools/prepare_voc.py has no flag --sbd-rot",
                        "t: --config configs/ablations/no_such.yaml does not exist",
                        "t: unknown program 'make' in 'make all'",
                        "t: excel.backbone.clip_loader.load_clap does not exist"]
    ok = "NNODES=2 bash run_train.sh scripts/train_voc.py 0 1 \"\" x data.root=/d && python tools/prepare_voc.py --root r"
    assert [p for cmd in commands(ok) for p in _check(cmd, "t", cfg)] == []
