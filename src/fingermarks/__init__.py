"""FingerMarks: black-box multi-bit watermarking for DNN ownership and leak tracing.

The Python API for verification (names load on first use, so `import fingermarks` stays light)::

    import fingermarks as fm

    key = fm.load_key("outputs/run/key.pt")                      # the owner's secret key (checked, digest verified)
    report = fm.verify(key, "found/model.onnx")                   # a file, a URL, an nn.Module or a Suspect
    report.owned, report.traced_user, report.p_value              # the verdict and its evidence (fm.Report)
    report = fm.verify(key, "oip+http://10.0.0.5:8080/classifier", http={"timeout": 30})

    suspect = fm.open_suspect("tfserving+http://10.0.0.5:8501/m") # labels(x) and outputs(x) (scores, if given)
    results = fm.verify_many(key, "found/")                       # a folder, a list or a file of URLs; never raises
    fm.write_reports(results, "reports/")                         # JSON + HTML evidence page each, verdicts.csv/.md

- `load_key(path) -> Key`
- `open_suspect(spec, http=None, protocol="auto") -> Suspect`: `.labels(x)`, and `.outputs(x)` where it can
- `verify(key, suspect, *, http=None, protocol="auto", expected_user=None) -> Report`: raises
  `SuspectError`/`KeyFileError` (one-line messages) when the suspect cannot be verified; `key` may be a
  list of keys of one host (e.g. FingerMarks + UAP): one combined verdict, each key's report inside
- `verify_labels(key, labels) -> Report`: the verdict on labels you obtained yourself
- `verify_many(key, suspects, *, http=None, protocol="auto", workers=8) -> list[Verification]`: servers
  in parallel; a failure is an incomplete `Verification` (`.verdict == "incomplete"`, `.error`)
- `write_reports(verifications, out_dir, key=None, key_material=False)`, `render_html(verification)`,
  `write_html(verification, path)`: the evidence pages (no key material unless `key_material=True`)
- `load_model(path) -> nn.Module`, `export_onnx(model, path, input_shape)`: the distributed model files
See `examples/verify_api.py`.

The owner's side, keygen and embedding, is the chain `train.py` runs (`fingermarks.pipeline`), one call
per step, on the config `train.py` would see for the same overrides (Hydra's, composed from `conf/`)::

    owner = fm.owner("outputs/api", ["data=digits", "users=[alice,bob]"])   # config, data, trainer, model cache
    host, info = fm.train_host(owner)                  # trained once and cached (or host.ckpt=<file> in overrides)
    key = fm.make_key(owner, host)                     # the secret key, written to outputs/api/key.pt
    model, info = fm.embed(owner, host, key, "alice")  # alice's watermarked copy (nn.Module) and its record
    files = fm.distribute(owner, host, key)            # every user: users/<name>/model.onnx (+ .ckpt, embed.json)
    fm.verify(key, files["bob"]).traced_user           # 'bob'

- `owner(out_dir, overrides=(), *, config_dir=None) -> Owner`: `.cfg` (the composed config), `.ctx` (data,
  trainer, cache), `.method`, `.out_dir` (the run directory: what `hydra.run.dir` is for `train.py`)
- `train_host(owner) -> (nn.Module, info)`: the host (cached by data, architecture, recipe and seed),
  written to `host.ckpt`
- `make_key(owner, host, users=None) -> Key`: keygen for `users` (a count, a list of names; default the
  config's `users`), written to `key.pt` (never overwritten unless `overwrite_key=true`); the secret comes
  from the OS unless `key_secret=<passphrase>` (reproducible on purpose, then not a secret)
- `embed(owner, host, key, user) -> (nn.Module, info)`: one registered user's copy, written to
  `users/<user>/model.ckpt`, `model.onnx` and `embed.json` (and cached: the same key, user and method
  config give the same model); raises `ConfigError` for a user the key does not register
- `distribute(owner, host, key, users=None) -> {user: Path of model.onnx}`: every (or the given)
  registered user; users embedded before in `out_dir` are skipped
See `examples/embed_api.py`.
"""

from __future__ import annotations

import atexit
import importlib
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

__version__ = "0.1.0"


