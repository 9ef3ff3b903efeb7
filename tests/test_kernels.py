"""The compiled GRU recurrence (qllm.rl.kernels) against torch.nn.GRU, its fallback, and the process
settings that training makes (qllm.rl.tuning): numpy's BLAS threads and the allocator's."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator

import pytest
import torch
import torch.nn.functional as F

from qllm.rl import kernels
from qllm.rl.agent import RNNAgent


@pytest.fixture
def reloaded_kernels() -> Iterator[None]:
    """:func:`kernels.available` asked afresh inside the test, and again by the tests after it."""
    kernels.available.cache_clear()
    yield
    kernels.available.cache_clear()


def _recurrence_and_reference(steps: int, batch: int, units: int, dtype: torch.dtype = torch.float32):
    torch.manual_seed(steps * 100 + batch)
    gru = torch.nn.GRU(units, units).to(dtype)
    x = torch.randn(steps, batch, units, dtype=dtype, requires_grad=True)
    reference, _ = gru(x)
    gates_in = F.linear(x, gru.weight_ih_l0, gru.bias_ih_l0)
    compiled = kernels.gru_recurrence(gates_in, gru.weight_hh_l0, gru.bias_hh_l0)
    return gru, x, reference, compiled


def test_the_kernel_is_built_and_loaded_here() -> None:
    # Otherwise every other test of training would quietly exercise the nn.GRU fallback instead.
    assert kernels.available()
    assert kernels.library_path().exists()


@pytest.mark.parametrize(("steps", "batch", "units"), [(1, 1, 1), (7, 3, 5), (51, 64, 64)])
def test_the_recurrence_computes_torch_grus_hidden_states_and_gradients(steps: int, batch: int, units: int):
    gru, x, reference, compiled = _recurrence_and_reference(steps, batch, units)
    torch.testing.assert_close(compiled, reference, rtol=1e-6, atol=1e-6)

    upstream = torch.randn_like(reference)
    wrt = [x, *gru.parameters()]
    expected = torch.autograd.grad(reference, wrt, upstream)
    got = torch.autograd.grad(compiled, wrt, upstream)
    for name, e, g in zip(["input", *(n for n, _ in gru.named_parameters())], expected, got, strict=True):
        # Sums over T x B products in another order: float32 rounding relative to the gradient's scale.
        scale = float(e.abs().max())
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-6 * scale, msg=lambda m, n=name: f"{n}: {m}")


def test_the_recurrences_gradient_matches_finite_differences_in_double_precision() -> None:
    torch.manual_seed(0)
    units = 4
    gates_in = torch.randn(6, 3, 3 * units, dtype=torch.float64, requires_grad=True)
    w_hh = torch.randn(3 * units, units, dtype=torch.float64, requires_grad=True)
    b_hh = torch.randn(3 * units, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(kernels.gru_recurrence, (gates_in, w_hh, b_hh))


def test_shapes_that_do_not_fit_are_refused_with_what_was_expected() -> None:
    w_hh, b_hh = torch.zeros(12, 4), torch.zeros(12)
    with pytest.raises(RuntimeError, match=r"last dimension must be 3H = 12"):
        kernels.gru_recurrence(torch.zeros(5, 2, 9), w_hh, b_hh)
    with pytest.raises(RuntimeError, match=r"T > 0"):
        kernels.gru_recurrence(torch.zeros(0, 2, 12), w_hh, b_hh)


def test_the_agent_unrolls_through_the_kernel_as_through_nn_gru(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(1)
    agent = RNNAgent(input_dim=9, n_actions=4, hidden_dim=16)
    inputs = torch.randn(5, 11, 3, 9)  # [B, T, n, D]
    compiled = agent.unroll(inputs)
    compiled_grads = torch.autograd.grad(compiled.square().sum(), list(agent.parameters()))
    monkeypatch.setattr(kernels, "available", lambda: False)
    reference = agent.unroll(inputs)
    reference_grads = torch.autograd.grad(reference.square().sum(), list(agent.parameters()))
    torch.testing.assert_close(compiled, reference, rtol=1e-6, atol=1e-6)
    for got, expected in zip(compiled_grads, reference_grads, strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6 * float(expected.abs().max()))


def test_without_a_compiler_training_falls_back_to_nn_gru_and_says_so_once(
    monkeypatch: pytest.MonkeyPatch, tmp_path, capsys: pytest.CaptureFixture[str], reloaded_kernels: None
) -> None:
    monkeypatch.setenv("QLLM_CACHE", str(tmp_path))  # nothing built there yet
    monkeypatch.setenv("CXX", "false")  # a compiler that always fails
    with pytest.raises(kernels.KernelBuildError, match="the compiler failed"):
        kernels.build()
    assert not kernels.available()
    assert not kernels.available()
    said = capsys.readouterr().err
    assert said.count("training uses torch.nn.GRU") == 1
    assert not list((tmp_path / "kernels").glob("*.so"))  # no half-written library left to load

    torch.manual_seed(2)
    agent = RNNAgent(input_dim=6, n_actions=3, hidden_dim=8)
    q = agent.unroll(torch.randn(2, 4, 2, 6))
    assert q.shape == (2, 4, 2, 3) and torch.isfinite(q).all()


def test_the_setting_disables_the_kernel(monkeypatch: pytest.MonkeyPatch, reloaded_kernels: None) -> None:
    monkeypatch.setenv(kernels.DISABLE_ENV, "0")
    assert not kernels.available()


MEMORY_RETURNED_BY_AN_UPDATE = textwrap.dedent(
    """
    import ctypes, ctypes.util, sys, torch
    from qllm.rl.tuning import tune_process
    class MallInfo2(ctypes.Structure):  # glibc's struct mallinfo2, in its order
        _fields_ = [(name, ctypes.c_size_t) for name in (
            "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
            "keepcost",
        )]
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    libc.mallinfo2.restype = MallInfo2
    def held():  # what the allocator holds from the system: its heap and its own mappings
        info = libc.mallinfo2()
        return info.arena + info.hblkhd
    if sys.argv[1] == "training":  # what training sets up (the GRU kernel off: not needed here)
        tune_process(1, torch.device("cpu"))
    def update():  # an update's life: large tensors alive at once, then all freed
        alive = [torch.ones(10 << 20) for _ in range(2)]
        at_peak = held()
        del alive
        return at_peak - held()
    update()
    print(update())
    """
)


def _bytes_returned_by_an_update(mode: str) -> int:
    """What the C allocator gave back to the system when an update's tensors were freed."""
    environment = {**os.environ, kernels.DISABLE_ENV: "0"}
    done = subprocess.run(
        [sys.executable, "-c", MEMORY_RETURNED_BY_AN_UPDATE, mode],
        capture_output=True,
        text=True,
        check=True,
        env=environment,
    )
    return int(done.stdout.strip())


def test_training_holds_numpys_blas_to_its_thread_count() -> None:
    # Otherwise OpenBLAS runs acting's small products on every core, slower, and spins on the cores
    # the collector and the learner need. A child process, so this test's setting stays its own.
    script = textwrap.dedent(
        """
        import json, threadpoolctl, torch
        from qllm.rl.tuning import tune_process
        tune_process(1, torch.device("cpu"))
        pools = threadpoolctl.threadpool_info()
        print(json.dumps([pool["num_threads"] for pool in pools if pool["user_api"] == "blas"]))
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    blas_threads = json.loads(done.stdout)
    assert blas_threads and set(blas_threads) == {1}, done.stdout


def test_training_keeps_freed_memory_so_the_next_update_does_not_fault_its_pages_in_again() -> None:
    # Two 40 MB tensors: by default glibc gives blocks past 32 MB their own mapping and unmaps it when
    # they are freed, so the next update faults every page in again; training keeps them. Smaller
    # blocks are no test: by default glibc kept 4 MB ones too in some processes (0 page faults on the
    # CI machine, 38 MB held free here in a long test session), as the heap's other blocks lay.
    assert _bytes_returned_by_an_update("default") >= 80 << 20
    assert _bytes_returned_by_an_update("training") < 1 << 20
