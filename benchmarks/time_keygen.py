"""Time FingerMarks' trigger generation alone (the batched optimisation of the 4 x n candidates).

    python benchmarks/time_keygen.py [hydra overrides ...]

The host comes from the model cache (trained once); the candidates' sources come from a fixed
passphrase, so two commits can be compared on the same work: the printout gives the seconds, the
optimisation steps, the mean L-inf of the kept triggers and a checksum of their pixels (equal
checksums: the same triggers).
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from hydra.utils import instantiate

from compose import ROOT, compose_config
from fingermarks.pipeline import make_context, obtain_host
from fingermarks.secret import KeySecret


def main() -> None:
    out = Path(tempfile.mkdtemp(prefix="time-keygen-"))
    cfg = compose_config(["seed=0", f"cache_dir={ROOT / '.cache'}", "trainer.enable_progress_bar=false", *sys.argv[1:]], out)
    ctx = make_context(cfg, out)
    method = instantiate(cfg.method)
    host, _ = obtain_host(cfg, ctx)
    start = time.perf_counter()
    fp, report = method.generate(host, ctx, [], KeySecret.from_text("timing").generator("sources"))
    print(f"generation {time.perf_counter() - start:.1f} s, {report['steps']} steps, {report['candidates']} candidates, "
          f"L-inf mean {report['linf_mean']:.4f}, pixel checksum {float(fp['triggers'].sum()):.4f}")


if __name__ == "__main__":
    main()
