"""Knowledge bases for Text Semantic Enrichment (algorithm.md §3.1).

A knowledge base is a JSON object ``{plain class name: [sentence, ...]}``; each sentence reads
"a clean origami {class}. {attribute}". Both this project's files (``excel/knowledge/*.json``) and the
authors' files load with :func:`load_knowledge_base`, which returns the sentences keyed by the dataset's
``class_names`` in label order, so the row order of a cluster bank's flags always follows the config.

Key matching rule (the authors' COCO file spells some classes differently from ``coco.yaml``): for dataset
class ``i`` with name ``class_names[i]`` and prompt ``prompt_names[i]``, the first of these that is a key of
the file is used:

1. the class name itself (``"bus"``);
2. each comma-separated part of the prompt name, then its first word
   (``"hairdrier,blowdrier"`` -> ``hairdrier``, ``blowdrier``; ``"tvmonitor screen"`` -> ``tvmonitor``);
3. the normalised form (lower case, spaces, underscores and hyphens removed) of any of the above, compared
   with the normalised keys (``"dining table"`` -> ``diningtable``).

Two classes resolving to the same key, or a class resolving to none, is an error naming the file and class.
Any match other than the class name itself is logged with the key it used (a first word such as ``green`` for
a prompt ``green square flimp`` may well be another thing). Keys that match no class are ignored (logged once).
A class with fewer sentences than ``min_sentences`` (``tse.min_sentences``) is refused.
"""
from __future__ import annotations

import functools
import json
import logging
import os
import re
from pathlib import Path
from typing import Any, Sequence

from excel.errors import ExcelError

log = logging.getLogger(__name__)

CONTEXT_LENGTH = 77  # CLIP text context, start and end tokens included


class KnowledgeBaseError(ExcelError, ValueError):
    """A knowledge-base file or its content is not what the project expects."""


@functools.lru_cache(maxsize=1)
def _default_bpe():
    """open_clip's CLIP BPE tokenizer (the same vocabulary for every OpenAI-style CLIP text tower)."""
    from open_clip.tokenizer import SimpleTokenizer

    return SimpleTokenizer()


def count_tokens(text: str, tokenizer: Any = None) -> int:
    """Number of CLIP tokens of ``text`` including the start and end tokens.

    ``tokenizer`` needs an ``encode(str) -> list[int]`` method (open_clip's ``SimpleTokenizer``); None uses
    open_clip's default CLIP BPE.
    """
    tok = tokenizer if tokenizer is not None and hasattr(tokenizer, "encode") else _default_bpe()
    return len(tok.encode(text)) + 2


def normalize_name(name: str) -> str:
    """Lower case with spaces, underscores and hyphens removed: ``"Dining table"`` -> ``"diningtable"``."""
    return re.sub(r"[\s_\-]+", "", name).lower()


def _candidates(class_name: str, prompt_name: str | None) -> list[tuple[str, str]]:
    """The names tried for one class, in order, each with how it was derived (for the log of a fallback)."""
    names = [(class_name, "the class name")]
    if prompt_name:
        parts = [p.strip() for p in prompt_name.split(",") if p.strip()]
        how = f"the prompt name {prompt_name!r}" if len(parts) == 1 else f"a part of the prompt name {prompt_name!r}"
        names.extend((p, how) for p in parts)
        if parts:
            names.append((parts[0].split()[0], f"the first word of the prompt name {prompt_name!r}"))
    seen: list[tuple[str, str]] = []
    for n, how in names:
        if n not in [m for m, _ in seen]:
            seen.append((n, how))
    return seen


def match_classes(keys: Sequence[str], class_names: Sequence[str], prompt_names: Sequence[str] | None = None,
                  source: str = "knowledge base") -> list[str]:
    """For each dataset class, the key of ``keys`` it matches under the module's rule (same order as
    ``class_names``). Raises KnowledgeBaseError naming ``source`` and the class on a missing or shared key."""
    if prompt_names is not None and len(prompt_names) not in (0, len(class_names)):
        raise KnowledgeBaseError(f"{source}: prompt_names has {len(prompt_names)} entries but class_names has "
                                 f"{len(class_names)}; they must align")
    prompts: Sequence[str | None] = prompt_names if prompt_names else [None] * len(class_names)
    key_set = set(keys)
    by_norm: dict[str, str] = {}
    for k in keys:
        by_norm.setdefault(normalize_name(k), k)
    matched: list[str] = []
    owner: dict[str, str] = {}
    for name, prompt in zip(class_names, prompts):
        cands = _candidates(name, prompt)
        found = next(((c, how) for c, how in cands if c in key_set), None)
        if found is None:
            found = next(((by_norm[normalize_name(c)], f"the normalised form of {how} ({normalize_name(c)!r})")
                          for c, how in cands if normalize_name(c) in by_norm), None)
        if found is None:
            raise KnowledgeBaseError(f"{source}: no entry for class '{name}' (tried {[c for c, _ in cands]} and "
                                     f"their normalised forms); the file has keys {sorted(keys)}")
        key, how = found
        if key != name:
            log.warning("%s: class '%s' uses the key '%s' (%s); check that it describes the same thing", source,
                        name, key, how)
        if key in owner:
            raise KnowledgeBaseError(f"{source}: classes '{owner[key]}' and '{name}' both match the key '{key}'")
        owner[key] = name
        matched.append(key)
    unused = sorted(key_set - set(matched))
    if unused:
        log.info("%s: %d keys match no dataset class and are ignored: %s", source, len(unused), unused)
    return matched


