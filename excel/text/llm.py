"""Knowledge bases written by an LLM (algorithm.md §3.1) through any OpenAI-compatible chat API.

For every class the model is asked for ``n`` attribute sentences (prompt: ``tse.llm.prompt_template``, placeholders
``{class_name}``, ``{n}``, ``{other_classes}``). Each answer is parsed (numbered or bulleted lines, or a JSON list)
and validated: exactly ``n`` distinct sentences, none naming another class as a whole word, each within CLIP's 77
tokens once prefixed. An invalid answer is re-asked (``tse.llm.max_invalid_retries``); transient API errors are
retried with exponential backoff (``tse.llm.max_retries``, ``tse.llm.backoff_base``). Finished classes are written
as they complete (atomic JSON), and a rerun resumes: classes already in the file are never asked again.

The ``openai`` client is an optional dependency: ``pip install "excel[llm]"`` (or ``pip install openai``).
"""
from __future__ import annotations

import json
import logging
import os
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

from excel.errors import ExcelError
from excel.text.knowledge import CONTEXT_LENGTH, count_tokens
from excel.utils.io import atomic_write_json

if TYPE_CHECKING:
    import openai

log = logging.getLogger(__name__)

API_KEY_ENV = "OPENAI_API_KEY"
LOCAL_KEY_PLACEHOLDER = "no-key"  # sent to a base-URL server when $OPENAI_API_KEY is unset
_ITEM_MARK = re.compile(r"^\s*(?:\(?\d{1,3}[.):\]]|[-*\u2022])\s+")


class LLMToolError(ExcelError, RuntimeError):
    """Writing a knowledge base cannot go on: bad input, authentication, exhausted retries, no openai package."""


def import_openai():
    """The ``openai`` module, or an :class:`LLMToolError` that says how to install it."""
    try:
        import openai
    except ImportError as err:
        raise LLMToolError('writing a knowledge base needs the openai package, an optional dependency of excel: '
                           'pip install "excel[llm]" (or pip install openai)') from err
    return openai


# ------------------------------------------------------------------------------------- answer handling

def parse_answer(text: str) -> list[str]:
    """Items of an LLM answer: a JSON list of strings (optionally in a ```json fence, or the single list value of
    a JSON object), else the numbered/bulleted lines (other lines dropped), else every non-empty line."""
    body = re.sub(r"^\s*```(?:json)?\s*|\s*```\s*$", "", text.strip())
    try:
        data = json.loads(body)
    except json.JSONDecodeError:
        data = None
    if isinstance(data, dict):
        lists = [v for v in data.values() if isinstance(v, list)]
        data = lists[0] if len(lists) == 1 else None
    if isinstance(data, list):
        return [str(x).strip() for x in data if str(x).strip()]
    lines = [ln for ln in text.splitlines() if ln.strip()]
    marked = [_ITEM_MARK.sub("", ln).strip() for ln in lines if _ITEM_MARK.match(ln)]
    return marked if marked else [ln.strip() for ln in lines]


def clean_attribute(item: str) -> str:
    """Strip quotes and spaces, lower-case a leading capital ("It has" -> "it has"), end with a full stop."""
    s = item.strip().strip('"\u201c\u201d').strip()
    if len(s) > 1 and s[0].isupper() and s[1].islower():
        s = s[0].lower() + s[1:]
    if s and s[-1].isalnum():
        s += "."
    return s


def _mentions(sentence: str, name: str) -> bool:
    words = r"\s+".join(re.escape(w) for w in name.split())
    return re.search(rf"(?<![\w-]){words}(?![\w-])", sentence, flags=re.IGNORECASE) is not None


