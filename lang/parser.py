"""Parse Ember source text into the AST of `ember.lang.ast`.

`parse(source, file)` is the only entry point. Every failure, whether a lark
lexer/parser error or a check done while building the AST, surfaces as a
`DSLError` pointing at the offending token, with a message that says what was
expected and what was found.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from lark import Lark, Token, Transformer_NonRecursive, v_args
from lark.exceptions import (
    LarkError,
    UnexpectedCharacters,
    UnexpectedInput,
    UnexpectedToken,
    VisitError,
)
from lark.tree import Meta

from ..ir.loc import DSLError, Loc
from . import ast

_GRAMMAR_PATH = Path(__file__).with_name("ember.lark")

_OPENERS = {"LPAR": "RPAR", "LSQB": "RSQB", "LBRACE": "RBRACE"}
_CLOSERS = {close: open_ for open_, close in _OPENERS.items()}


def parse(source: str, file: str) -> ast.Program:
    """Parse a whole Ember source file; raise `DSLError` on any syntax error."""
    lines = [line.rstrip("\r") for line in source.split("\n")]
    try:
        tree = _lark().parse(source)
        items = _AstBuilder(file, lines).transform(tree)
    except VisitError as e:  # lark wraps exceptions raised inside transformer methods
        if isinstance(e.orig_exc, DSLError):
            raise e.orig_exc from None
        raise _internal_error(file, e.orig_exc) from None
    except _BracketError as e:
        raise DSLError(e.message, _token_loc(file, lines, e.token, after=e.at_end)) from None
    except UnexpectedInput as e:
        raise _syntax_error(e, file, lines) from None
    except (LarkError, RecursionError) as e:
        raise _internal_error(file, e) from None
    return ast.Program(items, file, source)


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
    "_SEP": "end of line",
    "$END": "end of file",
}

# Tokens that can start an expression / continue one; listed individually they
# would drown the message, so each complete set is summarised as one phrase.
# The two sets are never expected together ('-' is in both, unary vs binary).
_EXPR_START = frozenset({"NAME", "NUMBER", "TRUE", "FALSE", "LPAR", "MINUS"})
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
        remaining -= _EXPR_START
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
    if isinstance(e, UnexpectedToken):
        return DSLError(
            _unexpected_token_message(e),
            _token_loc(file, lines, e.token, after=e.token.type == "$END"),
        )
    if isinstance(e, UnexpectedCharacters):
        char = lines[e.line - 1][e.column - 1] if 0 < e.line <= len(lines) else "?"
        return DSLError(
            f"unexpected character '{char}'", _loc(file, lines, e.line, e.column, e.column + 1)
        )
    return DSLError(f"syntax error: {e}", _loc(file, lines, e.line, e.column, e.column + 1))


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


# ------------------------------------------------------------------ locations


def _loc(file: str, lines: list[str], line: int, col: int, end_col: int) -> Loc:
    source_line = lines[line - 1] if 0 < line <= len(lines) else ""
    return Loc(file, line, col, end_col, source_line)


def _token_loc(file: str, lines: list[str], tok: Token, after: bool = False) -> Loc:
    """The token's span, or with `after` the column just past it (for end of file)."""
    if after:
        line, col = tok.end_line or tok.line or 1, tok.end_column or tok.column or 1
        return _loc(file, lines, line, col, col + 1)
    line, col = tok.line or 1, tok.column or 1
    end_col = tok.end_column if tok.end_line == line and tok.end_column else len(
        lines[line - 1]) + 1
    return _loc(file, lines, line, col, end_col)


# ---------------------------------------------------------------- AST builder


@dataclass(frozen=True)
class _Kwarg:
    """`name=value` inside a call, before `call_args` splits args from kwargs."""

    name: str
    value: ast.Expr
    loc: Loc