def validate_sentences(knowledge: dict[str, list[str]], source: str = "knowledge base", tokenizer: Any = None,
                       context_length: int = CONTEXT_LENGTH) -> None:
    """Check every class has a non-empty list of non-empty strings, each within CLIP's context."""
    for cls, sentences in knowledge.items():
        if not isinstance(sentences, list):
            raise KnowledgeBaseError(f"{source}: class '{cls}' must map to a list of sentences, "
                                     f"got {type(sentences).__name__}")
        if not sentences:
            raise KnowledgeBaseError(f"{source}: class '{cls}' has an empty sentence list")
        for i, s in enumerate(sentences):
            if not isinstance(s, str) or not s.strip():
                raise KnowledgeBaseError(f"{source}: class '{cls}' sentence {i} must be a non-empty string, got {s!r}")
            n = count_tokens(s, tokenizer)
            if n > context_length:
                raise KnowledgeBaseError(f"{source}: class '{cls}' sentence {i} has {n} CLIP tokens, more than the "
                                         f"context of {context_length}: {s!r}")


def read_knowledge_json(path: str | os.PathLike) -> dict[str, Any]:
    """The raw JSON object of a knowledge-base file (errors name the file)."""
    path = Path(path)
    if not path.is_file():
        raise KnowledgeBaseError(f"knowledge-base file not found: {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise KnowledgeBaseError(f"knowledge-base file {path} is not valid UTF-8 JSON: {err}") from err
    if not isinstance(data, dict):
        raise KnowledgeBaseError(f"knowledge-base file {path} must hold a JSON object {{class: [sentences]}}, "
                                 f"got {type(data).__name__}")
    return data


def check_sentence_counts(knowledge: dict[str, list[str]], min_sentences: int, source: str = "knowledge base") -> None:
    """Refuse a class with fewer than ``min_sentences`` sentences (the message names the class and its count)."""
    short = {c: len(v) for c, v in knowledge.items() if isinstance(v, list) and len(v) < min_sentences}
    if short:
        listed = ", ".join(f"'{c}' has {n}" for c, n in short.items())
        raise KnowledgeBaseError(f"{source}: {len(short)} class(es) have fewer than tse.min_sentences={min_sentences} "
                                 f"sentences: {listed} (TSE clusters the sentences of every class; the shipped files "
                                 f"have 20 per class). Add sentences, or lower tse.min_sentences if that is intended")


def load_knowledge_base(path: str | os.PathLike, class_names: Sequence[str],
                        prompt_names: Sequence[str] | None = None, tokenizer: Any = None,
                        min_sentences: int = 1) -> dict[str, list[str]]:
    """Read and validate a knowledge-base JSON file (ours or the authors').

    Args:
        path: JSON file ``{plain class name: [sentence, ...]}``.
        class_names: dataset class names in label order (``cfg.data.class_names``).
        prompt_names: optional prompt names aligned with ``class_names`` (used for key matching, see module doc).
        tokenizer: object with ``encode(str) -> list[int]`` to count tokens; None = open_clip's CLIP BPE.
        min_sentences: the fewest sentences a class may have (``tse.min_sentences``).
    Returns:
        ``{class_names[i]: sentences}`` in label order.
    Raises:
        KnowledgeBaseError: missing file, bad JSON, a class without entry, an empty list, a non-string
        sentence or one longer than 77 CLIP tokens, fewer than ``min_sentences`` sentences for a class (the
        message names the file, class and sentence or count).
    """
    if not class_names:
        raise KnowledgeBaseError(f"no class names given to load the knowledge base {path} (data.class_names is empty)")
    data = read_knowledge_json(path)
    keys = match_classes(list(data), class_names, prompt_names, source=str(path))
    knowledge = {name: data[key] for name, key in zip(class_names, keys)}
    validate_sentences(knowledge, source=str(path), tokenizer=tokenizer)
    check_sentence_counts(knowledge, int(min_sentences), source=str(path))
    return knowledge
