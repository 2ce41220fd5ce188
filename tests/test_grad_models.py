"""Every model's gradients (`--grad`) against its PyTorch twin's `.grad`.

The twins are the independent torch models of tests/test_models_vs_torch.py,
loaded strictly from Ember's parameters; `loss.backward()` gives the reference.
Gradients are compared per parameter, as max |ours - torch| over the largest
|torch|:

* float64 on the NumPy oracle: < 1e-9, at two sizes from one compiled graph.
  (Relative to at least 1e-4 of the model's largest gradient: see FLOOR.)
  The gradients are exactly the twin's named_parameters(): resnet's running
  statistics are buffers on both sides, state that is never differentiated.
* float32 on the oracle and through the generated Triton kernels (the
  interpreter): < 1e-5. Both sides round in float32 and sum in different
  orders; we measure about 4e-7 (a few ulps of 6e-8 times the depth of the
  backward), so 1e-5 leaves 25x headroom, while a wrong rule shows as 1e-2 or
  more.
* train mode: mlp's dropout (the twin rebuilds the mask from
  ember.runtime.rand) and resnet's batch statistics.
* the attention spellings of tests/test_fused_patterns.py, with a loss
  sum(attention * w), against a direct torch attention: gradients of q, k, v
  (and of an additive mask).
* `ember run --grad --save-grads`: the file holds exactly the trainable keys
  of the state dict, and its values are the twin's gradients.
"""

from __future__ import annotations

import contextlib
import io
import re
from functools import cache

import numpy as np
import pytest
import torch
from test_fused_patterns import SCALE, VARIANTS, attention_src
from test_models_vs_torch import NAMES, TorchMlp, _ce, _stream, make_inputs, torch_model
from test_models_vs_torch import graph as forward_graph
from util import MODEL_NAMES, MODELS, perturb

from ember import api, cli
from ember.ir.graph import Graph, walk_nodes
from ember.ir.loc import UNKNOWN
from ember.ir.ops import Op
from ember.lang.emitter import Options
from ember.lang.parser import parse
from ember.runtime.cache import CodeCache
from ember.runtime.params_io import load_params
from ember.runtime.pool import GuardedPool
from ember.runtime.rand import dropout_keep, stream_seed
from ember.runtime.triton_backend import TritonProgram

TOL64 = 1e-9
RTOL32 = 1e-5
# The attention's key bias has no gradient (softmax ignores the per-row shift
# q . bk it adds to the scores): both sides give rounding noise there, so errors
# are measured against at least 1e-4 of the model's largest gradient.
FLOOR = 1e-4
SIZES = ((2, 3), (3, 5))  # (B, T)
_CACHE: list[CodeCache] = []


@pytest.fixture(scope="module", autouse=True)
def code_cache(tmp_path_factory: pytest.TempPathFactory):
    """Generated modules go to a temporary code cache, not the user's."""
    _CACHE.append(CodeCache(tmp_path_factory.mktemp("code-cache")))
    yield
    _CACHE.clear()


@cache
def program(model: str):
    return api.parse_file(MODELS / f"{model}.ember")


@cache
def grad_graph(model: str, train: bool, float64: bool) -> Graph:
    return api.compile_program(program(model), "loss", options=Options(train, float64),
                               grad=True)


def state(model: str, float64: bool, seed: int) -> dict[str, np.ndarray]:
    """The whole state dict, constant initializers perturbed so each is exercised."""
    return perturb(api.init_model_params(program(model), Options(False, float64), seed), seed)


def ember_grads(backend: str, g: Graph, inputs: dict, params: dict, seed: int = 0
                ) -> dict[str, np.ndarray]:
    """The gradients g computes, by parameter name, on the oracle or the kernels."""
    used = {k: v for k, v in params.items() if k in g.params()}
    if backend == "numpy":
        outs = api.run(g, inputs, used, seed)
    else:
        pool = GuardedPool()
        outs = TritonProgram(g, cache=_CACHE[0])(inputs, used, seed, {}, pool=pool)
        assert pool.check() == []
    return {p: outs[o] for o, p in api.grad_names(g).items()}


