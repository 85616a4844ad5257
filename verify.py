"""Verify suspect models against a key: is it ours (step 1), and which user leaked it (step 2).

    python verify.py key=outputs/.../key.pt suspect=outputs/.../users/user1/model.onnx
    python verify.py key=key.pt suspect=suspect.ckpt report=report.json html=report.html
    python verify.py key=key.pt suspect=http://127.0.0.1:8000/classify            # the simple JSON protocol
    python verify.py key=key.pt suspect=oip+http://127.0.0.1:8080/user1            # Open Inference Protocol (KServe v2)
    python verify.py key=key.pt suspect=torchserve+http://127.0.0.1:8080/user1     # TorchServe
    python verify.py key=key.pt suspect=tfserving+http://127.0.0.1:8501/user1      # TF-Serving REST
    python verify.py key=key.pt suspects=found/ report=reports/                    # many: a folder, [a,b], or a file of URLs
    python verify.py key=[fingermarks.pt,uap.pt] suspect=found.onnx                # one combined verdict over two keys

Each suspect is queried once on the key's n triggers: for top-1 labels, or for its scores where the key's
rule reads them (UAP fingerprints) and the suspect gives them. With `suspects=`, servers are
queried in parallel; `report=` gets one JSON and one HTML page per suspect and the table of verdicts
(verdicts.csv, verdicts.md). The exit status is 0 when every verification completed (owned or not), 1
when any is incomplete, 2 for bad input.
"""

import sys

import hydra
from omegaconf import DictConfig

from fingermarks import quiet
from fingermarks.errors import one_line_errors


@hydra.main(version_base="1.3", config_path="conf", config_name="verify")
@one_line_errors
def main(cfg: DictConfig) -> None:
    # torch loads only once Hydra accepted the command line, and before quiet.configure tames its loggers
    from fingermarks.reports.cli import verify_command

    quiet.configure(cfg.get("verbose", False))  # +verbose=true: every library's banner and warning
    status = verify_command(cfg)
    if status:
        sys.exit(status)


if __name__ == "__main__":
    main()
