"""Train: host -> key -> per-user watermark embedding -> distributed models -> verification.

    python train.py                              # mnist5k + small CNN + FingerMarks, 4 users, on CPU
    python train.py data=digits users=[alice,bob] seed=3
    python train.py -m seed=1,2                  # a Hydra multirun (hydra/launcher=submitit_local|slurm)
    python train.py verbose=true                 # Lightning's banners, warnings and progress bars too
"""

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from fingermarks import quiet
from fingermarks.errors import one_line_errors


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
@one_line_errors
def main(cfg: DictConfig) -> None:
    # torch and Lightning load only once Hydra accepted the command line (a bad option fails in a second),
    # and before quiet.configure, which tames the loggers Lightning sets up on import
    from fingermarks.pipeline import run

    quiet.configure(cfg.get("verbose", False), cfg)
    run(cfg, HydraConfig.get().runtime.output_dir)


if __name__ == "__main__":
    main()
