"""`ember train` end to end: metrics, checkpoints, exact resume, fine-tuning
(--params, --reinit, --freeze), the Triton backend, and every input error as
one message with exit 1.

Each run is a few steps of the MLP (or LeNet) on digits or on 48 digits in
an .npz, so the file takes seconds.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from sklearn.datasets import load_digits

from ember import api, cli
from ember.lang.emitter import Options
from ember.runtime import trainer
from ember.runtime.params_io import load_params
from ember.runtime.schedules import Schedule, lr_at

MODELS = Path(__file__).resolve().parent.parent / "models"
MLP, LENET = str(MODELS / "mlp.ember"), str(MODELS / "lenet.ember")


def _digits_npz(path: Path, *shape: int) -> str:
    """48 digits as f64 pixels and i64 labels (converted on load)."""
    d = load_digits()
    np.savez(path, x=(d.data[:48] / 16).reshape(48, *shape), y=d.target[:48])
    return str(path)


@pytest.fixture
def small(tmp_path: Path) -> str:
    return _digits_npz(tmp_path / "small.npz", 64)


@pytest.fixture
def images(tmp_path: Path) -> str:
    return _digits_npz(tmp_path / "images.npz", 1, 8, 8)


def train(*args: str) -> int:
    return cli.main(["train", *args])


def _log(path: Path) -> tuple[list[dict], list[dict]]:
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return [r for r in rows if "step" in r], [r for r in rows if "step" not in r]


def test_digits_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ck, log, png = tmp_path / "c.safetensors", tmp_path / "m.jsonl", tmp_path / "c.png"
    rc = train(MLP, "--data", "digits", "--epochs", "1", "--batch-size", "256",
               "--lr", "3e-3", "--schedule", "cosine", "--warmup", "2", "--save", str(ck),
               "--log", str(log), "--plot", str(png))
    out = capsys.readouterr().out
    assert rc == 0 and "1438 training samples, 359 validation" in out
    assert "epoch 1/1  train loss" in out and "val accuracy" in out
    steps, epochs = _log(log)
    sched = Schedule("cosine", 3e-3, 6, warmup=2)
    assert [r["step"] for r in steps] == [1, 2, 3, 4, 5, 6]
    assert [r["lr"] for r in steps] == [lr_at(sched, k) for k in range(6)]
    assert all(r["grad_norm"] > 0 for r in steps)
    assert epochs[0]["epoch"] == 0 and 0.1 < epochs[0]["val_accuracy"] <= 1
    state = load_params(ck)
    assert state["optim.step"].shape == () and state["optim.step"].dtype == np.int64
    assert int(state["optim.step"]) == 6
    assert {"hidden.w", "optim.hidden.w.exp_avg", "optim.out.b.exp_avg_sq"} <= set(state)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _interrupt_at(monkeypatch: pytest.MonkeyPatch, step: int) -> None:
    """Ctrl-C as step `step` (0-based) is about to run."""
    real = trainer.step_seed

    def seed(s: int, k: int) -> int:
        if k == step:
            raise KeyboardInterrupt
        return real(s, k)
    monkeypatch.setattr(trainer, "step_seed", seed)


def test_ctrl_c_saves_and_resume_is_bit_identical(
        tmp_path: Path, small: str, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """Dropout, shuffling and a cosine schedule across an interrupt mid-epoch."""
    common = [MLP, "--data", small, "--epochs", "3", "--batch-size", "10", "--optimizer",
              "adamw", "--weight-decay", "0.1", "--schedule", "cosine", "--lr", "1e-2"]
    full, part = tmp_path / "full.safetensors", tmp_path / "part.safetensors"
    assert train(*common, "--save", str(full), "--log", str(tmp_path / "f")) == 0
    _interrupt_at(monkeypatch, 7)
    assert train(*common, "--save", str(part), "--log", str(tmp_path / "p")) == 130
    assert "interrupted at step 7: checkpoint (step 7) saved" in capsys.readouterr().err
    monkeypatch.undo()
    assert train(*common, "--resume", str(part), "--save", str(part),
                 "--log", str(tmp_path / "p")) == 0
    want, got = load_params(full), load_params(part)
    assert set(want) == set(got)
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)
    assert _log(tmp_path / "p")[0] == _log(tmp_path / "f")[0]  # every step, appended


def test_freeze_keeps_parameters_bit_identical(tmp_path: Path, images: str) -> None:
    init = tmp_path / "init.safetensors"
    params = api.init_model_params(api.parse_file(LENET), Options(), seed=3)
    save_file({k: torch.from_numpy(v) for k, v in params.items()}, str(init))
    ck = tmp_path / "c.safetensors"
    assert train(LENET, "--data", images, "--epochs", "1", "--batch-size", "16",
                 "--params", str(init), "--freeze", "conv*,fc1_b", "--save", str(ck)) == 0
    state = load_params(ck)
    for name, value in params.items():
        same = np.array_equal(state[name], value)
        # batch norm's running statistics are buffers: training updates them
        frozen = name.startswith("conv") and ".running_" not in name
        assert same == (frozen or name == "fc1_b"), name
    assert not any(k.startswith(("optim.conv", "optim.fc1_b")) for k in state)


def test_torch_state_dict_with_reinit(tmp_path: Path, small: str,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    """A PyTorch state dict (extra optim.* and num_batches_tracked ignored);
    --reinit 'out.*' takes the model's initializers (seed 4), seen through --freeze."""
    program = api.parse_file(MLP)
    loaded = api.init_model_params(program, Options(), seed=1)
    tensors = {k: torch.from_numpy(v) for k, v in loaded.items()}
    tensors |= {"optim.hidden.w.exp_avg": torch.zeros(64, 128),
                "bn.num_batches_tracked": torch.tensor(3)}
    save_file(tensors, str(tmp_path / "torch.safetensors"))
    ck = tmp_path / "c.safetensors"
    assert train(MLP, "--data", small, "--epochs", "1", "--params",
                 str(tmp_path / "torch.safetensors"), "--reinit", "out.*", "--freeze", "out.*",
                 "--seed", "4", "--save", str(ck)) == 0
    assert "ignored bn.num_batches_tracked, optim.hidden.w.exp_avg" in capsys.readouterr().out
    fresh, state = api.init_model_params(program, Options(), seed=4), load_params(ck)
    np.testing.assert_array_equal(state["out.w"], fresh["out.w"])
    assert not np.array_equal(state["hidden.w"], loaded["hidden.w"])


