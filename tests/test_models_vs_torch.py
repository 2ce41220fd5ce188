"""The five models in models/ against independent PyTorch implementations.

Each torch model below is written from the model's description (not from Ember's
IR) and registers its parameters under Ember's dotted names, so an Ember
parameter dict loads with `load_state_dict(strict=True)`. Dense weights use
Ember's layout, [in, out] applied as `x @ w` (not nn.Linear's [out, in]).

* float64 (oracle precision): forward and loss for every model, at two batch
  sizes (and two sequence lengths) from one compiled graph, so the symbolic dims
  are bound per run; eval mode, plus train mode for resnet (batch statistics)
  and mlp (dropout, with the mask rebuilt from `ember.runtime.rand`).
* The CLI round trip in float32: `python -m ember run ... --save-params` then
  torch, loaded from the saved file, reproduces the CLI's `-o` outputs.
"""

from __future__ import annotations

import subprocess
import sys
from functools import cache

import numpy as np
import pytest
from util import MODEL_NAMES, MODELS, ROOT, perturb

from ember import api
from ember.ir.graph import Graph
from ember.ir.ops import Op
from ember.lang.emitter import Options
from ember.runtime.rand import dropout_keep, stream_seed

torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional

TOL64 = 1e-10


# ---- independent torch implementations ----------------------------------------

def _param(*shape: int) -> nn.Parameter:
    # Values come from load_state_dict; only the shapes matter here.
    return nn.Parameter(torch.zeros(*shape))


def _ce(logits, labels):
    """Mean cross entropy over every position, classes on the last axis."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1).long())


class TorchDense(nn.Module):
    def __init__(self, n_in: int, n_out: int):
        super().__init__()
        self.w = _param(n_in, n_out)
        self.b = _param(n_out)

    def forward(self, x):
        return x @ self.w + self.b


class TorchMlp(nn.Module):
    P_DROP, HIDDEN = 0.25, 512

    def __init__(self):
        super().__init__()
        self.hidden = nn.Module()
        self.hidden.w, self.hidden.bn = _param(64, self.HIDDEN), TorchBatchNorm(self.HIDDEN)
        self.out = TorchDense(self.HIDDEN, 10)
        self.keep = None  # bool [B, HIDDEN] dropout keep-mask when training; None: no dropout

    def forward(self, x):
        h = F.relu(self.hidden.bn(x @ self.hidden.w))
        if self.training and self.keep is not None:
            h = torch.where(self.keep, h / (1 - self.P_DROP), torch.zeros_like(h))
        return self.out(h)


class TorchConvBn(nn.Module):
    """conv(3x3, padding 1, no bias) -> batch norm -> ReLU."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.w, self.bn = _param(c_out, c_in, 3, 3), TorchBatchNorm(c_out)

    def forward(self, x):
        return F.relu(self.bn(F.conv2d(x, self.w, padding=1)))


class TorchLeNet(nn.Module):
    P_DROP = 0.25

    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = TorchConvBn(1, 32), TorchConvBn(32, 32)
        self.conv3, self.conv4 = TorchConvBn(32, 64), TorchConvBn(64, 64)
        self.fc1_w, self.fc1_b = _param(256, 128), _param(128)
        self.fc2_w, self.fc2_b = _param(128, 10), _param(10)
        self.keep = None  # bool [B, 128] dropout keep-mask when training; None: no dropout

    def forward(self, x):
        h = F.max_pool2d(self.conv2(self.conv1(x)), 2)
        h = F.max_pool2d(self.conv4(self.conv3(h)), 2)
        h = F.relu(torch.flatten(h, 1) @ self.fc1_w + self.fc1_b)
        if self.training and self.keep is not None:
            h = torch.where(self.keep, h / (1 - self.P_DROP), torch.zeros_like(h))
        return h @ self.fc2_w + self.fc2_b


