"""Torch threads on a shared CPU (protgo.compute.ThreadGovernor)."""

import pytest
import torch

from protgo import compute


@pytest.fixture
def torch_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def readings(*rows):
    """A ``sample`` that returns (wall s, machine busy core-s, own core-s) rows in turn."""
    it = iter(rows)
    return lambda: next(it)


def test_threads_follow_the_cores_other_processes_leave(torch_threads, monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    gov = compute.ThreadGovernor(every_s=10, sample=readings(
        (0, 0, 0),
        (5, 10, 5),     # too soon: nothing read, nothing changed
        (20, 70, 30),   # 20 s: 70 core-s taken, 30 of them ours -> 2 cores busy elsewhere
        (40, 100, 50),  # the other work ended: 30 taken, all ours
        (60, 175, 50),  # more busy than there are cores: still one thread
    ))  # fmt: skip
    gov.cores = 4
    torch.set_num_threads(4)
    gov.tick()
    assert torch.get_num_threads() == 4
    gov.tick()
    assert torch.get_num_threads() == 2
    gov.tick()
    assert torch.get_num_threads() == 4
    gov.tick()
    assert torch.get_num_threads() == 1


def test_a_set_thread_count_is_kept(torch_threads, monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    gov = compute.ThreadGovernor(threads=1, sample=readings((0, 0, 0), (20, 40, 0)))
    gov.tick()
    assert torch.get_num_threads() == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    torch.set_num_threads(3)
    gov = compute.ThreadGovernor(sample=readings((0, 0, 0), (20, 40, 0)))
    gov.tick()
    assert torch.get_num_threads() == 3


def test_the_machine_reading_is_sane():
    got = compute._cpu_busy()
    if got is None:
        pytest.skip("/proc/stat does not describe this process's cores here")
    wall, taken, own = got
    assert wall > 0 and taken >= 0 and own > 0