def test_triton_backend_matches_the_oracle(tmp_path: Path, small: str) -> None:
    """Two steps with dropout through the generated kernels (the interpreter
    here); float32 losses within the --check tolerance, 1e-4."""
    logs = {}
    for backend in ("numpy", "triton"):
        logs[backend] = tmp_path / f"{backend}.jsonl"
        assert train(MLP, "--data", small, "--epochs", "1", "--batch-size", "24",
                     "--backend", backend, "--log", str(logs[backend])) == 0
    want, got = (_log(logs[b])[0] for b in ("numpy", "triton"))
    np.testing.assert_allclose([r["loss"] for r in got], [r["loss"] for r in want], rtol=1e-4)


def _bad_npz(tmp_path: Path, **arrays: np.ndarray) -> str:
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    return str(path)


X, Y = np.zeros((8, 64), np.float32), np.arange(8, dtype=np.int32)


@pytest.mark.parametrize("make, message", [
    (lambda p: ["--data", _bad_npz(p, x=X)], "no array 'y'"),
    (lambda p: ["--data", _bad_npz(p, x=X, y=Y + 5)], r"label 'y' .* is 10 at index \(5,\)"),
    (lambda p: ["--data", _bad_npz(p, x=X * np.nan, y=Y)], "holds nan at index"),
    (lambda p: ["--data", _bad_npz(p, x=X[:, :8], y=Y)], r"expected f32\[B, 64\]"),
    (lambda p: ["--data", "digits", "--reinit", "out.*"], "--reinit .* needs --params"),
    (lambda p: ["--data", "digits", "--freeze", "hiden.*"], "'hiden.*' matches no name"),
    (lambda p: ["--data", "digits", "--dims", "B=4"], "--batch-size sets it"),
    (lambda p: ["--data", "digits", "--schedule", "onecycle", "--warmup", "3"],
     "warms up by itself"),
])
def test_bad_input_is_one_message(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                  make, message: str) -> None:  # type: ignore[no-untyped-def]
    assert train(MLP, *make(tmp_path)) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert len(re.findall(message, err)) == 1, err


def test_checkpoint_of_another_model_says_which(tmp_path: Path, small: str, images: str,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    ck = tmp_path / "lenet.safetensors"
    assert train(LENET, "--data", images, "--epochs", "1", "--batch-size", "48",
                 "--save", str(ck)) == 0
    assert train(MLP, "--data", small, "--resume", str(ck)) == 1
    err = capsys.readouterr().err
    assert "missing: hidden.bn.bias" in err and "unexpected: conv1.bn.bias" in err


def test_non_finite_loss_stops_and_keeps_the_checkpoint(
        tmp_path: Path, small: str, capsys: pytest.CaptureFixture[str]) -> None:
    ck = tmp_path / "c.safetensors"
    common = [MLP, "--data", small, "--batch-size", "8", "--optimizer", "sgd", "--save", str(ck)]
    assert train(*common, "--epochs", "1") == 0
    before = ck.read_bytes()
    assert train(*common, "--epochs", "2", "--lr", "1e30", "--resume", str(ck)) == 1
    err = capsys.readouterr().err
    assert "the loss is nan at step 8 (epoch 2); training stopped" in err
    assert "Traceback" not in err and ck.read_bytes() == before
    assert train(*common, "--epochs", "1", "--resume", str(ck)) == 1
    assert "already at step 6, the end of epoch 1" in capsys.readouterr().err
