"""The `ember` command: `ember compile` prints a stage, `ember run` executes.

Exit codes: 0 ok; 1 a user error (located, printed without a traceback);
2 a usage error (argparse); 3 an internal compiler error; 130 interrupted
(`ember train` saves a checkpoint first).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import sys
import traceback
from collections.abc import Sequence
from typing import NoReturn

from ember.ir.loc import DSLError
from ember.passes.optim import OPTIMIZERS
from ember.passes.precision import PRECISIONS
from ember.runtime.files import ensure_distinct, printable

from . import commands, train_cmd
from .backends import BACKENDS, DOT_PRECISIONS

# Dims are sizes of real arrays: 2**40 along one axis is already far beyond any
# machine's memory (that is reported with the bytes needed, once the model is
# known), so a larger value is a typo such as B=10**30, refused right away.
MAX_DIM = 2**40
INT = re.compile(r"[0-9]+")  # ASCII only: str.isdigit accepts '²', which int() rejects


def _dims(text: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for part in filter(None, text.split(",")):
        name, _, value = (p.strip() for p in part.partition("="))
        if not name.isidentifier() or not INT.fullmatch(value):
            raise argparse.ArgumentTypeError(
                f"expected NAME=INT[,NAME=INT...], found '{printable(part)}'")
        if name in out:
            raise argparse.ArgumentTypeError(f"{name} is given twice ({name}={out[name]} and "
                                             f"{name}={printable(value)})")
        if len(value) > 15 or int(value) > MAX_DIM:
            raise argparse.ArgumentTypeError(
                f"{name}={printable(value, 40)} is too large: dims are at most {MAX_DIM}")
        out[name] = int(value)
    return out


def _input_pair(text: str) -> str:
    name, sep, file = text.partition("=")
    if not sep or not name.strip() or not file:
        raise argparse.ArgumentTypeError(f"expected NAME=FILE.npy, found '{printable(text)}'")
    return text


def _seed(text: str) -> int:
    if not INT.fullmatch(text.strip()) or int(text) >= 2**63:
        raise argparse.ArgumentTypeError(
            f"expected an integer in [0, 2**63), found '{printable(text, 40)}'")
    return int(text)


class _Parser(argparse.ArgumentParser):
    """argparse, except that its messages never echo raw control characters
    or a whole 100 kB argument back to the terminal."""

    def error(self, message: str) -> NoReturn:
        super().error(_lines(message))


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="a .ember model file")
    p.add_argument("--entry", default="forward", help="the model function to compile (forward)")
    p.add_argument("--dims", type=_dims, default={}, metavar="B=8,T=16",
                   help="values for symbolic dimensions")
    p.add_argument("--train", action="store_true",
                   help="training mode: dropout active, batch norm uses batch statistics")
    p.add_argument("--precision", choices=PRECISIONS, default="f32",
                   help="f64 runs f32-declared models in float64 (oracle checks); "
                        "bf16-mixed/f16-mixed run dot products on 16-bit operands")
    p.add_argument("--dot-precision", choices=DOT_PRECISIONS, default="ieee",
                   help="fp32 tl.dot precision in generated kernels (ieee)")
    p.add_argument("--grad", action="store_true",
                   help="also compute the gradient of the entry's scalar output with respect "
                        "to every parameter (outputs grad.<name>)")
    p.add_argument("--grad-inputs", action="store_true",
                   help="with --grad: gradients with respect to the float inputs too")
    p.add_argument("--no-fuse", action="store_true",
                   help="one kernel per operation (to compare with fused code)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="ember", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"ember {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("compile", help="print a compilation stage")
    _common(c)
    c.add_argument("--emit", choices=commands.EMIT_CHOICES, default="opt",
                   help="the stage to print (opt)")
    c.add_argument("--json", action="store_true", help="--emit report: print JSON")
    c.add_argument("-o", "--output", metavar="DIR",
                   help="--emit triton: write the kernel module to DIR")
    c.add_argument("--target", choices=("sm_90",),
                   help="compile every kernel ahead of time for this GPU (no GPU needed)")
    c.add_argument("--train-step", choices=OPTIMIZERS, metavar="OPTIMIZER",
                   help="compile one whole training step of the entry (a scalar loss): "
                        "forward, backward and this optimizer's update (sgd, adam, adamw)")
    r = sub.add_parser("run", help="run a model function")
    _common(r)
    r.add_argument("--backend", choices=BACKENDS, default="auto",
                   help="auto: triton on a CUDA GPU, else the numpy oracle")
    r.add_argument("--check", action="store_true",
                   help="also run the oracle and compare every output (exit 1 if off)")
    r.add_argument("--input", action="append", default=[], type=_input_pair,
                   metavar="NAME=FILE.npy", help="an input from a .npy file (repeatable)")
    r.add_argument("--inputs", metavar="FILE.npz", help="inputs by name from a .npz file")
    r.add_argument("--params", metavar="FILE", help="parameters (.npz or .safetensors)")
    r.add_argument("--save-params", metavar="FILE", help="write the parameters used")
    r.add_argument("--save-grads", metavar="FILE",
                   help="with --grad: write the gradients keyed by parameter name "
                        "(.npz or .safetensors); input gradients as input.<name>")
    r.add_argument("--seed", type=_seed, default=0,
                   help="seed for parameter init, random inputs and dropout (0)")
    r.add_argument("-o", "--output", metavar="OUT.npz", help="write outputs by name")
    t = sub.add_parser("train", help="train a model (see docs/training.md)")
    train_cmd.add_arguments(t, dims=_dims, seed=_seed)
    return parser


def _version() -> str:
    from ember import __version__
    return __version__


def _check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Options that are meaningless together are usage errors, not ignored."""
    if args.command == "compile":
        if args.output and args.emit != "triton":
            parser.error(f"-o writes the generated module: it needs --emit triton, "
                         f"not --emit {args.emit}")
        if args.json and args.emit != "report":
            parser.error(f"--json prints the report as JSON: it needs --emit report, "
                         f"not --emit {args.emit}")


