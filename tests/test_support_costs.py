"""support.peak_memory against allocations whose sizes are known exactly; median_time's thread clock."""

import pytest
import torch

from stabkit.support import peak_memory


def _two_live_then_one(n):
    a = torch.ones(n)
    b = torch.ones(n)  # peak: a and b, 8n bytes
    del a
    c = torch.ones(n)  # b and c: again 8n
    return float((b + c).sum())  # b, c and the sum: 12n


@pytest.mark.parametrize("n", [1000, 4096, 100_000])
def test_peak_counts_the_tensors_live_together(n):
    peak = peak_memory(lambda: _two_live_then_one(n))
    assert peak.value == 2 * n
    assert 12 * n <= peak.peak_bytes <= 12 * n + 256  # the scalar sum and its conversion


def test_freed_tensors_do_not_add_up():
    def sequential(n, k):
        for _ in range(k):
            x = torch.ones(n)
            del x

    single = peak_memory(lambda: sequential(10_000, 1)).peak_bytes
    many = peak_memory(lambda: sequential(10_000, 10)).peak_bytes
    assert single == many == 40_000


def test_returned_tensors_count_and_matmul_workspace_is_seen():
    x = torch.randn(64, 128)
    peak = peak_memory(lambda: x @ x.T)
    assert peak.value.shape == (64, 64)
    assert peak.peak_bytes >= 64 * 64 * 4


def test_backward_memory_grows_with_the_batch():
    layer = torch.nn.Linear(256, 256)

    def step(b):
        layer.zero_grad(set_to_none=True)
        layer(torch.randn(b, 256, generator=torch.Generator().manual_seed(0))).relu().sum().backward()

    small, large = (peak_memory(lambda b=b: step(b)).peak_bytes for b in (16, 256))
    assert large > small + (256 - 16) * 256 * 4  # at least one more activation of the batch


def test_median_time_thread_clock_ignores_waiting():
    import time

    from stabkit.support import median_time

    wall = median_time(lambda: time.sleep(0.02), repeats=3)
    thread = median_time(lambda: time.sleep(0.02), repeats=3, clock="thread")
    assert wall.seconds >= 0.02
    assert thread.seconds < 0.01  # sleeping costs no CPU time
    with pytest.raises(ValueError, match="clock"):
        median_time(lambda: None, clock="process")


def test_peak_memory_keeps_the_profiler_log_out_of_the_output(capfd):
    peak_memory(lambda: torch.ones(10))
    out, err = capfd.readouterr()
    assert "profiler" not in out + err