def _release_process_group() -> None:
    """Destroy a still-open torch.distributed process group at interpreter exit.

    Lightning does this for NCCL only; a gloo group left to the interpreter's teardown (the workers of
    `ddp_spawn` on CPU) can abort its process ("terminate called without an active exception",
    SIGABRT) after a fit that went well. Every spawned worker imports this package, so each gets the
    handler; torch is looked up, never imported, so `import fingermarks` stays light.
    """
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


atexit.register(_release_process_group)

_LAZY = {
    "Key": "fingermarks.key", "load_key": "fingermarks.key",
    "Report": "fingermarks.evidence.report",
    "Suspect": "fingermarks.suspects", "open_suspect": "fingermarks.suspects",
    "verify_labels": "fingermarks.verification",
    "Verification": "fingermarks.reports", "render_html": "fingermarks.reports", "write_html": "fingermarks.reports",
    "write_reports": "fingermarks.reports", "collect_suspects": "fingermarks.reports",
    "load_model": "fingermarks.model_io", "export_onnx": "fingermarks.model_io",
    "FingermarksError": "fingermarks.errors", "SuspectError": "fingermarks.errors", "KeyFileError": "fingermarks.errors",
}

__all__ = ["__version__", "verify", "verify_many", "Owner", "owner", "train_host", "make_key", "embed",
           "distribute", *_LAZY]

if TYPE_CHECKING:  # what the lazy names are, for readers and type checkers
    from omegaconf import DictConfig
    from torch import nn

    from fingermarks.context import RunContext
    from fingermarks.methods.base import WatermarkMethod
    from fingermarks.errors import FingermarksError, KeyFileError, SuspectError  # noqa: F401
    from fingermarks.evidence.report import Report
    from fingermarks.key import Key, load_key  # noqa: F401
    from fingermarks.model_io import export_onnx, load_model  # noqa: F401
    from fingermarks.reports import Verification, collect_suspects, render_html, write_html, write_reports  # noqa: F401
    from fingermarks.suspects import Suspect, open_suspect  # noqa: F401
    from fingermarks.verification import verify_labels  # noqa: F401


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'fingermarks' has no attribute '{name}'")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


def _key(key: "Key | str | os.PathLike") -> "Key":
    from fingermarks.key import Key, load_key

    return key if isinstance(key, Key) else load_key(key)


def _keys(key) -> "tuple[Key | list[Key], str | list[str] | None]":
    """One key, or a list of keys (one combined verdict), with their paths where given as paths."""
    if isinstance(key, (list, tuple)):
        paths = [str(k) if isinstance(k, (str, os.PathLike)) else None for k in key]
        return [_key(k) for k in key], (paths if all(paths) else None)
    return _key(key), (str(key) if isinstance(key, (str, os.PathLike)) else None)


def verify(key: "Key | str | os.PathLike | Sequence[Key | str | os.PathLike]", suspect: Any, *,
           http: Mapping | None = None, protocol: str = "auto", expected_user: str | None = None) -> "Report":
    """The verdict on one suspect (a model file, an `.onnx` file, a server URL, an `nn.Module`, or an opened
    Suspect), queried once with the key's triggers (scores where the key's rule reads them and the suspect
    gives them, else labels). A list of keys of one host gives one combined verdict: owned when any key says
    owned, Holm's p-value over the keys, each key's report in `evidence["keys"]`. Errors raise, as one-line
    `FingermarksError`s."""
    from fingermarks.reports.record import verify_one

    keys, key_path = _keys(key)
    return verify_one(keys, suspect if not isinstance(suspect, os.PathLike) else str(suspect), http=http,
                      protocol=protocol, expected_user=expected_user, key_path=key_path, catch=False).report


def verify_many(key: "Key | str | os.PathLike | Sequence[Key | str | os.PathLike]",
                suspects: "str | os.PathLike | Sequence[str]", *, http: Mapping | None = None, protocol: str = "auto", workers: int = 8) -> list["Verification"]:
    """Verify many suspects (a folder, a comma list, a file of URLs/paths, or a list): servers in parallel on
    `workers` threads. Nothing raises for one suspect: a failure is an incomplete Verification."""
    from fingermarks.reports import collect_suspects
    from fingermarks.reports.batch import verify_many as run_many

    keys, key_path = _keys(key)
    skip = [] if key_path is None else [key_path] if isinstance(key_path, str) else key_path
    items = collect_suspects(suspects if isinstance(suspects, (str, os.PathLike)) else [str(s) for s in suspects],
                             skip=skip)
    return run_many(keys, items, http=http, protocol=protocol, workers=workers, key_path=key_path)