@v_args(meta=True)
class _AstBuilder(Transformer_NonRecursive):
    """Builds AST nodes bottom-up from lark's parse tree (one method per rule/alias).

    Non-recursive so that long operator chains (`a + b + ...`, which nest
    deeply) cannot hit Python's recursion limit.
    """

    def __init__(self, file: str, lines: list[str]):
        super().__init__()
        self.file = file
        self.lines = lines

    # -- locations

    def _tok(self, tok: Token) -> Loc:
        return _token_loc(self.file, self.lines, tok)

    def _meta(self, meta: Meta) -> Loc:
        """The rule's span; one that continues on later lines is cut at its first line's end."""
        if meta.end_line == meta.line:
            end_col = meta.end_column
        else:
            end_col = len(self.lines[meta.line - 1].rstrip()) + 1
        return _loc(self.file, self.lines, meta.line, meta.column, end_col)

    def _span(self, start: Loc, end: Loc) -> Loc:
        end_col = end.end_col if end.line == start.line else len(start.source_line.rstrip()) + 1
        return Loc(start.file, start.line, start.col, end_col, start.source_line)

    def _quote(self, meta: Meta) -> str:
        """The rule's source text quoted, with a trailing space, if it fits on one line."""
        if meta.end_line != meta.line:
            return ""
        return f"'{self.lines[meta.line - 1][meta.column - 1 : meta.end_column - 1]}' "

    # -- top level and definitions

    def start(self, meta: Meta, items: list) -> tuple:
        return tuple(item for item in items if item is not None)

    def const_def(self, meta: Meta, children: list) -> ast.ConstDef:
        name, value = children
        return ast.ConstDef(str(name), value, self._tok(name))

    def fn_def(self, meta: Meta, children: list) -> ast.FnDef:
        name, args, ret, body = children
        return ast.FnDef(str(name), args or (), ret, body, self._tok(name))

    def args(self, meta: Meta, children: list) -> tuple[ast.Arg, ...]:
        return tuple(children)

    def arg(self, meta: Meta, children: list) -> ast.Arg:
        name, type_ann = children
        return ast.Arg(str(name), type_ann, self._tok(name))

    def ret_type(self, meta: Meta, children: list) -> tuple[ast.TypeAnn, ...]:
        return tuple(children)

    def layer_def(self, meta: Meta, children: list) -> ast.LayerDef:
        name, hparams, members = children
        return ast.LayerDef(str(name), hparams or (), members, False, self._tok(name))

    def model_def(self, meta: Meta, children: list) -> ast.LayerDef:
        name, members = children
        return ast.LayerDef(str(name), (), members, True, self._tok(name))

    def layer_body(self, meta: Meta, children: list) -> tuple:
        return tuple(member for member in children if member is not None)

    def param_def(self, meta: Meta, children: list) -> ast.ParamDef:
        name, type_ann, init = children
        if init is not None and not isinstance(init, ast.Name | ast.Call):
            found = init.loc.source_line[init.loc.col - 1 : init.loc.end_col - 1]
            raise DSLError(
                "expected an initializer name or call such as 'zeros' or 'normal(0.02)', "
                f"found '{found}'",
                init.loc,
            )
        return ast.ParamDef(str(name), type_ann, init, self._tok(name))

    def sublayer_def(self, meta: Meta, children: list) -> ast.SubLayerDef:
        name, layer, call_args, count = children
        args, kwargs = call_args or ((), ())
        return ast.SubLayerDef(str(name), str(layer), args, kwargs, count, self._tok(name))

    # -- types

    def tensor_type(self, meta: Meta, children: list) -> ast.TypeAnn:
        name, dims = children
        if name in ast.SCALAR_DTYPES:
            raise DSLError(
                f"type '{name}' takes no dimensions; write just '{name}'", self._meta(meta)
            )
        self._check_dtype(name, ast.TENSOR_DTYPES)
        return ast.TypeAnn(str(name), dims or (), self._meta(meta))

    def scalar_type(self, meta: Meta, children: list) -> ast.TypeAnn:
        (name,) = children
        if name in ast.TENSOR_DTYPES:
            raise DSLError(
                f"expected dimensions after '{name}', "
                f"e.g. '{name}[N]' (or '{name}[]' for a scalar)",
                self._tok(name),
            )
        self._check_dtype(name, ast.SCALAR_DTYPES)
        return ast.TypeAnn(str(name), None, self._tok(name))

    def _check_dtype(self, name: Token, allowed: tuple[str, ...]) -> None:
        if name not in allowed:
            choices = ", ".join(ast.TENSOR_DTYPES + ast.SCALAR_DTYPES)
            raise DSLError(f"unknown type '{name}'; expected one of {choices}", self._tok(name))

    # -- statements

    def block(self, meta: Meta, children: list) -> tuple:
        return tuple(stmt for stmt in children if stmt is not None)

    def let_stmt(self, meta: Meta, children: list) -> ast.Let:
        targets, values = children
        return ast.Let(targets, _single_or_tuple(values), True, self._meta(meta))

    def assign_stmt(self, meta: Meta, children: list) -> ast.Let:
        targets, values = children
        return ast.Let(targets, _single_or_tuple(values), False, self._meta(meta))

    def targets(self, meta: Meta, children: list) -> tuple[str, ...]:
        return tuple(str(name) for name in children)

    def return_stmt(self, meta: Meta, children: list) -> ast.Return:
        (values,) = children
        return ast.Return(values.items, self._meta(meta))

    def for_stmt(self, meta: Meta, children: list) -> ast.For:
        var, iterable, body = children
        header = _loc(self.file, self.lines, meta.line, meta.column, meta.column + 1)
        return ast.For(str(var), iterable, body, self._span(header, iterable.loc))

    def exprs(self, meta: Meta, children: list) -> ast.TupleExpr:
        return ast.TupleExpr(tuple(children), self._meta(meta))

    def dim_list(self, meta: Meta, children: list) -> tuple:
        return tuple(children)

    # -- expressions

    def compare(self, meta: Meta, children: list) -> ast.BinOp:
        if len(children) > 3:
            raise DSLError(
                f"chained comparison {self._quote(meta)}is not allowed; use parentheses",
                self._tok(children[3]),
            )
        lhs, op, rhs = children
        return ast.BinOp(str(op), lhs, rhs, self._meta(meta))

    def binop(self, meta: Meta, children: list) -> ast.BinOp:
        lhs, op, rhs = children
        return ast.BinOp(str(op), lhs, rhs, self._meta(meta))

    def neg(self, meta: Meta, children: list) -> ast.UnaryOp:
        _, operand = children
        return ast.UnaryOp("-", operand, self._meta(meta))

    def call(self, meta: Meta, children: list) -> ast.Call:
        fn, call_args = children
        args, kwargs = call_args or ((), ())
        return ast.Call(fn, args, kwargs, self._meta(meta))

    def call_args(self, meta: Meta, children: list) -> tuple[tuple, tuple]:
        args: list[ast.Expr] = []
        kwargs: list[tuple[str, ast.Expr]] = []
        for child in children:
            if isinstance(child, _Kwarg):
                kwargs.append((child.name, child.value))
            elif kwargs:
                raise DSLError("positional argument after keyword argument", child.loc)
            else:
                args.append(child)
        return tuple(args), tuple(kwargs)

    def kwarg(self, meta: Meta, children: list) -> _Kwarg:
        name, value = children
        return _Kwarg(str(name), value, self._tok(name))

    def index(self, meta: Meta, children: list) -> ast.Index:
        value, items = children
        return ast.Index(value, items, self._meta(meta))

    def subscripts(self, meta: Meta, children: list) -> tuple:
        return tuple(self._subscript(child) for child in children)

    def _subscript(self, child: object) -> ast.IndexItem:
        if isinstance(child, Token):  # the grammar keeps only '...' and 'None' as bare tokens here
            node = ast.EllipsisItem if child.type == "ELLIPSIS" else ast.NewAxis
            return node(self._tok(child))
        return child  # type: ignore[return-value]

    def slice(self, meta: Meta, children: list) -> ast.Slice:
        start, stop, step = children
        return ast.Slice(start, stop, step, self._meta(meta))

    def attr(self, meta: Meta, children: list) -> ast.Attr:
        value, name = children
        return ast.Attr(value, str(name), self._meta(meta))

    def tuple_expr(self, meta: Meta, children: list) -> ast.TupleExpr:
        return ast.TupleExpr(tuple(children), self._meta(meta))

    def number(self, meta: Meta, children: list) -> ast.Num:
        (tok,) = children
        text = str(tok)
        value: int | float = float(text) if any(c in text for c in ".eE") else int(text)
        return ast.Num(value, self._tok(tok))

    def true(self, meta: Meta, children: list) -> ast.Bool:
        return ast.Bool(True, self._tok(children[0]))

    def false(self, meta: Meta, children: list) -> ast.Bool:
        return ast.Bool(False, self._tok(children[0]))

    def name(self, meta: Meta, children: list) -> ast.Name:
        (tok,) = children
        return ast.Name(str(tok), self._tok(tok))


def _single_or_tuple(values: ast.TupleExpr) -> ast.Expr:
    """`a = x` assigns x itself; `a, b = x, y` assigns the tuple (x, y)."""
    return values.items[0] if len(values.items) == 1 else values
