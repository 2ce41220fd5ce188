"""A mutator of the example models, at token and at character level.

`mutants(seed)` yields (name, text, train) for edited copies of models/*.ember:
each applies one to three edits, drawn from token edits (delete, duplicate, swap,
replace with a token of the same file or with an "interesting" one: keywords,
builtins, dtypes, extreme numbers), number and name replacements that keep the
text parseable more often, and character edits (delete, insert a random
byte including control characters and non-ASCII, duplicate a span, truncate).
Token edits reach the parser's later stages and the type checker; character
edits mostly test the lexer and the error messages.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Iterator
from pathlib import Path

from ember.lang.builtins import BUILTINS

MODELS = Path(__file__).resolve().parents[2] / "models"
TOKEN = re.compile(r"\s+|#[^\n]*|[A-Za-z_]\w*|(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?"
                   r"|\*\*|//|<=|>=|==|!=|->|\.\.\.|.", re.S)
KEYWORDS = ("let", "def", "fn", "for", "in", "range", "return", "param", "layer", "model",
            "const", "None", "true", "false", "f32", "f64", "i32", "i64", "bool", "int", "float")
NUMBERS = ("0", "1", "-1", "2", "0.0", "1e309", "1e-400", "2147483648", "9223372036854775808",
           "10000000000000000000000000000000", "999999999", "3.5", "-0", "1e5", "17", "0.5")
PUNCT = ("(", ")", "[", "]", "{", "}", ",", ":", ";", "=", "@", "**", "-", "+", "*", "/", ".",
         "...", "->", "<", "==", "\n")
CHARS = "\x00\x01\x1b\x7f\t\r\n\"'\\`$%&|~^!?\u00a0\ufeff\u00e9\u4e2d\U0001f600\u202e"


def tokens(text: str) -> list[str]:
    return [m.group(0) for m in TOKEN.finditer(text)]


def _interesting(rng: random.Random) -> str:
    pool = rng.choice((KEYWORDS, NUMBERS, PUNCT, tuple(BUILTINS)))
    return rng.choice(pool)


def _token_edit(rng: random.Random, text: str) -> str:
    toks = tokens(text)
    real = [i for i, t in enumerate(toks) if not t.isspace()]
    i = rng.choice(real)
    kind = rng.randrange(6)
    if kind == 0:
        toks[i] = ""
    elif kind == 1:
        toks[i] = toks[i] + " " + toks[i]
    elif kind == 2:
        j = rng.choice(real)
        toks[i], toks[j] = toks[j], toks[i]
    elif kind == 3:
        toks[i] = toks[rng.choice(real)]
    elif kind == 4:
        toks[i] = _interesting(rng)
    else:
        toks[i] = toks[i] + " " + _interesting(rng)
    return "".join(toks)


def _number_edit(rng: random.Random, text: str) -> str:
    toks = tokens(text)
    nums = [i for i, t in enumerate(toks) if t[:1].isdigit()]
    if not nums:
        return _token_edit(rng, text)
    toks[rng.choice(nums)] = rng.choice(NUMBERS)
    return "".join(toks)


def _name_edit(rng: random.Random, text: str) -> str:
    """Another name of the file or a builtin in place of a name: the result often
    still parses, so this reaches the type checker and the later passes."""
    toks = tokens(text)
    names = [i for i, t in enumerate(toks) if t[:1].isalpha() or t[:1] == "_"]
    if not names:
        return _token_edit(rng, text)
    pool = [toks[i] for i in names] if rng.random() < 0.7 else list(BUILTINS)
    toks[rng.choice(names)] = rng.choice(pool)
    return "".join(toks)


def _char_edit(rng: random.Random, text: str) -> str:
    i = rng.randrange(len(text) + 1)
    kind = rng.randrange(5)
    if kind == 0:
        return text[:i] + text[i + 1:]
    if kind == 1:
        return text[:i] + rng.choice(CHARS) + text[i:]
    if kind == 2:
        return text[:i] + chr(rng.randrange(32, 127)) + text[i + 1:]
    if kind == 3:
        j = min(len(text), i + rng.randint(1, 40))
        return text[:j] + text[i:j] + text[j:]
    return text[:i]


EDITS: list[tuple[float, Callable[[random.Random, str], str]]] = [
    (4, _token_edit), (3, _number_edit), (3, _name_edit), (2, _char_edit)]


def mutate(rng: random.Random, text: str) -> str:
    weights, edits = [w for w, _ in EDITS], [e for _, e in EDITS]
    for _ in range(rng.randint(1, 3)):
        if text:
            text = rng.choices(edits, weights)[0](rng, text)
    return text


def mutants(seed: int) -> Iterator[tuple[str, str, bool]]:
    """An endless, reproducible stream of (model name, mutated text, train mode)."""
    rng = random.Random(seed)
    sources = sorted((p.stem, p.read_text()) for p in MODELS.glob("*.ember"))
    while True:
        name, text = rng.choice(sources)
        yield name, mutate(rng, text), rng.random() < 0.3