def _check_files(args: argparse.Namespace) -> None:
    """No output of `ember run` may replace one of its inputs (exit 1)."""
    if args.command != "run":
        return
    inputs = [("the model file", args.model), ("--params", args.params),
              ("--inputs", args.inputs)]
    inputs += [("--input", pair.partition("=")[2]) for pair in args.input]
    outputs = [("-o", args.output), ("--save-params", args.save_params),
               ("--save-grads", args.save_grads)]
    ensure_distinct(outputs, inputs)


def _lines(text: str) -> str:
    return "\n".join(printable(line, 500) for line in text.split("\n"))


def _render(e: DSLError) -> str:
    """e rendered safe to print: escaped, cut, and a long source line shown as
    a window around the caret (the first line keeps the real column)."""
    safe = DSLError(_lines(e.message), e.loc, _lines(e.note))
    if not e.loc.source_line:
        return safe.render()
    line, col, end = _window(e.loc.source_line, e.loc.col, e.loc.end_col or e.loc.col + 1)
    shown = dataclasses.replace(e.loc, source_line=line, col=col, end_col=end)
    head = dataclasses.replace(e.loc, source_line="")
    first = DSLError(safe.message, head).render().split("\n")  # the message's lines
    rest = DSLError(safe.message, shown, safe.note).render().split("\n")[len(first):]
    return "\n".join(first + rest)


def _window(src: str, col: int, end: int, width: int = 160) -> tuple[str, int, int]:
    """(text, col, end_col) of at most `width` characters of src around the span
    [col, end) (1-based), escaped; the columns follow the escapes."""
    def esc(t: str) -> str:
        return printable(t.replace("\t", " "), None)
    head, span, tail = esc(src[:col - 1]), esc(src[col - 1:end - 1]), esc(src[end - 1:])
    text, col, end = head + span + tail, len(head) + 1, len(head) + len(span) + 1
    if len(text) <= width:
        return text, col, end
    start = max(0, min(col - 1 - width // 2, len(text) - width))
    cut = ("..." if start else "") + text[start:start + width] + (
        "..." if start + width < len(text) else "")
    shift = start - (3 if start else 0)
    return cut, col - shift, min(end - shift, len(cut) + 1)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _check_args(parser, args)
    try:
        _check_files(args)
        return {**commands.COMMANDS, "train": train_cmd.train_cmd}[args.command](args)
    except DSLError as e:
        # like argparse's `ember: error: ...` when there is no source line to point at
        print(("" if e.loc.known else "ember: ") + _render(e), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # e.g. `ember ... | head`: the reader left, not an error
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - silence the flush at exit
        return 0
    except Exception:  # a bug in ember, not in the user's input
        print("internal compiler error (please report it with this trace):", file=sys.stderr)
        traceback.print_exc()
        return 3
