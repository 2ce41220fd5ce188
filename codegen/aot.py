"""Ahead-of-time compilation of generated Triton kernels for a real GPU, without a GPU.

Job: take a generated kernel module (a real ``.py`` file), compile one ``@triton.jit``
function in it with ``triton.compile(ASTSource(...))`` for ``GPUTarget("cuda", arch, 32)``
and report the resources the kernel would need on the device, so the generator can
reject configurations that spill or do not fit before anything runs on a GPU.

Invariants:

* Compilation always happens in a SUBPROCESS (``sys.executable``) whose environment has
  ``TRITON_INTERPRET`` removed and ``TRITON_DEFAULT_FP_FUSION=1`` set. Tests import the
  generated modules with ``TRITON_INTERPRET=1``, which turns ``@triton.jit`` into an
  ``InterpretedFunction`` at import time; ``ASTSource`` needs a real ``JITFunction``. The
  worker imports each file under a fresh module name via
  ``importlib.util.spec_from_file_location`` so it never collides with the caller's copy.
* One subprocess serves a whole batch (:func:`compile_kernels`): interpreter start-up,
  the triton import and the NVIDIA backend initialisation cost ~0.6 s, a small kernel
  0.1-0.5 s. Inside the worker, kernels compile on a thread pool (one thread per CPU):
  Triton's MLIR passes and ptxas run without the GIL, so 2 threads on 2 cores nearly
  halve a batch. Files are imported once per worker, before the threads start.
* Every failure surfaces as :class:`AOTError` carrying the kernel name and the
  compiler's message: front-end errors (e.g. ``break``), ptxas errors, a crashed worker
  (it appends one flushed JSON line per finished kernel, so results before the crash
  survive and the error names the unfinished kernels) and a timeout (the worker's whole
  process group, ptxas included, is killed). Nothing hangs past ``timeout``.

How resources are measured (chosen because it works on a GPU-less machine AND on a hit in
Triton's own compile cache, where ptxas does not run and prints no ``-v`` log):

* ``registers`` and ``spills``: the bundled ``cuobjdump --dump-resource-usage`` (Triton's
  ``knobs.nvidia.cuobjdump``, shipped in ``triton/backends/nvidia/bin/``) on
  ``k.asm["cubin"]`` written to a temp file; ``REG:`` is registers per thread and
  ``STACK:`` the per-thread stack frame in bytes. ``spills`` IS THAT STACK SIZE, not
  spill-store + spill-load bytes: Triton kernels keep tensors in registers and inline
  every call, so a stack frame only exists to hold spilled registers (STACK > 0 exactly
  when ptxas reported spill stores, in every kernel we compared). Observed: 128x128x32
  fp32 ieee dot -> STACK 248 vs ptxas "248 bytes spill stores, 252 bytes spill loads";
  256x256x64 -> STACK 39720 vs 80328 + 78996. The gate "spills == 0" is the same.
* ``shared_bytes``: ``k.metadata.shared``, the dynamic shared memory Triton requests at
  launch and checks against the device limit (``CompiledKernel._init_handles``, which
  needs a driver, so AOT does not check it). The cubin's static ``SHARED:`` (1024 in the
  dot kernels, 0 in a vector add) is not included, matching Triton's own check.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

#: Max shared memory per block on H100 (227 KiB, opt-in), what Triton checks at launch.
SHARED_LIMIT = 232448
#: 32-bit registers per SM (and the per-block cap) on sm_80/sm_90.
REGISTER_FILE = 65536
WARP_SIZE = 32

_JOB_KEYS = ("path", "fn_name", "signature", "constexprs", "num_warps", "num_stages", "arch")
_WORKER_CMD = "from ember.codegen.aot import _worker_main; _worker_main()"


class AOTError(RuntimeError):
    """A kernel failed to compile ahead of time; ``kernel`` names it, ``message`` says why."""

    def __init__(self, kernel: str, message: str) -> None:
        super().__init__(f"AOT compile of kernel {kernel!r} failed:\n{message}")
        self.kernel = kernel
        self.message = message


@dataclass(frozen=True)
class KernelResources:
    """Per-kernel device resources; ``spills`` is the stack frame in bytes (0 = no spill)."""

    name: str
    registers: int
    spills: int
    shared_bytes: int
    num_warps: int
    tensor_cores: bool = False      # an mma or wgmma instruction in its PTX
    artifacts: str = ""             # Triton's cache directory holding its .ptx, .cubin, ...


def check_resources(r: KernelResources) -> list[str]:
    """Human-readable problems with ``r`` for an H100; empty when the kernel looks fine."""
    problems = []
    if r.spills > 0:
        problems.append(f"{r.name}: spills registers ({r.spills} bytes of stack per thread)")
    if r.shared_bytes > SHARED_LIMIT:
        problems.append(
            f"{r.name}: needs {r.shared_bytes} bytes of shared memory > limit {SHARED_LIMIT}"
        )
    block_regs = r.registers * WARP_SIZE * r.num_warps
    if block_regs > REGISTER_FILE:
        problems.append(
            f"{r.name}: {r.registers} registers x {WARP_SIZE * r.num_warps} threads = "
            f"{block_regs} > {REGISTER_FILE} registers per block"
        )
    return problems


# --------------------------------------------------------------------------- parent side


def compile_kernel(
    path: Path,
    fn_name: str,
    signature: dict[str, str],
    constexprs: dict[str, int | float | bool],
    num_warps: int = 4,
    num_stages: int = 2,
    arch: int = 90,
) -> KernelResources:
    """Compile ``fn_name`` from the file ``path`` for ``sm_<arch>`` and return its resources."""
    job = dict(
        path=path, fn_name=fn_name, signature=signature, constexprs=constexprs,
        num_warps=num_warps, num_stages=num_stages, arch=arch,
    )
    return compile_kernels([job])[0]


def compile_kernels(
    jobs: list[dict[str, Any]], threads: int | None = None, timeout: float = 600.0
) -> list[KernelResources]:
    """Compile several kernels in ONE subprocess; results are in the order of ``jobs``.

    Each job is a dict with the keyword arguments of :func:`compile_kernel` (``path``,
    ``fn_name``, ``signature``, ``constexprs``; optional ``num_warps``, ``num_stages``,
    ``arch``). ``threads`` compile threads run inside the worker (default: one per CPU);
    on 2 cores a batch of 12 kernels took 2.3 s with 2 threads vs 3.8 s with 1, worker
    start-up included (``TRITON_ALWAYS_COMPILE=1``). ``timeout``
    bounds the whole batch. Raises :class:`AOTError` for the first job that failed.
    """
    if not jobs:
        return []
    normalized = [_normalize_job(job) for job in jobs]
    threads = threads or os.cpu_count() or 1
    with tempfile.TemporaryDirectory(prefix="ember-aot-") as tmp:
        jobs_file, results_file = Path(tmp) / "jobs.json", Path(tmp) / "results.jsonl"
        jobs_file.write_text(json.dumps(normalized))
        output, failure = _run_worker(jobs_file, results_file, threads, timeout)
        results = _read_results(results_file)
    return [_to_resources(normalized, results, i, output, failure) for i in range(len(jobs))]


def _normalize_job(job: dict[str, Any]) -> dict[str, Any]:
    """Fill defaults and check the job up front so mistakes name the kernel, not the worker."""
    name = str(job.get("fn_name", "<unnamed>"))
    unknown = set(job) - set(_JOB_KEYS)
    if unknown:
        raise AOTError(name, f"unknown job keys {sorted(unknown)}")
    out = {"num_warps": 4, "num_stages": 2, "arch": 90, **job}
    if not isinstance(out.get("signature"), dict) or "path" not in out:
        raise AOTError(name, "a job needs 'path', 'fn_name' and a 'signature' dict")
    out["path"] = str(Path(out["path"]).resolve())
    out["constexprs"] = dict(out.get("constexprs") or {})
    wanted = {arg for arg, ty in out["signature"].items() if ty == "constexpr"}
    if wanted != set(out["constexprs"]):
        raise AOTError(
            name,
            f"constexpr args in signature {sorted(wanted)} != constexprs given "
            f"{sorted(out['constexprs'])}",
        )
    return out


def _worker_env() -> dict[str, str]:
    """The caller's environment minus the interpreter switch (see module docstring)."""
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)
    env["TRITON_DEFAULT_FP_FUSION"] = "1"
    return env