def validate_attributes(items: Sequence[str], n: int, class_name: str, other_classes: Sequence[str],
                        prefix: str) -> list[str]:
    """Problems with one class's cleaned attribute sentences (empty list = valid)."""
    problems = []
    if len(items) != n:
        problems.append(f"expected exactly {n} sentences, got {len(items)}")
    seen: dict[str, int] = {}
    for i, s in enumerate(items, 1):
        if len(re.findall(r"[A-Za-z]+", s)) < 3:
            problems.append(f"item {i} is not a sentence: {s!r}")
            continue
        own_removed = re.sub(rf"(?<![\w-]){re.escape(class_name)}(?![\w-])", " ", s, flags=re.IGNORECASE)
        named = [o for o in other_classes if _mentions(own_removed, o)]
        if named:
            problems.append(f"item {i} names other classes {named}: {s!r}")
        key = " ".join(s.lower().split())
        if key in seen:
            problems.append(f"item {i} repeats item {seen[key]}: {s!r}")
        seen.setdefault(key, i)
        tokens = count_tokens(prefix + s)
        if tokens > CONTEXT_LENGTH:
            problems.append(f"item {i} is too long ({tokens} CLIP tokens with the prefix, limit {CONTEXT_LENGTH})")
    return problems


# ---------------------------------------------------------------------------------------------- requests

def request_with_retries(client: "openai.OpenAI", messages: list[dict[str, str]], llm: Any,
                         sleep: Callable[[float], None] = time.sleep) -> str:
    """One chat completion, retrying transient errors with delays backoff_base * 2**attempt (capped)."""
    openai = import_openai()
    transient_errors = (openai.APIConnectionError, openai.RateLimitError, openai.InternalServerError)  # timeouts too
    for attempt in range(int(llm.max_retries) + 1):
        try:
            resp = client.chat.completions.create(model=llm.model, messages=messages,
                                                  temperature=float(llm.temperature))
            return resp.choices[0].message.content or ""
        except openai.AuthenticationError as err:
            raise LLMToolError(f"authentication failed at {client.base_url} (HTTP {err.status_code}); check the API "
                               f"key in the environment variable {API_KEY_ENV} and --base-url") from err
        except (*transient_errors, openai.APIStatusError) as err:
            status = getattr(err, "status_code", None)
            transient = isinstance(err, transient_errors) or status in (408, 409) or (status or 0) >= 500
            if not transient:
                raise LLMToolError(f"the API at {client.base_url} refused the request (HTTP {status}): {err}") from err
            if attempt == int(llm.max_retries):
                raise LLMToolError(f"giving up after {attempt + 1} attempts at {client.base_url}: "
                                   f"{type(err).__name__}: {err}") from err
            delay = min(float(llm.backoff_max), float(llm.backoff_base) * 2 ** attempt)
            log.warning("transient API error (%s); retry %d/%d in %.2fs", type(err).__name__, attempt + 1,
                        int(llm.max_retries), delay)
            sleep(delay)
    raise AssertionError("unreachable")


def ask_class(client: "openai.OpenAI", llm: Any, class_name: str, other_classes: Sequence[str], n: int,
              prefix: str, sleep: Callable[[float], None] = time.sleep) -> list[str]:
    """``n`` validated attribute sentences for one class (re-asking on invalid answers)."""
    prompt = llm.prompt_template.format(class_name=class_name, n=n, other_classes=", ".join(other_classes))
    messages = [{"role": "system", "content": llm.system_prompt}, {"role": "user", "content": prompt}]
    problems: list[str] = []
    for attempt in range(int(llm.max_invalid_retries) + 1):
        answer = request_with_retries(client, messages, llm, sleep=sleep)
        items = [clean_attribute(x) for x in parse_answer(answer)]
        problems = validate_attributes(items, n, class_name, other_classes, prefix)
        if not problems:
            return items
        log.warning("class '%s': invalid answer (attempt %d): %s", class_name, attempt + 1, "; ".join(problems[:5]))
        messages = messages + [
            {"role": "assistant", "content": answer},
            {"role": "user", "content": "That answer cannot be used: " + "; ".join(problems[:10])
             + f". Answer again with exactly {n} numbered sentences and nothing else."},
        ]
    raise LLMToolError(f"class '{class_name}': no valid answer after {int(llm.max_invalid_retries) + 1} tries; "
                       f"last problems: {'; '.join(problems[:5])}")