def twin_grads(model: str, params: dict, inputs: dict, train: bool = False,
               keep: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """{name: p.grad} of the torch twin after loss.backward()."""
    m = torch_model(model, params, train)
    if keep is not None:
        m.keep = torch.from_numpy(keep)
    x, y, _ = NAMES[model]
    _ce(m(torch.from_numpy(inputs[x])), torch.from_numpy(inputs[y])).backward()
    return {n: p.grad.numpy() for n, p in m.named_parameters()}


def assert_grads_close(got: dict, want: dict, tol: float) -> None:
    """Each gradient within tol of the reference's largest magnitude, floored at
    FLOOR of the largest over all parameters."""
    top = max(float(np.abs(w).max(initial=0.0)) for w in want.values())
    for name, ref in want.items():
        assert got[name].dtype == ref.dtype and got[name].shape == ref.shape, name
        scale = max(float(np.abs(ref).max(initial=0.0)), FLOOR * top)
        err = float(np.abs(got[name].astype(np.float64) - ref).max(initial=0.0)) / scale
        assert err < tol, f"{name}: relative error {err:.2e}"


# ---- the five models --------------------------------------------------------------------

@pytest.mark.parametrize("model", MODEL_NAMES)
def test_grads_match_torch_f64(model: str) -> None:
    params = state(model, True, seed=1)
    g = grad_graph(model, False, True)
    rng = np.random.default_rng(2)
    for b, t in SIZES:
        inputs = make_inputs(model, rng, b, t)
        want = twin_grads(model, params, inputs)
        assert_grads_close(ember_grads("numpy", g, inputs, params), want, TOL64)


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("model", MODEL_NAMES)
def test_gradients_are_the_trainable_parameters(model: str, train: bool) -> None:
    """One gradient per torch parameter; buffers (resnet's running statistics,
    read in eval mode) get none."""
    twin = torch_model(model, state(model, False, seed=0), train)
    got = set(api.grad_names(grad_graph(model, train, False)).values())
    assert got == {n for n, _ in twin.named_parameters()}


@pytest.mark.parametrize("backend", ["numpy", "triton"])
@pytest.mark.parametrize("model", MODEL_NAMES)
def test_grads_match_torch_f32(model: str, backend: str) -> None:
    params = state(model, False, seed=5)
    inputs = make_inputs(model, np.random.default_rng(6), 2, 3, np.float32)
    got = ember_grads(backend, grad_graph(model, False, False), inputs, params)
    assert_grads_close(got, twin_grads(model, params, inputs), RTOL32)


def _mlp_keep(seed: int, b: int) -> np.ndarray:
    """The dropout keep-mask of mlp's hidden layer, as test_models_vs_torch rebuilds it."""
    keep = dropout_keep(stream_seed(seed, _stream(forward_graph("mlp", "loss", True))),
                        (b, TorchMlp.HIDDEN), TorchMlp.P_DROP)
    assert 0 < keep.sum() < keep.size
    return keep


@pytest.mark.parametrize("backend,float64", [("numpy", True), ("triton", False)])
@pytest.mark.parametrize("model", ["mlp", "resnet"])
def test_train_grads_match_torch(model: str, backend: str, float64: bool) -> None:
    """Dropout's mask (recomputed in the backward, never stored) and batch
    statistics."""
    dtype = np.float64 if float64 else np.float32
    params = state(model, float64, seed=7)
    inputs = make_inputs(model, np.random.default_rng(8), 2, 3, dtype)
    seed = 11
    keep = _mlp_keep(seed, 2) if model == "mlp" else None
    got = ember_grads(backend, grad_graph(model, True, float64), inputs, params, seed)
    want = twin_grads(model, params, inputs, train=True, keep=keep)
    assert_grads_close(got, want, TOL64 if float64 else RTOL32)


@pytest.mark.parametrize("model", MODEL_NAMES)
def test_backward_nodes_keep_source_locations(model: str) -> None:
    """So kernel headers name the DSL line a backward kernel differentiates
    (only the inputs of a backward scan's body, which no kernel computes, have none)."""
    g = grad_graph(model, False, False)
    assert [n.op for n in walk_nodes(g) if n.loc == UNKNOWN and n.op is not Op.INPUT] == []


# ---- attention, as tests/test_fused_patterns.py spells it --------------------------------

def _causal(s: torch.Tensor) -> torch.Tensor:
    t = s.shape[-1]
    return torch.where(torch.ones(t, t, dtype=torch.bool).tril(), s, torch.tensor(-1e9))


def _attend(s: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return torch.softmax(s, dim=-1) @ v


# name -> (source, torch attention of q, k, v and the extra inputs)
ATTENTION = {
    "full": (attention_src(False), lambda q, k, v: _attend(q @ k.mT * SCALE, v)),
    "causal": (attention_src(True), lambda q, k, v: _attend(_causal(q @ k.mT * SCALE), v)),
    "divide": (VARIANTS["divide"][0], lambda q, k, v: _attend(q @ k.mT / 8.0, v)),
    "additive_mask": (VARIANTS["additive_mask"][0],
                      lambda q, k, v, mask: _attend(q @ k.mT * SCALE + mask, v)),
    "by_hand": (VARIANTS["by_hand"][0], lambda q, k, v: _attend(_causal(q @ k.mT) * SCALE, v)),
}


def with_loss_entry(src: str) -> str:
    """src plus `loss(..., w) = sum(forward(...) * w)`, a scalar to differentiate."""
    sig = re.search(r"def forward\((.*?)\) ->", src)
    assert sig is not None
    args = ", ".join(re.findall(r"(\w+):", sig.group(1)))
    loss = (f"  def loss({sig.group(1)}, w: f32[B, H, T, D]) -> f32[] "
            f"{{ return sum(forward({args}) * w) }}\n}}\n")
    return src[:src.rstrip().rindex("}")] + loss


@pytest.mark.parametrize("backend,float64", [("numpy", True), ("triton", False)])
@pytest.mark.parametrize("name", list(ATTENTION))
def test_attention_grads_match_torch(name: str, backend: str, float64: bool) -> None:
    src, reference = ATTENTION[name]
    g = api.compile_program(parse(with_loss_entry(src), "attention.ember"), "loss",
                            options=Options(False, float64), grad=True, grad_inputs=True)
    rng = np.random.default_rng(12)
    dtype = np.float64 if float64 else np.float32
    T = 17  # one full key tile and a partial one
    inputs = {n: rng.standard_normal((1, 2, T, 8)).astype(dtype) for n in ("q", "k", "v", "w")}
    if "mask" in g.input_names():
        inputs["mask"] = np.where(rng.random((T, T)) < 0.3, -1e4,
                                  rng.standard_normal((T, T))).astype(dtype)
    got = ember_grads(backend, g, inputs, {})
    leaves = {k: torch.tensor(v, requires_grad=True) for k, v in inputs.items()}
    extra = [leaves["mask"]] if "mask" in leaves else []
    loss = (reference(leaves["q"], leaves["k"], leaves["v"], *extra) * leaves["w"]).sum()
    want = torch.autograd.grad(loss, list(leaves.values()))
    assert sorted(got) == sorted(leaves)
    assert_grads_close(got, {k: w.numpy() for k, w in zip(leaves, want)},
                       TOL64 if float64 else RTOL32)


# ---- ember run --grad --save-grads ---------------------------------------------------------

@pytest.mark.parametrize("model", MODEL_NAMES)
def test_saved_grads_are_the_state_dict_grads(model: str, tmp_path) -> None:
    inputs = make_inputs(model, np.random.default_rng(13), 2, 3, np.float32)
    np.savez(tmp_path / "in.npz", **inputs)
    files = {k: tmp_path / f"{k}.safetensors" for k in ("params", "grads")}
    with contextlib.redirect_stdout(io.StringIO()):
        rc = cli.main(["run", str(MODELS / f"{model}.ember"), "--entry", "loss", "--grad",
                       "--backend", "numpy", "--inputs", str(tmp_path / "in.npz"),
                       "--save-params", str(files["params"]),
                       "--save-grads", str(files["grads"])])
    assert rc == 0
    params, grads = (load_params(str(f)) for f in files.values())
    twin = torch_model(model, params)
    assert set(params) == set(twin.state_dict())
    assert set(grads) == {n for n, _ in twin.named_parameters()}
    assert all(g.dtype == np.float32 for g in grads.values())
    assert_grads_close(grads, twin_grads(model, params, inputs), RTOL32)