class TorchBatchNorm(nn.Module):
    """Eval: running statistics. Train: batch statistics (biased variance), and the
    running statistics updated in place (momentum 0.1, unbiased variance)."""

    def __init__(self, c: int):
        super().__init__()
        self.weight, self.bias = _param(c), _param(c)
        self.register_buffer("running_mean", torch.zeros(c))
        self.register_buffer("running_var", torch.ones(c))

    def forward(self, x):
        if self.training:
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                                training=True, momentum=0.1, eps=1e-5)
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                            training=False, eps=1e-5)


class TorchBasicBlock(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.conv1, self.bn1 = _param(c, c, 3, 3), TorchBatchNorm(c)
        self.conv2, self.bn2 = _param(c, c, 3, 3), TorchBatchNorm(c)

    def forward(self, x):
        h = F.relu(self.bn1(F.conv2d(x, self.conv1, padding=1)))
        return F.relu(self.bn2(F.conv2d(h, self.conv2, padding=1)) + x)


class TorchDownBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.conv1, self.bn1 = _param(c_out, c_in, 3, 3), TorchBatchNorm(c_out)
        self.conv2, self.bn2 = _param(c_out, c_out, 3, 3), TorchBatchNorm(c_out)
        self.proj, self.bn_proj = _param(c_out, c_in, 1, 1), TorchBatchNorm(c_out)

    def forward(self, x):
        h = F.relu(self.bn1(F.conv2d(x, self.conv1, stride=2, padding=1)))
        shortcut = self.bn_proj(F.conv2d(x, self.proj, stride=2))
        return F.relu(self.bn2(F.conv2d(h, self.conv2, padding=1)) + shortcut)


class TorchResNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem, self.stem_bn = _param(12, 1, 3, 3), TorchBatchNorm(12)
        self.block1 = TorchBasicBlock(12)
        self.block2 = TorchDownBlock(12, 24)
        self.fc_w, self.fc_b = _param(24, 10), _param(10)

    def forward(self, x):
        h = F.relu(self.stem_bn(F.conv2d(x, self.stem, padding=1)))
        pooled = F.adaptive_avg_pool2d(self.block2(self.block1(h)), 1).flatten(1)
        return pooled @ self.fc_w + self.fc_b


class TorchLSTMCell(nn.Module):
    """Gates i, f, g, o along the last axis, as torch.nn.LSTM; weights [in, 4H]."""

    def __init__(self, n_in: int, n_hidden: int):
        super().__init__()
        self.w_ih = _param(n_in, 4 * n_hidden)
        self.w_hh = _param(n_hidden, 4 * n_hidden)
        self.b = _param(4 * n_hidden)

    def forward(self, x):
        n, steps, _ = x.shape
        h = x.new_zeros(n, self.w_hh.shape[0])
        c = x.new_zeros(n, self.w_hh.shape[0])
        for t in range(steps):
            i, f, g, o = (x[:, t] @ self.w_ih + h @ self.w_hh + self.b).chunk(4, dim=-1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(c)
        return h


class TorchSequenceClassifier(nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm = TorchLSTMCell(8, 32)
        self.w_out, self.b_out = _param(32, 4), _param(4)

    def forward(self, x):
        return self.lstm(x) @ self.w_out + self.b_out


class TorchAttention(nn.Module):
    def __init__(self, d: int, heads: int):
        super().__init__()
        self.heads = heads
        for name in ("q", "k", "v", "o"):
            setattr(self, f"w{name}", _param(d, d))
            setattr(self, f"b{name}", _param(d))

    def forward(self, x):
        n, steps, d = x.shape

        def heads(t):
            return t.reshape(n, steps, self.heads, d // self.heads).transpose(1, 2)

        q, k, v = (heads(x @ w + b) for w, b in
                   ((self.wq, self.bq), (self.wk, self.bk), (self.wv, self.bv)))
        o = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return o.transpose(1, 2).reshape(n, steps, d) @ self.wo + self.bo


class TorchLayerNorm(nn.Module):
    def __init__(self, d: int):
        super().__init__()
        self.weight, self.bias = _param(d), _param(d)

    def forward(self, x):
        return F.layer_norm(x, x.shape[-1:], self.weight, self.bias, eps=1e-5)


class TorchBlock(nn.Module):
    def __init__(self, d: int, heads: int):
        super().__init__()
        self.ln1 = TorchLayerNorm(d)
        self.attn = TorchAttention(d, heads)
        self.ln2 = TorchLayerNorm(d)
        self.w1, self.b1 = _param(d, 4 * d), _param(4 * d)
        self.w2, self.b2 = _param(4 * d, d), _param(d)

    def forward(self, x):
        x = x + self.attn(self.ln1(x))
        return x + F.gelu(self.ln2(x) @ self.w1 + self.b1) @ self.w2 + self.b2


class TorchGPT(nn.Module):
    V, D, HEADS, LAYERS, MAX_T = 64, 32, 4, 2, 32

    def __init__(self):
        super().__init__()
        self.tok = _param(self.V, self.D)
        self.pos = _param(self.MAX_T, self.D)
        self.blocks = nn.ModuleList(TorchBlock(self.D, self.HEADS) for _ in range(self.LAYERS))
        self.ln_f = TorchLayerNorm(self.D)
        self.head = _param(self.D, self.V)

    def forward(self, ids):
        x = F.embedding(ids.long(), self.tok) + self.pos[: ids.shape[1]]
        for blk in self.blocks:
            x = blk(x)
        return self.ln_f(x) @ self.head


# ---- per-model inputs -----------------------------------------------------------

TORCH_MODELS = {"mlp": TorchMlp, "lenet": TorchLeNet, "resnet": TorchResNet,
                "lstm": TorchSequenceClassifier, "transformer": TorchGPT}

# (forward input, loss labels input, number of classes)
NAMES = {"mlp": ("x", "y", 10), "lenet": ("x", "y", 10), "resnet": ("x", "y", 10),
         "lstm": ("x", "y", 4), "transformer": ("ids", "targets", 64)}


def make_inputs(model: str, rng: np.random.Generator, b: int, t: int,
                dtype: type = np.float64) -> dict[str, np.ndarray]:
    """Random loss-entry inputs (the forward entry takes the first one)."""
    x_name, y_name, classes = NAMES[model]
    if model == "transformer":
        return {x_name: rng.integers(0, 64, (b, t)).astype(np.int32),
                y_name: rng.integers(0, classes, (b, t)).astype(np.int32)}
    shape = {"mlp": (b, 64), "lenet": (b, 1, 8, 8), "resnet": (b, 1, 8, 8),
             "lstm": (b, t, 8)}[model]
    return {x_name: rng.standard_normal(shape).astype(dtype),
            y_name: rng.integers(0, classes, (b,)).astype(np.int32)}


def torch_model(model: str, params: dict[str, np.ndarray], train: bool = False) -> nn.Module:
    dtype = {np.dtype(np.float32): torch.float32,
             np.dtype(np.float64): torch.float64}[next(iter(params.values())).dtype]
    m = TORCH_MODELS[model]().to(dtype)
    m.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in params.items()},
                      strict=True)
    assert all(p.dtype == dtype for p in m.state_dict().values())
    return m.train(train)


def torch_outputs(m: nn.Module, model: str, inputs: dict[str, np.ndarray]
                  ) -> tuple[np.ndarray, np.ndarray]:
    """(forward logits, loss) from the torch model."""
    x_name, y_name, _ = NAMES[model]
    with torch.no_grad():
        logits = m(torch.from_numpy(inputs[x_name]))
        loss = _ce(logits, torch.from_numpy(inputs[y_name]))
    return logits.numpy(), loss.numpy()


def rel_err(actual: np.ndarray, expected: np.ndarray) -> float:
    """max |actual - expected| relative to the largest |expected|."""
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    scale = max(float(np.max(np.abs(expected))), 1e-300)
    return float(np.max(np.abs(actual.astype(np.float64) - expected))) / scale


@cache
def graph(model: str, entry: str, train: bool = False) -> Graph:
    return api.compile_file(MODELS / f"{model}.ember", entry,
                            options=Options(train=train, float64=True))


def ember_outputs(model: str, inputs: dict[str, np.ndarray], params: dict[str, np.ndarray],
                  train: bool = False, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    x_name = NAMES[model][0]
    # in training mode batch norm also returns its updated running statistics
    logits = api.run(graph(model, "forward", train), {x_name: inputs[x_name]}, params,
                     seed)["forward"]
    loss = api.run(graph(model, "loss", train), inputs, params, seed)["loss"]
    return logits, loss


SIZES = ((2, 5), (3, 7))  # (B, T): two batch sizes / sequence lengths, one graph


# ---- float64: the oracle against torch ------------------------------------------

@pytest.mark.parametrize("model", MODEL_NAMES)
def test_eval_matches_torch_f64(model):
    params = perturb(api.init_params(graph(model, "loss"), seed=1), seed=1)
    # forward and loss declare the same parameters
    assert set(api.init_params(graph(model, "forward"), 0)) == set(params)
    m = torch_model(model, params)
    rng = np.random.default_rng(7)
    for b, t in SIZES:
        inputs = make_inputs(model, rng, b, t)
        logits, loss = ember_outputs(model, inputs, params)
        ref_logits, ref_loss = torch_outputs(m, model, inputs)
        assert logits.dtype == np.float64 and loss.shape == ()
        assert rel_err(logits, ref_logits) < TOL64, (model, b, t)
        assert rel_err(loss, ref_loss) < TOL64, (model, b, t)


def test_lstm_torch_model_matches_nn_lstm():
    """Cross-check the hand-written torch LSTM cell (gate order i, f, g, o) against
    torch.nn.LSTM, whose weights are the transposes of Ember's [in, 4H] layout."""
    params = perturb(api.init_params(graph("lstm", "forward"), seed=2), seed=2)
    ours = torch_model("lstm", params).lstm
    ref = nn.LSTM(8, 32, batch_first=True).double()
    with torch.no_grad():
        ref.weight_ih_l0.copy_(torch.from_numpy(params["lstm.w_ih"].T))
        ref.weight_hh_l0.copy_(torch.from_numpy(params["lstm.w_hh"].T))
        ref.bias_ih_l0.copy_(torch.from_numpy(params["lstm.b"]))
        ref.bias_hh_l0.zero_()
        x = torch.from_numpy(np.random.default_rng(3).standard_normal((3, 6, 8)))
        _, (h_n, _) = ref(x)
        assert rel_err(ours(x).numpy(), h_n[0].numpy()) < TOL64


def test_resnet_train_batch_stats_matches_torch_f64():
    # In train mode batch_norm normalizes with batch statistics and returns the
    # running statistics updated from them (`new.<buffer>`), as torch's in-place update.
    params = perturb(api.init_params(graph("resnet", "loss"), seed=4), seed=4)
    assert set(api.init_params(graph("resnet", "loss", True), 0)) == set(params)
    rng = np.random.default_rng(8)
    for b, t in SIZES:
        m = torch_model("resnet", params, train=True)
        inputs = make_inputs("resnet", rng, b, t)
        logits, loss = ember_outputs("resnet", inputs, params, train=True)
        ref_logits, ref_loss = torch_outputs(m, "resnet", inputs)
        assert rel_err(logits, ref_logits) < TOL64, b
        assert rel_err(loss, ref_loss) < TOL64, b
        outs = api.run(graph("resnet", "forward", True), {"x": inputs["x"]}, params)
        buffers = {k: v for k, v in m.state_dict().items() if ".running_" in k}
        assert sorted(f"new.{k}" for k in buffers) == sorted(o for o in outs if o != "forward")
        for k, v in buffers.items():
            assert rel_err(outs[f"new.{k}"], v.numpy()) < TOL64, k
            assert rel_err(outs[f"new.{k}"], params[k]) > 1e-3, k  # they did move
        # train mode really differs from eval (batch vs running statistics)
        eval_logits, _ = ember_outputs("resnet", inputs, params)
        assert rel_err(eval_logits, ref_logits) > 1e-3


def _stream(g: Graph) -> str:
    (stream,) = [n.attrs["stream"] for n in g.nodes if n.op is Op.RAND]
    return stream


def test_mlp_train_dropout_matches_torch_f64():
    params = perturb(api.init_params(graph("mlp", "loss", True), seed=5), seed=5)
    m = torch_model("mlp", params, train=True)
    rng = np.random.default_rng(9)
    for seed, (b, t) in zip((3, 11), SIZES):
        inputs = make_inputs("mlp", rng, b, t)
        logits, loss = ember_outputs("mlp", inputs, params, train=True, seed=seed)
        # Rebuild the mask: element i of the [B, HIDDEN] activation is kept iff
        # rand(stream_seed(run seed, stream name), i) >= p.
        fwd_stream = _stream(graph("mlp", "forward", True))
        # forward inlined into loss: the same dropout site, the same stream
        assert _stream(graph("mlp", "loss", True)) == fwd_stream
        keep = dropout_keep(stream_seed(seed, fwd_stream), (b, m.HIDDEN), m.P_DROP)
        assert 0 < keep.sum() < keep.size
        m.keep = torch.from_numpy(keep)
        ref_logits, ref_loss = torch_outputs(m, "mlp", inputs)
        assert rel_err(logits, ref_logits) < TOL64, (seed, b)
        assert rel_err(loss, ref_loss) < TOL64, (seed, b)
        # dropout is active: train differs from eval, and the seed changes the mask
        assert rel_err(ember_outputs("mlp", inputs, params)[0], logits) > 1e-3
        other, _ = ember_outputs("mlp", inputs, params, train=True, seed=seed + 1)
        assert rel_err(other, logits) > 1e-3


# ---- float32: the CLI round trip --------------------------------------------------
# Both sides compute in float32 with different reduction orders (NumPy's matmul /
# conv vs torch's kernels), so they differ by rounding only: a few ulps (~1e-7)
# times sqrt(reduction length) and the depth of the model. rtol 1e-4 leaves
# hundreds of ulps of headroom while still catching any real semantic
# difference (those show up at 1e-2 or more); atol 1e-5 covers outputs near zero,
# where cancellation makes the relative error meaningless.
RTOL32, ATOL32 = 1e-4, 1e-5


def _cli_run(model: str, tmp_path, params_file: str) -> tuple[dict, dict, dict]:
    inputs = make_inputs(model, np.random.default_rng(13), 2, 5, np.float32)
    x_name = NAMES[model][0]
    in_file = tmp_path / "inputs.npz"
    np.savez(in_file, **{x_name: inputs[x_name]})
    p_file, out_file = tmp_path / params_file, tmp_path / "out.npz"
    cmd = [sys.executable, "-m", "ember", "run", f"models/{model}.ember", "--backend", "numpy",
           "--dims", "B=2,T=5" if model in ("lstm", "transformer") else "B=2", "--inputs",
           str(in_file), "--save-params", str(p_file),
           "-o", str(out_file)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    with np.load(out_file) as f:
        outs = {k: f[k] for k in f.files}
    if p_file.suffix == ".safetensors":
        from safetensors.numpy import load_file
        params = load_file(str(p_file))
    else:
        with np.load(p_file) as f:
            params = {k: f[k] for k in f.files}
    return inputs, params, outs


@pytest.mark.parametrize("model", MODEL_NAMES)
def test_cli_round_trip_matches_torch_f32(model, tmp_path):
    inputs, params, outs = _cli_run(model, tmp_path, "params.npz")
    assert all(v.dtype == np.float32 for v in params.values())
    assert list(outs) == ["forward"] and outs["forward"].dtype == np.float32
    ref, _ = torch_outputs(torch_model(model, params), model, inputs)
    np.testing.assert_allclose(outs["forward"], ref, rtol=RTOL32, atol=ATOL32)


def test_cli_round_trip_safetensors_f32(tmp_path):
    pytest.importorskip("safetensors")
    inputs, params, outs = _cli_run("transformer", tmp_path, "params.safetensors")
    assert all(v.dtype == np.float32 for v in params.values())
    ref, _ = torch_outputs(torch_model("transformer", params), "transformer", inputs)
    np.testing.assert_allclose(outs["forward"], ref, rtol=RTOL32, atol=ATOL32)