def _run_worker(
    jobs_file: Path, results_file: Path, threads: int, timeout: float
) -> tuple[str, str | None]:
    """Run the worker; return (its combined output, a failure description or None)."""
    cmd = [sys.executable, "-c", _WORKER_CMD, str(jobs_file), str(results_file), str(threads)]
    # A new session lets a timeout kill ptxas too, not just the Python worker.
    proc = subprocess.Popen(
        cmd, env=_worker_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, start_new_session=True,
    )
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        return output, f"timed out after {timeout:.0f} s"
    if proc.returncode != 0:
        return output, f"worker exited with status {proc.returncode}"
    return output, None


def _read_results(results_file: Path) -> dict[int, dict[str, Any]]:
    """Records by job index; a torn last line (worker killed mid-write) is ignored."""
    records: dict[int, dict[str, Any]] = {}
    if results_file.exists():
        for line in results_file.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            records[record["index"]] = record
    return records


def _to_resources(
    jobs: list[dict[str, Any]],
    results: dict[int, dict[str, Any]],
    i: int,
    output: str,
    failure: str | None,
) -> KernelResources:
    result = results.get(i)
    if result is None:
        # The worker died or timed out before finishing this job; with threads, any of the
        # unfinished kernels may be the culprit, so name them all.
        unfinished = [job["fn_name"] for j, job in enumerate(jobs) if j not in results]
        raise AOTError(
            jobs[i]["fn_name"],
            f"{failure or 'worker produced no result'}; unfinished kernels: {unfinished}\n"
            f"--- worker output (tail) ---\n{output[-4000:]}",
        )
    if "error" in result:
        raise AOTError(jobs[i]["fn_name"], result["error"])
    return KernelResources(**result["resources"])


