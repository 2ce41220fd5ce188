"""The compiled training step against torch.optim, step by step.

For every model in models/ and every optimizer, 20 steps in float64 from the
same initial parameters on the same batches (dropout off, a learning rate that
changes every step): the step graph (forward in training mode, backward,
clipping, the update; passes/optim.py) on the oracle, and the PyTorch twin
(tests/test_models_vs_torch.py) trained by torch.optim. Per-step losses,
gradient norms, the final parameters, the batch-norm running statistics and
the optimizer state agree to 1e-9 relative: both sides compute the same
formulas in float64, differing only in summation order.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache

import numpy as np
import pytest
from test_models_vs_torch import NAMES, _ce, make_inputs, rel_err, torch_model
from util import MODEL_NAMES, MODELS, perturb

from ember import api
from ember.ir.graph import Graph
from ember.ir.loc import DSLError
from ember.passes.optim import OptimizerConfig

torch = pytest.importorskip("torch")

TOL = 1e-9
STEPS = 20
LR = {"sgd": 0.05, "sgd_nesterov": 0.05, "adam": 3e-3, "adamw": 3e-3}


def _sgd(ps):
    return torch.optim.SGD(ps, lr=LR["sgd"], momentum=0.9, weight_decay=1e-3)


def _nesterov(ps):
    return torch.optim.SGD(ps, lr=LR["sgd"], momentum=0.8, nesterov=True)


def _adam(ps):
    return torch.optim.Adam(ps, lr=LR["adam"], weight_decay=1e-3)


def _adamw(ps):
    return torch.optim.AdamW(ps, lr=LR["adamw"], betas=(0.8, 0.99), weight_decay=0.05)


# ours, torch's, the global gradient norm to clip to (None: no clipping)
CASES: dict[str, tuple[OptimizerConfig, Callable, float | None]] = {
    "sgd": (OptimizerConfig("sgd", momentum=0.9, weight_decay=1e-3), _sgd, None),
    "sgd_nesterov": (OptimizerConfig("sgd", momentum=0.8, nesterov=True, clip=0.5),
                     _nesterov, 0.5),
    "adam": (OptimizerConfig("adam", weight_decay=1e-3), _adam, None),
    "adamw": (OptimizerConfig("adamw", betas=(0.8, 0.99), weight_decay=0.05, clip=1.0),
              _adamw, 1.0),
}


@cache
def step_graph(model: str, case: str) -> Graph:
    program = api.parse_file(MODELS / f"{model}.ember")
    return api.compile_train_step(program, CASES[case][0], float64=True, dropout=False)


def _lr(case: str, step: int) -> float:
    """A learning rate that changes every step: the step reads it at run time."""
    return LR[case] * (1 - step / (2 * STEPS))


def _torch_step(m, opt, model: str, batch: dict[str, np.ndarray], lr: float,
                clip: float | None) -> tuple[float, float]:
    x_name, y_name, _ = NAMES[model]
    opt.zero_grad()
    loss = _ce(m(torch.from_numpy(batch[x_name])), torch.from_numpy(batch[y_name]))
    loss.backward()
    grads = [p.grad for p in m.parameters() if p.grad is not None]
    norm = float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g)
                                                       for g in grads])))
    if clip is not None:
        torch.nn.utils.clip_grad_norm_(m.parameters(), clip)
    for group in opt.param_groups:
        group["lr"] = lr
    opt.step()
    return loss.item(), norm


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("model", MODEL_NAMES)
def test_steps_match_torch_optim_f64(model: str, case: str) -> None:
    config, make_opt, clip = CASES[case]
    g = step_graph(model, case)
    program = api.parse_file(MODELS / f"{model}.ember")
    params = perturb(api.init_model_params(program, api.Options(float64=True), seed=3), seed=3)
    has_buffers = any(".running_" in k for k in params)
    m = torch_model(model, params, train=has_buffers)  # no dropout; batch norm on batch stats
    opt = make_opt(m.parameters())
    state = api.init_train_state(g, params)
    rng = np.random.default_rng(11)
    for step in range(1, STEPS + 1):
        batch = make_inputs(model, rng, 4, 5)
        scalars = api.step_scalars(config, _lr(case, step), step, float64=True)
        outs = api.run(g, {**batch, **scalars}, state)
        state.update({k.removeprefix("new."): v for k, v in outs.items() if k.startswith("new.")})
        ref_loss, ref_norm = _torch_step(m, opt, model, batch, _lr(case, step), clip)
        assert abs(float(outs["loss"]) - ref_loss) <= TOL * abs(ref_loss), step
        assert abs(float(outs["grad_norm"]) - ref_norm) <= TOL * ref_norm, step
    for name, value in m.state_dict().items():
        assert rel_err(state[name], value.numpy()) < TOL, name
        # (a key bias cancels out of the softmax: its gradient is zero, SGD leaves it)
        if not name.endswith(("running_var", "attn.bk")):
            assert not np.array_equal(state[name], params[name]), name  # everything moved
    for p in m.parameters():
        name = next(k for k, q in m.named_parameters() if q is p)
        for slot, value in opt.state[p].items():
            if slot != "step":  # the key bias's gradient is rounding noise (~1e-21): atol
                err = np.max(np.abs(state[f"optim.{name}.{slot}"] - value.numpy()))
                assert err <= TOL * np.max(np.abs(value.numpy())) + 1e-15, (name, slot)


def test_step_outputs_and_state_names() -> None:
    g = step_graph("resnet", "adamw")
    names = g.output_names
    assert names[:2] == ("loss", "grad_norm")
    assert "new.stem_bn.running_mean" in names and "new.optim.stem.exp_avg_sq" in names
    assert {n for n in names if n.startswith("new.optim.")} == {
        f"new.optim.{p}.{s}" for p in api.complete_grads({}, api.parse_file(
            MODELS / "resnet.ember")) for s in ("exp_avg", "exp_avg_sq")}
    assert set(g.input_names()) == {"x", "y", "optim.lr", "optim.step_size",
                                    "optim.bias_correction2_sqrt"}


def test_plain_sgd_has_no_state() -> None:
    g = api.compile_train_step(api.parse_file(MODELS / "mlp.ember"), OptimizerConfig("sgd"))
    assert not any(n.startswith("new.optim.") for n in g.output_names)
    assert set(g.input_names()) == {"x", "y", "optim.lr"}


def test_frozen_parameters_get_no_gradient_and_stay() -> None:
    program = api.parse_file(MODELS / "lenet.ember")
    full = api.compile_train_step(program, OptimizerConfig("adam"))
    frozen = api.compile_train_step(program, OptimizerConfig("adam"),
                                    frozen=("conv1.w", "conv1.bn.weight", "conv1.bn.bias"))
    assert "new.conv1.w" not in frozen.output_names and "new.conv1.w" in full.output_names
    # the first conv's weight gradient is gone from the graph entirely
    assert len(frozen.nodes) < len(full.nodes)
    params = api.init_model_params(program, seed=0)
    state = api.init_train_state(frozen, params)
    assert not any(k.startswith("optim.conv1") for k in state)
    batch = make_inputs("lenet", np.random.default_rng(0), 3, 0, np.float32)
    outs = api.run(frozen, {**batch, **api.step_scalars(OptimizerConfig("adam"), 1e-3, 1)},
                   state)
    assert "new.conv2.w" in outs and not np.array_equal(outs["new.conv2.w"], params["conv2.w"])


def test_freezing_an_unknown_name_is_an_error() -> None:
    program = api.parse_file(MODELS / "mlp.ember")
    with pytest.raises(DSLError, match="cannot freeze 'hidden.v'"):
        api.compile_train_step(program, OptimizerConfig("adam"), frozen=("hidden.v",))


@pytest.mark.parametrize("bad, message", [
    (dict(name="lamb"), "unknown optimizer"), (dict(name="sgd", nesterov=True), "Nesterov"),
    (dict(betas=(0.9, 1.0)), "betas"), (dict(clip=0.0), "clipping"),
    (dict(weight_decay=-1.0), "weight decay")])
def test_bad_optimizer_settings_are_errors(bad: dict, message: str) -> None:
    with pytest.raises(DSLError, match=message):
        OptimizerConfig(**bad)


def _dense_with_unused() -> str:
    """`unused` is never read by the loss: its gradient is None in torch."""
    return """
