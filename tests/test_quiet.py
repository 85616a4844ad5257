"""What a run prints: a progress line per step of each stage and the summary table by default;
Lightning's banners, tips, warnings and progress bars only with verbose=true."""

from __future__ import annotations

from conftest import TINY, run_cli

# the default trainer's progress bars on (TINY turns them off), as a first run has them
FAST = [*(o for o in TINY if not o.startswith("trainer.enable_progress_bar")), "users=1", "host.recipe.epochs=3", "method.references=[]", "method.n_triggers=10"]
BANNERS = ("GPU available", "Tip", "Seed set to", "LeafSpec", "Trainer.fit` stopped")


def _run(tmp_path, *extra):
    # a cold cache each, so that every stage really trains
    proc = run_cli(["train.py", *FAST, f"hydra.run.dir={tmp_path / 'run'}", f"cache_dir={tmp_path / 'cache'}", *extra],
                   env={"OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_a_first_run_prints_stages_and_the_summary_only(tmp_path):
    proc = _run(tmp_path)
    out = proc.stdout + proc.stderr
    for banner in BANNERS:
        assert banner not in out, banner
    assert "Epoch" not in out and "it/s" not in out  # no per-training progress bars
    lines = proc.stdout.splitlines()
    assert any(line.startswith("[models 1] host: trained") for line in lines)
    assert any(line.startswith("[key] 10 triggers") for line in lines)
    assert any(line.startswith("[users 1/1] user1: embedded in") for line in lines)
    assert any(line.startswith("[verification] 2 models") for line in lines)
    assert any(line.startswith("user1 ") for line in lines) and any(line.startswith("host ") for line in lines)
    # the embedding's cost in units of the host's training time, per user
    header = next(line.split() for line in lines if line.startswith("model "))
    user1 = next(line.split() for line in lines if line.startswith("user1 "))
    seconds, x_host = float(user1[header.index("embed_s")]), float(user1[header.index("x_host")])
    assert seconds > 0 and x_host > 0
    assert "cached host's training time" not in proc.stdout  # the host was trained in this run
    assert proc.stderr.strip() == ""
    # the job's log file still has every stage
    assert "[users 1/1]" in (tmp_path / "run" / "train.log").read_text()


def test_verbose_shows_lightning_banners_again(tmp_path):
    out = (lambda p: p.stdout + p.stderr)(_run(tmp_path, "verbose=true"))
    assert "GPU available" in out and "Tip" in out and "Epoch" in out
    assert "[users 1/1] user1: embedded in" in out
