"""Rank-zero work: the key and every file are made once, the other ranks wait and read them."""

from __future__ import annotations

import threading

import pytest

from fingermarks.distributed import global_rank, is_rank_zero, rank_zero_first
from fingermarks.files import atomic_write


@pytest.fixture
def rank(monkeypatch):
    for var in ("RANK", "SLURM_PROCID", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)

    def set_rank(value: int, var: str = "RANK") -> None:
        monkeypatch.setenv(var, str(value))

    return set_rank


def test_rank_comes_from_the_launchers_variables(rank):
    assert global_rank() == 0 and is_rank_zero()
    rank(3, "SLURM_PROCID")
    assert global_rank() == 3 and not is_rank_zero()
    rank(1, "RANK")
    assert global_rank() == 1


def test_rank_zero_makes_and_others_wait_for_the_file(rank, tmp_path):
    path = tmp_path / "key.pt"
    made = []

    def make():
        made.append(1)
        atomic_write(path, lambda tmp: open(tmp, "w").write("made"))
        return "made"

    assert rank_zero_first(path, make, lambda p: p.read_text()) == "made" and made == [1]
    path.unlink()
    rank(1)
    writer = threading.Timer(0.3, lambda: atomic_write(path, lambda tmp: open(tmp, "w").write("from rank 0")))
    writer.start()
    assert rank_zero_first(path, make, lambda p: p.read_text(), timeout=10, poll=0.05) == "from rank 0"
    assert made == [1]  # rank 1 made nothing


def test_a_rank_waiting_too_long_fails_with_the_reason(rank, tmp_path):
    rank(2)
    with pytest.raises(TimeoutError, match="rank 2 waited"):
        rank_zero_first(tmp_path / "never.pt", lambda: None, lambda p: None, timeout=0.2, poll=0.05)


def test_an_open_gloo_group_is_destroyed_at_exit(tmp_path):
    """A ddp_spawn worker that ends with its gloo group still open could abort at interpreter exit
    (SIGABRT after a good fit): importing fingermarks registers the exit handler that destroys it."""
    import subprocess
    import sys

    code = (
        "import atexit, torch.distributed as dist\n"
        # registered before fingermarks' handler, so it runs after it (atexit is last in, first out)
        "atexit.register(lambda: print('initialized at exit:', dist.is_initialized(), flush=True))\n"
        f"dist.init_process_group('gloo', init_method='file://{tmp_path / 'store'}', rank=0, world_size=1)\n"
        "import fingermarks\n"
        "assert dist.is_initialized()\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "initialized at exit: False" in proc.stdout
