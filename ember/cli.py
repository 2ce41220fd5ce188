"""The `ember` command: `ember compile` prints a stage, `ember run` executes.

Exit codes: 0 ok; 1 a user error (located, printed without a traceback);
2 a usage error (argparse); 3 an internal compiler error.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections.abc import Sequence

from ember.ir.loc import DSLError

from . import commands
from .backends import BACKENDS, DOT_PRECISIONS


def _dims(text: str) -> dict[str, int]:
    out = {}
    for part in filter(None, text.split(",")):
        name, _, value = part.partition("=")
        if not name.strip().isidentifier() or not value.strip().isdigit():
            raise argparse.ArgumentTypeError(f"expected NAME=INT[,NAME=INT...], found '{part}'")
        out[name.strip()] = int(value)
    return out


def _input_pair(text: str) -> str:
    name, sep, file = text.partition("=")
    if not sep or not name.strip() or not file:
        raise argparse.ArgumentTypeError(f"expected NAME=FILE.npy, found '{text}'")
    return text


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="a .ember model file")
    p.add_argument("--entry", default="forward", help="the model function to compile (forward)")
    p.add_argument("--dims", type=_dims, default={}, metavar="B=8,T=16",
                   help="values for symbolic dimensions")
    p.add_argument("--train", action="store_true",
                   help="training mode: dropout active, batch norm uses batch statistics")
    p.add_argument("--precision", choices=("f32", "f64"), default="f32",
                   help="f64 runs f32-declared models in float64 (oracle checks)")
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
    parser = argparse.ArgumentParser(prog="ember", description=__doc__.splitlines()[0])
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
    r.add_argument("--seed", type=int, default=0,
                   help="seed for parameter init, random inputs and dropout (0)")
    r.add_argument("-o", "--output", metavar="OUT.npz", help="write outputs by name")
    return parser


def _version() -> str:
    from ember import __version__
    return __version__


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return commands.COMMANDS[args.command](args)
    except DSLError as e:
        # like argparse's `ember: error: ...` when there is no source line to point at
        print(("" if e.loc.known else "ember: ") + e.render(), file=sys.stderr)
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
