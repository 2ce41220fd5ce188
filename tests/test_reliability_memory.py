"""Generated kernels never read or write outside their buffers, whatever the data.

The only addresses a kernel computes from data are a gather's row (`table[ids]`)
and an index by a runtime scalar (`x[k]`); codegen/checks.py clamps both and
records their range, and the launcher raises the oracle's located error. Each
case runs in Triton's interpreter with canaries on both sides: the data-indexed
tensor sits inside a canary-filled block, so a load past either end would copy
a canary into the output, and every kernel buffer comes from a `GuardedPool`,
so a store past either end overwrites one. Outputs are read from the pool even
when the launch raises, to prove the kernels ran on clamped indices.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from test_reliability_files import ember  # tests/test_reliability_files.py
from util import MODELS, compile_src  # tests/util.py

torch = pytest.importorskip("torch")
pytest.importorskip("triton")

from ember import api  # noqa: E402 - after the importorskips on purpose
from ember.ir.loc import DSLError  # noqa: E402
from ember.runtime.pool import CANARY, GuardedPool  # noqa: E402
from ember.runtime.triton_backend import TritonProgram  # noqa: E402

GUARD = 64
TABLE = np.arange(12, dtype=np.float32).reshape(4, 3)  # no value equals CANARY


def guarded(a: np.ndarray) -> torch.Tensor:
    """`a` as a view into a block whose GUARD elements either side are CANARY."""
    block = torch.full((a.size + 2 * GUARD,), CANARY, dtype=torch.float32)
    block[GUARD:GUARD + a.size] = torch.from_numpy(a.ravel())
    return block[GUARD:GUARD + a.size].view(a.shape)


def run_guarded(src: str, inputs: dict[str, np.ndarray], data: str
                ) -> tuple[DSLError | None, GuardedPool]:
    """Run on the kernels with input `data` canary-guarded; the error raised (if
    any) and the pool, whose canaries and outputs must be clean either way."""
    g = compile_src(src, float64=False)
    pool = GuardedPool()
    args = {k: guarded(v) if k == data else torch.from_numpy(v) for k, v in inputs.items()}
    try:
        TritonProgram(g)(args, {}, pool=pool)
        error = None
    except DSLError as e:
        error = e
    assert pool.check() == []
    for block, n in pool.blocks:
        written = block[pool.guard:pool.guard + n]
        assert not bool((written == CANARY).any()), "a kernel read outside the indexed tensor"
    return error, pool


def oracle_error(src: str, inputs: dict[str, np.ndarray]) -> str:
    with pytest.raises(DSLError) as e:
        api.run(compile_src(src, float64=False), inputs, {})
    return str(e.value)


GATHER = "model M {{ def forward(table: f32[4, 3], ids: i32[N]) {{ return {} }} }}"
CASES = {
    "id past the end": (GATHER.format("table[ids]"), [0, 5, 1]),
    "negative id": (GATHER.format("table[ids]"), [0, -1]),
    "ids far outside": (GATHER.format("table[ids]"), [3, 100000000, -100000000]),
    "ids computed in the kernel": (GATHER.format("table[ids + 2]"), [0, 1, 2]),
    "gather in a matmul's K loop": (
        GATHER.format("transpose(table[ids]) @ table[ids]"), [0, 9]),
    "gather in a reduction": (GATHER.format("sum(exp(table[ids]), axis=0)"), [-3, 2]),
}


@pytest.mark.parametrize("case", CASES)
def test_out_of_range_ids_give_the_oracles_error_and_stay_in_bounds(case: str) -> None:
    src, ids = CASES[case]
    inputs = {"table": TABLE, "ids": np.array(ids, np.int32)}
    error, _ = run_guarded(src, inputs, "table")
    assert error is not None
    assert str(error) == oracle_error(src, inputs)


def test_ids_in_range_still_match_the_oracle() -> None:
    src = GATHER.format("table[ids] * 2.0")
    inputs = {"table": TABLE, "ids": np.array([3, 0, 2, 2, 1], np.int32)}
    error, pool = run_guarded(src, inputs, "table")
    assert error is None
    got = pool.blocks[-1][0][pool.guard:pool.guard + 15].numpy().reshape(5, 3)
    np.testing.assert_array_equal(got, TABLE[[3, 0, 2, 2, 1]] * 2)


def test_a_table_with_no_rows_is_never_read() -> None:
    src = "model M { def forward(table: f32[V, 3], ids: i32[N]) { return table[ids] + 1.0 } }"
    inputs = {"table": np.zeros((0, 3), np.float32), "ids": np.array([0, 0], np.int32)}
    error, _ = run_guarded(src, inputs, "table")
    assert error is not None and "must be in [0, 0)" in error.message


def test_an_empty_axis_is_never_read_by_a_runtime_index() -> None:
    src = "model M { def forward(x: f32[T, 3], k: i32[]) { return x[k] + 1.0 } }"
    inputs = {"x": np.zeros((0, 3), np.float32), "k": np.array(0, np.int32)}
    error, _ = run_guarded(src, inputs, "x")
    assert error is not None and "index must be in [0, 0), found 0" in error.message


@pytest.mark.parametrize("k", [7, 4, -1])
def test_index_by_a_runtime_scalar_is_checked(k: int) -> None:
    src = "model M { def forward(x: f32[4, 3], k: i32[]) { return x[k] * 2.0 } }"
    inputs = {"x": TABLE, "k": np.array(k, np.int32)}
    error, _ = run_guarded(src, inputs, "x")
    assert error is not None
    assert str(error) == oracle_error(src, inputs)
    assert f"index must be in [0, 4), found {k}" in str(error)


def test_a_loop_counter_past_the_axis_is_checked() -> None:
    src = """model M { def forward(x: f32[4, 3]) {
      let s = zeros(3)
      for t in range(6) { s = s + x[t] }
      return s
    } }"""
    error, _ = run_guarded(src, {"x": TABLE}, "x")
    assert error is not None
    # the kernels report the largest counter seen, the oracle the first bad step
    assert str(error).split("found")[0] == oracle_error(src, {"x": TABLE}).split("found")[0]
    assert str(error.loc) == "test.ember:3:35"


def test_cross_entropy_labels_address_nothing() -> None:
    # the label lookup is a one-hot compare, so a bad label reads no memory;
    # both backends agree that it contributes 0
    src = ("model M { def forward(x: f32[3, 4], y: i32[3]) { return cross_entropy(x, y) } }")
    x = np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4)
    inputs = {"x": x, "y": np.array([1, 100000000, -5], np.int32)}
    error, pool = run_guarded(src, inputs, "x")
    assert error is None
    want = api.run(compile_src(src, float64=False), inputs, {})["forward"]
    got = pool.blocks[-1][0][pool.guard].item()
    assert abs(got - float(want)) <= 1e-4 + 1e-4 * abs(float(want))  # float32 tolerance


# ---- through the command line ---------------------------------------------------------------

def test_cli_bad_ids_exit_1_with_the_oracles_error(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "e.ember").write_text(
        "model E {\n  param table: f32[4, 3] = normal\n"
        "  def forward(ids: i32[N]) -> f32[N, 3] { return table[ids] }\n}\n")
    np.save(tmp_path / "ids.npy", np.array([0, 100000000], np.int32))
    runs = [ember(capsys, "run", "e.ember", "--input", "ids=ids.npy", "--backend", b)
            for b in ("numpy", "triton")]
    assert [rc for rc, _ in runs] == [1, 1]
    assert runs[0][1] == runs[1][1]
    assert runs[1][1].startswith("e.ember:3:50: error: embedding ids must be in [0, 4), "
                                 "found values in [0, 100000000]")


def test_cli_gpt_longer_than_its_position_table(capsys: pytest.CaptureFixture[str]) -> None:
    rc, err = ember(capsys, "run", str(MODELS / "transformer.ember"), "--dims", "B=1,T=33",
                    "--backend", "triton")
    assert rc == 1, err
    assert "transformer.ember:65:24: error: embedding ids must be in [0, 32), found values " \
           "in [0, 32]" in err