model M {
  param w: f32[4, 3] = normal(1.0)
  param unused: f32[5] = normal(1.0)
  def loss(x: f32[B, 4], y: i32[B]) -> f32[] { return cross_entropy(x @ w, y) }
}
"""


def test_decoupled_weight_decay_shrinks_as_torch_and_skips_unread_parameters() -> None:
    from ember.lang.parser import parse
    program = parse(_dense_with_unused(), "m.ember")
    config = OptimizerConfig("adamw", weight_decay=0.1)
    g = api.compile_train_step(program, config, float64=True)
    assert "new.unused" not in g.output_names   # torch skips a parameter whose .grad is None
    params = api.init_model_params(program, api.Options(float64=True), seed=0)
    state = api.init_train_state(g, params)
    w = torch.nn.Parameter(torch.from_numpy(params["w"].copy()))
    opt = torch.optim.AdamW([w], lr=0.05, weight_decay=0.1)
    rng = np.random.default_rng(0)
    norms = []
    for step in range(1, 6):
        x, y = rng.standard_normal((6, 4)), rng.integers(0, 3, 6).astype(np.int32)
        outs = api.run(g, {"x": x, "y": y, **api.step_scalars(config, 0.05, step, True)},
                       state)
        state.update({k.removeprefix("new."): v for k, v in outs.items()
                      if k.startswith("new.")})
        opt.zero_grad()
        torch.nn.functional.cross_entropy(torch.from_numpy(x) @ w,
                                          torch.from_numpy(y).long()).backward()
        opt.step()
        norms.append(float(np.linalg.norm(state["w"])))
    assert rel_err(state["w"], w.detach().numpy()) < TOL
    # decay alone: the same steps without it end with larger weights
    plain = OptimizerConfig("adamw", weight_decay=0.0)
    g0 = api.compile_train_step(program, plain, float64=True)
    s0 = api.init_train_state(g0, params)
    rng = np.random.default_rng(0)
    for step in range(1, 6):
        x, y = rng.standard_normal((6, 4)), rng.integers(0, 3, 6).astype(np.int32)
        outs = api.run(g0, {"x": x, "y": y, **api.step_scalars(plain, 0.05, step, True)}, s0)
        s0.update({k.removeprefix("new."): v for k, v in outs.items() if k.startswith("new.")})
    assert norms[-1] < float(np.linalg.norm(s0["w"]))


def test_dropout_masks_change_per_step_and_follow_the_seed() -> None:
    program = api.parse_file(MODELS / "mlp.ember")
    config = OptimizerConfig("sgd")
    g = api.compile_train_step(program, config)
    params = api.init_model_params(program, seed=0)
    batch = {**make_inputs("mlp", np.random.default_rng(0), 8, 0, np.float32),
             **api.step_scalars(config, 0.1, 1)}
    a, b, a2 = (api.run(g, batch, params, seed)["loss"] for seed in (1, 2, 1))
    assert a == a2 and a != b   # the step's seed draws the mask: same seed, same loss
    off = api.compile_train_step(program, config, dropout=False)
    assert api.run(off, batch, params, 1)["loss"] == api.run(off, batch, params, 2)["loss"]
