"""The stable text form of a Graph: the debugging view and the golden format.

    graph forward(x) {
      %0:f32[B, 64] = input name=x                          # mlp.ember:9:15
      %2:f32[B, 128] = matmul %0 %1                          # mlp.ember:10:17
      return %2
    }

Regions print their body graph nested, indented, after the node that owns it.
"""

from __future__ import annotations

from typing import Any

from .graph import Graph, Node, TensorType

LOC_COLUMN = 56


def fmt_type(t: Any) -> str:
    if isinstance(t, TensorType):
        return str(t)
    return "(" + ", ".join(str(x) for x in t) + ")"


def fmt_attr(v: Any) -> str:
    if isinstance(v, tuple):
        inner = ", ".join(fmt_attr(x) for x in v)
        return f"({inner},)" if len(v) == 1 else f"({inner})"
    if isinstance(v, float) or (isinstance(v, str) and not v):
        return repr(v)  # an empty string shows as '' rather than as nothing
    return str(v)


def fmt_node(i: int, n: Node, with_loc: bool = True) -> str:
    srcs = "".join(f" %{s}" for s in n.srcs)
    attrs = "".join(f" {k}={fmt_attr(v)}" for k, v in n.attrs.items() if _shown(n, k, v))
    text = f"%{i}:{fmt_type(n.type)} = {n.op.value}{srcs}{attrs}"
    if with_loc and n.loc.line:
        text = f"{text:<{LOC_COLUMN}} # {n.loc.file}:{n.loc.line}:{n.loc.col}"
    return text


def _shown(n: Node, key: str, value: Any) -> bool:
    """Attributes the type already says (a leaf's shape and dtype) are not repeated."""
    if key == "body":
        return False
    t = n.type
    return not (isinstance(t, TensorType) and (
        (key == "shape" and value == t.shape) or (key == "dtype" and value == t.dtype)))


def print_graph(g: Graph, indent: str = "", with_loc: bool = True) -> str:
    """The whole graph as text, one node a line."""
    lines = [f"{indent}graph {g.name}({', '.join(g.input_names())}) {{"]
    for i, n in enumerate(g.nodes):
        lines.append(indent + "  " + fmt_node(i, n, with_loc))
        if "body" in n.attrs:
            lines.append(print_graph(n.attrs["body"], indent + "    ", with_loc))
    # gradient outputs say whose gradient they are
    outs = ", ".join(f"{name}=%{o}" if name.startswith("grad.") else f"%{o}"
                     for o, name in zip(g.outputs, g.output_names))
    lines.append(f"{indent}  return {outs}")
    lines.append(f"{indent}}}")
    return "\n".join(lines)
