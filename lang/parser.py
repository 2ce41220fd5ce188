"""Parse Ember source text into the AST of `ember.lang.ast`.

`parse(source, file)` is the only entry point. Every failure, whether a lark
lexer/parser error or a check done while building the AST, surfaces as a
`DSLError` pointing at the offending token, with a message that says what was
expected and what was found.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator
from pathlib import Path

from lark import Lark, Token
from lark.exceptions import (
    LarkError,
    UnexpectedCharacters,
    UnexpectedInput,
    UnexpectedToken,
    VisitError,
)

from ..ir.loc import DSLError, Loc
from . import ast
from .astbuild import AstBuilder, line_loc, token_loc
from .declarations import check_declarations

_GRAMMAR_PATH = Path(__file__).with_name("ember.lark")

_OPENERS = {"LPAR": "RPAR", "LSQB": "RSQB", "LBRACE": "RBRACE"}
_CLOSERS = {close: open_ for open_, close in _OPENERS.items()}


def parse(source: str, file: str) -> ast.Program:
    """Parse a whole Ember source file; raise `DSLError` on any syntax error."""
    lines = [line.rstrip("\r") for line in source.split("\n")]
    try:
        tree = _lark().parse(source)
        items = AstBuilder(file, lines).transform(tree)
    except VisitError as e:  # lark wraps exceptions raised inside transformer methods
        if isinstance(e.orig_exc, DSLError):
            raise e.orig_exc from None
        raise _internal_error(file, e.orig_exc) from None
    except _BracketError as e:
        raise DSLError(e.message, token_loc(file, lines, e.token, after=e.at_end)) from None
    except UnexpectedInput as e:
        raise _syntax_error(e, file, lines) from None
    except (LarkError, RecursionError) as e:
        raise _internal_error(file, e) from None
    program = ast.Program(items, file, source)
    check_declarations(program)
    return program


@functools.cache
def _lark() -> Lark:
    """The grammar compiled once per process (LALR tables take a while to build)."""
    return Lark(
        _GRAMMAR_PATH.read_text(),
        parser="lalr",
        # The post-lexer reads one token ahead, which a contextual lexer (whose
        # choice depends on the parser state) would not tolerate.
        lexer="basic",
        propagate_positions=True,
        maybe_placeholders=True,
        postlex=_SeparatorPostLex(),
    )


# ------------------------------------------------------------------ post-lexer


class _BracketError(Exception):
    """A bracket problem found by the post-lexer, reported before the parser sees it."""

    def __init__(self, message: str, token: Token, at_end: bool = False):
        super().__init__(message)
        self.message = message
        self.token = token
        self.at_end = at_end


class _SeparatorPostLex:
    """Turns newlines and ';' into the single `_SEP` token the grammar expects.

    Newlines inside (...) and [...] are insignificant, like in Python. Runs of
    separators collapse into one, and separators at the start and end of the
    file, right after '{' and right before '{' or '}' are dropped, so that
    blocks may span lines freely and a '{' may go on its own line (no
    statement or definition starts with '{', so nothing is lost). All state
    lives in the generator, so one instance is safe to share between parses.
    """

    always_accept = ("_NL", "SEMI")  # keeps lark from discarding these unused terminals

    def process(self, stream: Iterable[Token]) -> Iterator[Token]:
        open_brackets: list[Token] = []
        pending: Token | None = None  # a separator held back until we see what follows it
        last: Token | None = None
        for tok in stream:
            if tok.type in ("_NL", "SEMI"):
                in_parens = bool(open_brackets) and open_brackets[-1].type != "LBRACE"
                if (
                    (tok.type == "_NL" and in_parens)
                    or pending
                    or last is None
                    or last.type == "LBRACE"
                ):
                    continue
                pending = Token.new_borrow_pos("_SEP", tok.value, tok)
                continue
            _track_bracket(open_brackets, tok)
            if pending is not None and tok.type not in ("LBRACE", "RBRACE"):
                yield pending
            pending = None
            yield tok
            last = tok
        if open_brackets:
            raise _BracketError(
                _unclosed_message(open_brackets[-1]), last or open_brackets[-1], at_end=True
            )


def _track_bracket(open_brackets: list[Token], tok: Token) -> None:
    """Push openers, pop matching closers, and report a mismatched closer at once."""
    if tok.type in _OPENERS:
        open_brackets.append(tok)
    elif tok.type in _CLOSERS:
        if open_brackets and open_brackets[-1].type == _CLOSERS[tok.type]:
            open_brackets.pop()
        elif open_brackets and open_brackets[-1].type != "LBRACE":
            opener = open_brackets[-1]
            closer = _token_text(_OPENERS[opener.type])
            raise _BracketError(
                f"expected {closer} to close the '{opener.value}' opened at line {opener.line}, "
                f"found '{tok.value}'",
                tok,
            )
        else:
            raise _BracketError(f"unmatched '{tok.value}'", tok)


def _unclosed_message(opener: Token) -> str:
    closer = _token_text(_OPENERS[opener.type])
    what = "block" if opener.type == "LBRACE" else f"'{opener.value}'"
    return (
        f"unexpected end of file: expected {closer} to close the {what} "
        f"opened at line {opener.line}"
    )


# ----------------------------------------------------------------- error text

# Terminals whose spelling is not a fixed string, and lark's pseudo-terminals.
_TERMINAL_NAMES = {
    "NAME": "a name",
    "NUMBER": "a number",
    "STRING": "a string",
    "_SEP": "end of line",
    "$END": "end of file",
}

# Tokens that can start an expression / continue one; listed individually they
# would drown the message, so each complete set is summarised as one phrase.
# The two sets are never expected together ('-' is in both, unary vs binary).
_EXPR_START = frozenset({"NAME", "NUMBER", "STRING", "TRUE", "FALSE", "LPAR", "MINUS"})
_BINARY_OPS = frozenset(
    {"PLUS", "MINUS", "STAR", "SLASH", "DSLASH", "AT", "PERCENT", "POW"}
    | {"LT", "LE", "GT", "GE", "EQ", "NE"}
)
_POSTFIX_OPS = frozenset({"LPAR", "LSQB", "DOT"})  # call, index, attribute

_LAST = {"_SEP": 1, "$END": 2}

# For "expected '{' after ...": the keyword that opened the construct being parsed.
_BRACE_CONTEXT = {
    "DEF": "after the function signature",
    "FN": "after the function signature",
    "LAYER": "after the layer header",
    "MODEL": "after the model name",
    "FOR": "to start the loop body",
}


def _token_text(terminal: str) -> str:
    """A terminal as users see it: "'{'", "a name", "end of line", ..."""
    if terminal in _TERMINAL_NAMES:
        return _TERMINAL_NAMES[terminal]
    try:
        pattern = _lark().get_terminal(terminal).pattern
    except KeyError:
        return terminal
    return f"'{pattern.value}'" if pattern.type == "str" else terminal.lower()


def _found_text(tok: Token) -> str:
    if tok.type == "$END":
        return "end of file"
    if tok.type == "_SEP":
        return "';'" if tok.value == ";" else "end of line"
    return f"'{tok.value}'"


def _expected_text(expected: set[str]) -> str:
    """Summarise an LALR expected-token set as "a, b or c"."""
    phrases: list[str] = []
    remaining = set(expected)
    if _EXPR_START <= remaining:
        phrases.append("an expression")
        # after 'let x =' a loop may stand for the value too (`let hs = for ...`),
        # but "an expression" is what nearly everyone there meant
        remaining -= _EXPR_START | {"FOR"}
    elif _BINARY_OPS <= remaining:
        phrases.append("an operator")
        remaining -= _BINARY_OPS | _POSTFIX_OPS
    # A stable order: punctuation and keywords alphabetically, then end of line, end of file.
    rest = sorted(remaining, key=lambda t: (_LAST.get(t, 0), _token_text(t)))
    phrases += [_token_text(t) for t in rest]
    if len(phrases) == 1:
        return phrases[0]
    return ", ".join(phrases[:-1]) + " or " + phrases[-1]


def _syntax_error(e: UnexpectedInput, file: str, lines: list[str]) -> DSLError:
    if isinstance(e, UnexpectedToken) and (instead := _no_such_statement(e)) is not None:
        return DSLError(instead[0], token_loc(file, lines, instead[1]))
    if isinstance(e, UnexpectedToken):
        return DSLError(
            _unexpected_token_message(e),
            token_loc(file, lines, e.token, after=e.token.type == "$END"),
        )
    if isinstance(e, UnexpectedCharacters):
        char = lines[e.line - 1][e.column - 1] if 0 < e.line <= len(lines) else "?"
        return DSLError(
            f"unexpected character '{char}'", line_loc(file, lines, e.line, e.column, e.column + 1)
        )
    return DSLError(f"syntax error: {e}", line_loc(file, lines, e.line, e.column, e.column + 1))


# Python statements Ember does not have, read as names, and what to write instead.
_NO_SUCH_STATEMENT = {
    "if": "there is no 'if' in Ember: select values with where(cond, a, b)",
    "elif": "there is no 'if' in Ember: select values with where(cond, a, b)",
    "else": "there is no 'if' in Ember: select values with where(cond, a, b)",
    "while": "there is no 'while' in Ember: loop with 'for t in range(n) { ... }'",
}


def _no_such_statement(e: UnexpectedToken) -> tuple[str, Token] | None:
    """The keyword-like name (`if x > 0 {`, `} else {`) that caused the error,
    if any: what to write instead, and the name's token."""
    parser = getattr(e, "interactive_parser", None)
    stack = parser.parser_state.value_stack if parser is not None else []
    for tok in (e.token, stack[-1] if stack else None):
        if isinstance(tok, Token) and tok.type == "NAME" and tok.value in _NO_SUCH_STATEMENT:
            return _NO_SUCH_STATEMENT[tok.value], tok
    return None