# -- the owner's side: host, key, embedding (the steps of fingermarks.pipeline.run) ------------------------

class Owner:
    """The owner's side of a run outside `train.py`: the composed config (`cfg`), the run's shared services
    (`ctx`: data, trainer, model cache, logger), the watermarking method and the run directory (`out_dir`).
    Made by `owner(...)`."""

    def __init__(self, cfg: "DictConfig", out_dir: "str | os.PathLike") -> None:
        from hydra.utils import instantiate

        from fingermarks.pipeline import make_context

        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.cfg = cfg
        self.ctx: RunContext = make_context(cfg, self.out_dir)
        self.method: WatermarkMethod = instantiate(cfg.method)

    def __repr__(self) -> str:
        return f"Owner({self.method.name}, data={self.ctx.datamodule.name}, out_dir={str(self.out_dir)!r})"


def owner(out_dir: "str | os.PathLike", overrides: Sequence[str] = (), *,
          config_dir: "str | os.PathLike | None" = None) -> Owner:
    """The config `train.py` would compose for `overrides` (from the project's `conf/`, or `config_dir`), with
    `out_dir` as the run directory, and the services and method it names. Model caching works as for
    `train.py` (`cache_dir=`, `$FINGERMARKS_CACHE`, `.cache/`)."""
    from fingermarks.hydra_compose import compose_run_config

    conf = Path(config_dir) if config_dir is not None else Path(__file__).resolve().parents[2] / "conf"
    if not (conf / "config.yaml").is_file():
        from fingermarks.errors import ConfigError

        raise ConfigError(f"no config.yaml in {conf}: pass config_dir= (the project's conf/ folder)")
    out_dir = Path(out_dir).resolve()
    return Owner(compose_run_config(conf, list(overrides), out_dir, job_name="api"), out_dir)


def train_host(owner: Owner) -> "tuple[nn.Module, dict[str, Any]]":
    """The host model (trained once and cached, or the file given as `host.ckpt=`), written to `host.ckpt`."""
    from fingermarks.pipeline import obtain_host

    return obtain_host(owner.cfg, owner.ctx)


def make_key(owner: Owner, host: "nn.Module", users: "int | Sequence[str] | None" = None) -> "Key":
    """The secret key for `users` (a count: user1..userN, or names; default: the config's `users`), made by
    the configured method on `host` and written to `key.pt` in the run directory."""
    from fingermarks.pipeline import obtain_key, user_names

    names = user_names(owner.cfg.users if users is None else (list(users) if not isinstance(users, int) else users))
    return obtain_key(owner.cfg, owner.method, host, owner.ctx, names if owner.method.embeds else [])


def _embed(owner: Owner, host: "nn.Module", key: "Key", users: Sequence[str]):
    from fingermarks.errors import ConfigError
    from fingermarks.pipeline import distribute as run_distribute, select_users

    if not owner.method.embeds:
        raise ConfigError(f"method {owner.method.name} embeds nothing (a fingerprint): the host is the distributed model")
    return run_distribute(owner.cfg, owner.method, host, key, select_users(list(key.users), list(users)), owner.ctx)


def embed(owner: Owner, host: "nn.Module", key: "Key", user: str) -> "tuple[nn.Module, dict[str, Any]]":
    """One registered user's watermarked copy of `host` and the embedding's record (accuracy, epochs,
    seconds, history), written to `users/<user>/` (model.ckpt, model.onnx, embed.json) as `train.py` does."""
    infos, models = _embed(owner, host, key, [str(user)])
    return models[str(user)], infos[str(user)]


def distribute(owner: Owner, host: "nn.Module", key: "Key", users: "Sequence[str] | None" = None) -> dict[str, Path]:
    """Embed every registered user (or `users`) and write their files; returns each user's `model.onnx`
    path (the file to ship). Users already embedded for this key in the run directory are skipped."""
    names = list(key.users) if users is None else [str(u) for u in users]
    _embed(owner, host, key, names)
    return {u: owner.out_dir / "users" / u / "model.onnx" for u in names}