def load_existing(path: Path, class_names: Sequence[str]) -> dict[str, list[str]]:
    """Finished classes of a previous run (an existing ``--out`` file), for resuming."""
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise LLMToolError(f"cannot resume from {path}: not valid JSON ({err}); move it away to start afresh") from err
    if not isinstance(data, dict) or not all(isinstance(v, list) for v in data.values()):
        raise LLMToolError(f"cannot resume from {path}: expected a JSON object {{class: [sentences]}}")
    extra = [k for k in data if k not in class_names]
    if extra:
        log.warning("%s holds classes not in the class list (kept as they are): %s", path, extra)
    return data


def read_class_names(classes_file: str | os.PathLike | None, cfg: Any,
                     config_names: Sequence[str] = ()) -> list[str]:
    """The class list: one name a line of ``classes_file``, else ``data.class_names`` of ``cfg`` (loaded from
    ``config_names``, named in the messages). Refuses an empty list and duplicates."""
    if classes_file:
        path = Path(classes_file)
        if not path.is_file():
            raise LLMToolError(f"--classes-file {path}: file not found")
        names = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
        source = str(path)
    else:
        names = list(cfg.data.class_names)
        source = f"data.class_names of {', '.join(map(str, config_names)) or 'base.yaml'}"
    if not names:
        raise LLMToolError(f"no class names in {source}; give --config with data.class_names or --classes-file")
    dupes = sorted({x for x in names if names.count(x) > 1})
    if dupes:
        raise LLMToolError(f"duplicate class names in {source}: {dupes}")
    return names


def make_client(llm: Any, base_url: str | None = None) -> "openai.OpenAI":
    """An OpenAI client for ``base_url`` (default ``tse.llm.base_url``, else OpenAI's). The key comes from
    $OPENAI_API_KEY only; a base-URL server without one gets a placeholder key (a local server needs none)."""
    openai = import_openai()
    base_url = base_url or llm.base_url or None
    api_key = os.environ.get(API_KEY_ENV)
    if not api_key and base_url is None:
        raise LLMToolError(f"the environment variable {API_KEY_ENV} is not set; export your API key "
                           f"(it is never read from a flag or a file), or give --base-url for a local server")
    if not api_key:
        api_key = LOCAL_KEY_PLACEHOLDER
        log.info("%s is not set: sending the placeholder key %r to %s (a local server needs none)", API_KEY_ENV,
                 api_key, base_url)
    return openai.OpenAI(api_key=api_key, base_url=base_url, max_retries=0, timeout=float(llm.timeout))


def write_knowledge_base(client: "openai.OpenAI", llm: Any, classes: Sequence[str], n: int, prefix_template: str,
                         out: str | os.PathLike, sleep: Callable[[float], None] = time.sleep) -> dict[str, list[str]]:
    """Ask for the classes not yet in ``out`` and write each finished class at once; returns the knowledge base
    ``{class: [prefix_template.format(class) + attribute, ...]}``, classes in list order (others kept after)."""
    from tqdm import tqdm

    if n < 1:
        raise LLMToolError(f"-n/--num-sentences must be at least 1, got {n}")
    out = Path(out)
    kb = load_existing(out, classes)
    todo = [c for c in classes if c not in kb]
    log.info("%d classes, %d already in %s, asking %s at %s for %d", len(classes), len(classes) - len(todo), out,
             llm.model, client.base_url, len(todo))
    with tqdm(total=len(classes), initial=len(classes) - len(todo), desc="classes", unit="class") as bar:
        for name in todo:
            prefix = prefix_template.format(name)
            others = [c for c in classes if c != name]
            attrs = ask_class(client, llm, name, others, n, prefix, sleep=sleep)
            kb[name] = [prefix + a for a in attrs]
            ordered = {c: kb[c] for c in classes if c in kb}
            ordered.update({k: v for k, v in kb.items() if k not in ordered})
            atomic_write_json(out, ordered)
            kb = ordered
            bar.update(1)
    return kb