# --------------------------------------------------------------------------- worker side


def _worker_main() -> None:
    """Subprocess entry: compile the jobs in argv[1], append a JSON line per job to argv[2].

    argv[3] is the number of compile threads. Triton supports compiling in threads (its
    own ``AsyncCompileMode`` does), and the MLIR passes and ptxas run without the GIL.
    """
    jobs = json.loads(Path(sys.argv[1]).read_text())
    threads = max(1, min(int(sys.argv[3]), len(jobs)))
    # Import every file up front, single-threaded: module import is not thread-safe.
    modules = {path: _import_or_error(path) for path in sorted({job["path"] for job in jobs})}
    lock = threading.Lock()
    with open(sys.argv[2], "a") as out:

        def run(index: int) -> None:
            record = _run_job(jobs[index], modules)
            record["index"] = index
            with lock:  # one flushed line per kernel: a later crash keeps earlier results
                out.write(json.dumps(record) + "\n")
                out.flush()

        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(run, range(len(jobs))))


def _run_job(job: dict[str, Any], modules: dict[str, Any]) -> dict[str, Any]:
    """Compile one job; every failure becomes an ``error`` record for that kernel only."""
    start = time.perf_counter()
    try:
        module = modules[job["path"]]
        if isinstance(module, BaseException):
            raise module
        record: dict[str, Any] = {"resources": asdict(_compile_job(job, module))}
    except Exception as exc:
        record = {"error": _describe(exc)}
    record["seconds"] = round(time.perf_counter() - start, 3)
    return record


def _describe(exc: BaseException) -> str:
    """The compiler's own message, with the exception type (and cause) for context."""
    text = "".join(traceback.format_exception_only(type(exc), exc)).strip()
    if exc.__cause__ is not None and str(exc.__cause__) not in text:
        text += "\ncaused by: " + "".join(
            traceback.format_exception_only(type(exc.__cause__), exc.__cause__)
        ).strip()
    return text


def _import_or_error(path: str) -> Any:
    """Import ``path`` under a fresh name (never the caller's module name), or the error."""
    stem = re.sub(r"\W", "_", Path(path).stem)
    name = f"_ember_aot_{hashlib.sha256(path.encode()).hexdigest()[:12]}_{stem}"
    try:
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:
            raise ImportError(f"cannot import {path}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses/inspect inside the module look it up
        spec.loader.exec_module(module)
        return module
    except Exception as exc:
        return exc


def _compile_job(job: dict[str, Any], module: Any) -> KernelResources:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    fn = getattr(module, job["fn_name"])
    if not isinstance(fn, triton.runtime.JITFunction):
        raise TypeError(f"{job['fn_name']} is a {type(fn).__name__}, not a @triton.jit function")
    signature = job["signature"]
    # Runtime specialisation reproduced AOT: torch allocations are 16-byte aligned, which
    # turns scalar loads into 128-bit vector loads (and changes register counts).
    attrs = {(i,): [["tt.divisibility", 16]] for i, ty in enumerate(signature.values())
             if ty.startswith("*")}
    src = ASTSource(fn, signature=signature, constexprs=job["constexprs"], attrs=attrs)
    kernel = triton.compile(
        src,
        target=GPUTarget("cuda", job["arch"], WARP_SIZE),
        options={"num_warps": job["num_warps"], "num_stages": job["num_stages"]},
    )
    registers, stack = _cubin_usage(kernel.asm["cubin"])
    return KernelResources(
        name=job["fn_name"], registers=registers, spills=stack,
        shared_bytes=int(kernel.metadata.shared), num_warps=int(kernel.metadata.num_warps),
        tensor_cores=bool(TENSOR_CORE_PTX.search(kernel.asm["ptx"])),
        artifacts=_cache_dir(kernel),
    )


#: Tensor-core instructions in PTX: mma.sync (sm_80 style) or wgmma (sm_90 warpgroups).
TENSOR_CORE_PTX = re.compile(r"^\s*(?:wgmma\.mma_async|mma\.sync)", re.MULTILINE)


def _cache_dir(kernel: Any) -> str:
    """Where Triton's compile cache keeps this kernel's artifacts ({name}.ptx,
    .cubin, .ttgir, ...), for anyone who wants to read them."""
    try:
        from triton.runtime.cache import get_cache_manager
        return str(get_cache_manager(kernel.hash).cache_dir)
    except Exception:  # an older or newer Triton without this API: say nothing
        return ""


def _cubin_usage(cubin: bytes) -> tuple[int, int]:
    """(REG, STACK) of the single kernel in ``cubin``, via the bundled cuobjdump."""
    from triton import knobs

    tool = knobs.nvidia.cuobjdump
    if tool is None:
        raise RuntimeError("Triton's bundled cuobjdump was not found")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        report = subprocess.run(
            [tool.path, "--dump-resource-usage", f.name],
            check=True, capture_output=True, text=True,
        ).stdout
    match = re.search(r"REG:(\d+)\s+STACK:(\d+)", report)
    if match is None:
        raise RuntimeError(f"unexpected cuobjdump output:\n{report}")
    return int(match.group(1)), int(match.group(2))