def _unexpected_token_message(e: UnexpectedToken) -> str:
    tok = e.token
    expected = _acceptable_terminals(e)
    context = _brace_context(e) if "LBRACE" in expected else None
    if context:
        what = f"expected '{{' {context}"
    else:
        what = f"expected {_expected_text(expected)}"
    if tok.type == "$END":
        return f"unexpected end of file: {what}"
    message = f"{what}, found {_found_text(tok)}"
    if tok.type == "PLUS" and _EXPR_START <= expected:
        message += " (there is no unary '+')"
    return message


def _acceptable_terminals(e: UnexpectedToken) -> set[str]:
    """The terminals that would really let the parse continue.

    LALR merges lookahead sets across contexts, so `e.expected` may list tokens
    that are only valid elsewhere (e.g. '{' after an expression, because of
    `for x in expr {`). Feeding each candidate to a copy of the parser filters
    those out.
    """
    parser = getattr(e, "interactive_parser", None)
    if parser is None:
        return set(e.expected)
    return set(parser.accepts()) or set(e.expected)


def _brace_context(e: UnexpectedToken) -> str | None:
    """Which construct's '{' is missing, from the nearest keyword on the parser's stack."""
    parser = getattr(e, "interactive_parser", None)
    stack = parser.parser_state.value_stack if parser is not None else []
    for value in reversed(stack):
        if isinstance(value, Token) and value.type in _BRACE_CONTEXT:
            return _BRACE_CONTEXT[value.type]
    return None


def _internal_error(file: str, exc: BaseException) -> DSLError:
    if isinstance(exc, RecursionError):
        return DSLError("expression is nested too deeply", Loc(file, 1, 1))
    return DSLError(f"internal parser error: {type(exc).__name__}: {exc}", Loc(file, 1, 1))
