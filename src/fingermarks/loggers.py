"""Loggers from the `logger` config group: CSV per stage, or **one wandb run per job**.

wandb (`logger=wandb`, offline; `logger=wandb_online`): a job (one `train.py` run, or one job of a Hydra
multirun) is one wandb run, started when the job starts and finished when it ends:

- its config is the job's composed Hydra config (without the `hydra` node), plus `choices` (the config
  group choices: `choices.method`, `choices.data`, `choices.attack`, `choices.model`, ...) and `job`
  (Hydra's job name and number, output and sweep dirs), so a dashboard filters and groups runs by method,
  attack, data and seed; the same choices are tags (`method=fingermarks`);
- its group is the sweep (Hydra's sweep dir) in a multirun, the job name (`train`) otherwise; its
  job_type the job name; the sweep's collector (`fingermarks.hydra_callbacks`) adds a `collect` run to
  the group;
- every training inside the job (host, reference and null models, each user's embedding, attacks) logs
  into that run under its own prefix and step: `<stage>/<metric>` against `<stage>/step`; its
  hyper-parameters go to the run's config under `stages.<stage>`;
- robustness curves: `robust/<measure>` against `robust/strength` (`evaluation.robustness.log_curves_wandb`);
- at the end, the job's summary (accuracies, embedding cost, verdicts) goes to the run's summary.

One run rather than a run per training: a dashboard's unit is the experiment (method x attack x data x
seed), and only the job knows its composed config; runs per stage would repeat the config in each and
flood the run table with host and null-model rows that are not comparable across methods.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Callable, Mapping

from hydra.utils import instantiate
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)

#: Lightning WandbLogger arguments that are not wandb.init arguments
_LIGHTNING_ONLY = ("log_model", "prefix", "checkpoint_name", "experiment", "add_file_policy", "offline", "anonymous")
#: config groups shown as tags and in the run name
TAGGED_GROUPS = ("method", "data", "model", "attack")
#: a wandb group, name or tag is cut (from the left) to this many characters
_MAX_LEN = {"group": 128, "name": 128, "tag": 64}


def is_wandb(cfg: DictConfig | Mapping | None) -> bool:
    return bool(cfg) and "wandb" in str(cfg.get("_target_", "")).lower()


def _tail(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[-limit:]


def _hydra() -> DictConfig | None:
    from hydra.core.hydra_config import HydraConfig

    return HydraConfig.get() if HydraConfig.initialized() else None


def sweep_group(hydra_cfg: DictConfig | None) -> str:
    """The wandb group of a job: its sweep dir in a multirun, its job name otherwise. The jobs of a sweep and
    its collector (which sees the sweep's config) compute the same string."""
    if hydra_cfg is None:
        return "train"
    mode = str(OmegaConf.select(hydra_cfg, "mode", default="") or "")
    if mode.endswith("MULTIRUN"):
        return _tail(str(hydra_cfg.sweep.dir), _MAX_LEN["group"])
    return str(OmegaConf.select(hydra_cfg, "job.name", default="train") or "train")


def group_choices(hydra_cfg: DictConfig | None) -> dict[str, Any]:
    """The config group choices of the job (method, data, model, attack, logger, ...), Hydra's own left out."""
    choices = OmegaConf.select(hydra_cfg, "runtime.choices", default=None) if hydra_cfg is not None else None
    if not choices:
        return {}
    return {str(k): v for k, v in OmegaConf.to_container(choices).items() if not str(k).startswith("hydra")}


def job_config(job_cfg: DictConfig | None, hydra_cfg: DictConfig | None) -> dict[str, Any]:
    """What the job's run carries as wandb config: the composed config (resolved; `hydra` node left out),
    `choices` and `job`."""
    config: dict[str, Any] = {}
    if job_cfg is not None:
        for name in job_cfg:
            if name == "hydra":
                continue
            try:
                node = job_cfg[name]
                config[name] = OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node
            except Exception as exc:  # an interpolation that does not resolve here: keep it as written
                log.debug("wandb config: %s not resolved (%s)", name, exc)
                config[name] = OmegaConf.to_container(job_cfg, resolve=False).get(name)
    config["choices"] = group_choices(hydra_cfg)
    if hydra_cfg is not None:
        multirun = str(OmegaConf.select(hydra_cfg, "mode", default="") or "").endswith("MULTIRUN")
        config["job"] = {
            "name": OmegaConf.select(hydra_cfg, "job.name", default=None),
            "num": OmegaConf.select(hydra_cfg, "job.num", default=None) if multirun else None,
            "override_dirname": OmegaConf.select(hydra_cfg, "job.override_dirname", default=None),
            "output_dir": OmegaConf.select(hydra_cfg, "runtime.output_dir", default=None),
            "sweep_dir": str(hydra_cfg.sweep.dir) if multirun else None,
        }
    return config


def _run_name(config: dict[str, Any]) -> str:
    choices = config.get("choices", {})
    parts = [str(choices[g]) for g in TAGGED_GROUPS if choices.get(g) and g != "model"]
    if "seed" in config:
        parts.append(f"seed{config['seed']}")
    num = (config.get("job") or {}).get("num")
    name = "/".join(parts) or "train"
    return _tail(name if num is None else f"{num}:{name}", _MAX_LEN["name"])


def _tags(config: dict[str, Any]) -> list[str]:
    choices = config.get("choices", {})
    return [_tail(f"{g}={choices[g]}", _MAX_LEN["tag"]) for g in TAGGED_GROUPS if choices.get(g)]


def init_kwargs(cfg: DictConfig, **overrides: Any) -> dict[str, Any]:
    """wandb.init arguments from a `logger` config written for Lightning's WandbLogger (`save_dir` -> `dir`,
    `version` -> `id`, `offline: true` -> `mode: offline`); `overrides` win and are not resolved."""
    cfg = OmegaConf.merge(cfg, {k: v for k, v in overrides.items() if k in cfg})  # no interpolation left to resolve there
    kwargs = OmegaConf.to_container(cfg, resolve=True)
    kwargs.update({k: v for k, v in overrides.items() if k not in cfg})
    kwargs.pop("_target_", None)
    if kwargs.pop("offline", False):
        kwargs.setdefault("mode", "offline")
    if "save_dir" in kwargs:
        kwargs["dir"] = kwargs.pop("save_dir")
    if "version" in kwargs:
        kwargs["id"] = kwargs.pop("version")
    for name in _LIGHTNING_ONLY:
        kwargs.pop(name, None)
    if kwargs.get("dir"):
        Path(kwargs["dir"]).mkdir(parents=True, exist_ok=True)
    return {k: v for k, v in kwargs.items() if v is not None}


class _JobRun:
    """The job's one wandb run (rank zero only) and the stages that logged into it."""

    def __init__(self, cfg: DictConfig, job_cfg: DictConfig | None):
        import wandb

        hydra_cfg = _hydra()
        config = job_config(job_cfg, hydra_cfg)
        self.init = init_kwargs(cfg)
        self.init.setdefault("group", sweep_group(hydra_cfg))
        self.init.setdefault("job_type", (config.get("job") or {}).get("name") or "train")
        self.init.setdefault("name", _run_name(config))
        self.init["tags"] = list(self.init.get("tags") or []) + _tags(config)
        if wandb.run is not None:  # a run left open (an earlier job in this process that failed)
            wandb.finish()
        self.run = wandb.init(config=config, **self.init)
        self.stages: dict[str, int] = {}

    def stage(self, name: str) -> str:
        """A unique prefix for the stage (a second training under the same name gets `name~2`)."""
        self.stages[name] = self.stages.get(name, 0) + 1
        return name if self.stages[name] == 1 else f"{name}~{self.stages[name]}"


_JOB: _JobRun | None = None


class StageWandbLogger(WandbLogger):
    """Lightning's WandbLogger writing one stage's metrics into the job's run: `<stage>/<metric>` against
    `<stage>/step`, hyper-parameters under `stages.<stage>` in the run's config."""

    def __init__(self, stage: str, run, init: dict[str, Any]):
        super().__init__(experiment=run, project=init.get("project"), save_dir=init.get("dir"))
        self.stage = stage
        # a worker process (ddp_spawn) attaches to this run; should attaching fail, it resumes it by id
        self._wandb_init = dict(init, id=getattr(run, "id", None), resume="allow")
        if run is not None:
            run.define_metric(f"{stage}/step", hidden=True)
            run.define_metric(f"{stage}/*", step_metric=f"{stage}/step")

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        row = {f"{self.stage}/{k}": v for k, v in metrics.items()}
        if step is not None:
            row[f"{self.stage}/step"] = step
        self.experiment.log(row)

    @rank_zero_only
    def log_hyperparams(self, params) -> None:
        from lightning.fabric.utilities.logger import (
            _convert_json_serializable, _convert_params, _sanitize_callable_params)

        params = _convert_json_serializable(_sanitize_callable_params(_convert_params(params)))
        stages = dict(self.experiment.config.get("stages") or {})
        stages[self.stage] = params
        self.experiment.config.update({"stages": stages}, allow_val_change=True)

    @property
    def version(self) -> str | None:  # its own checkpoint folder per stage
        base = super().version
        return f"{base}-{self.stage}" if base else self.stage


def start_job(cfg: DictConfig | None, job_cfg: DictConfig | None = None):
    """Start the job's wandb run now (rank zero; no-op for other loggers or when one is open); return it."""
    global _JOB
    from fingermarks.distributed import is_rank_zero

    if not is_wandb(cfg) or not is_rank_zero():
        return None
    if _JOB is None or _JOB.run is None:
        _JOB = _JobRun(cfg, job_cfg)
    return _JOB.run


def logger_factory(cfg: DictConfig | None, job_cfg: DictConfig | None = None) -> Callable[[str], Any]:
    """Return `make(stage)`: a logger for one stage (a training of the job), or None when logging is off.

    CSV: a fresh logger named after the stage. wandb: a Lightning logger writing into the job's one run
    (started here when `job_cfg`, the composed config it carries, is given; else at the first stage);
    `finish(summary)` ends it.
    """
    if job_cfg is not None:
        start_job(cfg, job_cfg)

    def make(stage: str):
        if not cfg:
            return None
        if is_wandb(cfg):
            run = start_job(cfg, job_cfg)
            if _JOB is None:  # not rank zero: Lightning's rank-zero guards make it a dummy
                return StageWandbLogger(stage, None, init_kwargs(cfg))
            return StageWandbLogger(_JOB.stage(stage), run, _JOB.init)
        return instantiate(cfg, name=stage)

    return make


def summary_metrics(summary: Mapping[str, Any], max_models: int = 50) -> dict[str, float]:
    """The numbers of a job's summary.json a dashboard compares: host, key, per-user embedding and verdicts
    (per model for at most `max_models`, means always), uniqueness."""
    out: dict[str, float] = {}

    def put(key: str, value: Any) -> None:
        if isinstance(value, bool):
            out[key] = int(value)
        elif isinstance(value, (int, float)) and not (isinstance(value, float) and math.isnan(value)):
            out[key] = value

    for k in ("clean_acc", "train_seconds", "epochs"):
        put(f"host/{k}", (summary.get("host") or {}).get(k))
    for k in ("n_triggers", "min_distance", "keygen_seconds"):
        put(f"key/{k}", (summary.get("key") or {}).get(k))
    put("verify_seconds", summary.get("verify_seconds"))
    users = summary.get("users") or {}
    fields = ("clean_acc", "acc_drop", "embed_seconds", "embed_epochs", "all_matched")
    for k in fields:
        values = [u[k] for u in users.values() if isinstance(u.get(k), (int, float))]
        if values:
            put(f"users/mean_{k}", sum(float(v) for v in values) / len(values))
    if len(users) <= max_models:
        for name, u in users.items():
            for k in fields:
                put(f"users/{name}/{k}", u.get(k))
    reports = summary.get("verification") or {}
    if users:
        put("verify/users_owned", sum(bool((reports.get(u) or {}).get("owned")) for u in users) / len(users))
        put("verify/users_traced", sum((reports.get(u) or {}).get("traced_user") == u for u in users) / len(users))
    if len(reports) <= max_models + 1:
        for name, rep in reports.items():
            for k in ("owned", "match_rate", "bit_acc", "p_value", "hamming", "margin"):
                put(f"verify/{name}/{k}", rep.get(k))
    unique = summary.get("uniqueness") or {}
    for k in ("owned", "mean_match_rate", "max_match_rate", "min_p_value"):
        put(f"uniqueness/{k}", unique.get(k))
    return out


def finish(summary: Mapping[str, Any] | None = None) -> None:
    """End the job's wandb run (its summary gets `summary_metrics(summary)`), and any other open wandb run."""
    global _JOB
    job, _JOB = _JOB, None
    try:
        import wandb
    except ImportError:
        return
    if job is not None and job.run is not None:
        if summary:
            try:
                job.run.summary.update(summary_metrics(summary))
            except Exception as exc:  # the summary is written to summary.json anyway
                log.warning("wandb: could not log the job's summary: %s", exc)
        job.run.finish()
    if wandb.run is not None:
        wandb.finish()


def log_sweep(config: DictConfig, sweep_dir: str | Path, paths: Mapping[str, Path]) -> bool:
    """Log a collected sweep (tables, the robustness figure, the Markdown summaries) to wandb as a `collect`
    run in the sweep's group, written under the sweep dir. `config` is the sweep's config (Hydra's node
    included); nothing happens (False) unless its logger is wandb."""
    logger_cfg = config.get("logger")
    if not is_wandb(logger_cfg):
        return False
    import html

    import pandas as pd
    import wandb

    hydra_cfg = config.get("hydra")
    sweep_dir = Path(sweep_dir)
    choices = group_choices(hydra_cfg)
    params = OmegaConf.select(hydra_cfg, "sweeper.params", default=None) if hydra_cfg is not None else None
    tasks = OmegaConf.select(hydra_cfg, "overrides.task", default=None) if hydra_cfg is not None else None
    init = init_kwargs(logger_cfg, save_dir=str(sweep_dir))
    init.setdefault("group", sweep_group(hydra_cfg))
    init["job_type"] = "collect"
    init.setdefault("name", _tail(f"collect:{sweep_dir.name}", _MAX_LEN["name"]))
    config_dict = {"choices": choices, "sweep": {"dir": str(sweep_dir),
                   "params": OmegaConf.to_container(params) if params else {},
                   "overrides": list(tasks) if tasks else []}}
    if wandb.run is not None:
        wandb.finish()
    run = wandb.init(config=config_dict, **init)
    try:
        row: dict[str, Any] = {}
        for kind, path in paths.items():
            path = Path(path)
            if path.suffix == ".png":
                row[f"sweep/{path.stem}"] = wandb.Image(str(path))
            elif path.suffix == ".csv":
                row[f"sweep/{path.stem}"] = wandb.Table(dataframe=pd.read_csv(path))
            elif path.suffix == ".md":
                row[f"sweep/{path.stem}"] = wandb.Html(f"<pre>{html.escape(path.read_text())}</pre>")
        run.log(row)
        for path in paths.values():  # the files themselves, as written
            run.save(str(path), base_path=str(Path(path).parent), policy="now")
    finally:
        run.finish()
    return True


def read_offline_run(run_dir: str | Path, wait: float = 30.0) -> dict[str, Any]:
    """What an offline wandb run recorded, read back from its `run-<id>.wandb` file (wandb 0.31 writes no
    config.yaml or wandb-summary.json offline, and ships no Python reader): `group`, `job_type`, `name`,
    `tags`, `id`, `config` (nested dict), `summary` (dict; nested keys joined with '/'), `history` (list of
    dicts), `metrics` ({name or glob: step metric}), `files` (paths saved into the run) and `complete`
    (the run's exit record is there). For tests, and to look at a run before `wandb sync`.

    The file is written by wandb-core, another process, which may still be flushing when `finish()` has
    returned: a torn last record or a missing exit record is read again, for up to `wait` seconds.
    """
    import time

    path = next(Path(run_dir).glob("run-*.wandb"))
    deadline = time.monotonic() + wait
    while True:
        raw = path.read_bytes()
        if raw[:4] != b":W&B":
            raise ValueError(f"{path}: not a wandb run file")
        out = _parse_wandb_records(raw)
        if out is not None and out["complete"]:
            return out
        if time.monotonic() >= deadline:
            if out is None:
                raise ValueError(f"{path}: a record is cut short after waiting {wait:g} s for the writer")
            return out  # a run that never finished (a killed job): what it wrote
        time.sleep(0.2)


def _parse_wandb_records(raw: bytes) -> dict[str, Any] | None:
    """The records of a wandb run file's bytes; None where the last one is cut short (still being written)."""
    import json
    import struct

    from google.protobuf.message import DecodeError
    from wandb.proto import wandb_internal_pb2 as pb

    block, pos, chunk = 32768, 7, b""  # a LevelDB-style log: 7-byte header, records in 32 KiB blocks
    out: dict[str, Any] = {"config": {}, "summary": {}, "history": [], "metrics": {}, "files": [], "complete": False}

    def items(updates) -> dict[str, Any]:
        return {(u.key or "/".join(u.nested_key)): json.loads(u.value_json) for u in updates}

    def set_config(updates) -> None:  # config keys may come as paths (nested_key): set them where they belong
        for u in updates:
            keys = [u.key] if u.key else list(u.nested_key)
            node = out["config"]
            for part in keys[:-1]:
                if not isinstance(node.get(part), dict):
                    node[part] = {}
                node = node[part]
            node[keys[-1]] = json.loads(u.value_json)

    while pos + 7 <= len(raw):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", raw[pos:pos + 7])
        pos += 7
        if kind == 0 and length == 0:  # zero padding to the end of the block
            pos += left - 7
            continue
        if pos + length > len(raw):
            return None
        chunk += raw[pos:pos + length]
        pos += length
        if kind not in (1, 4):  # FIRST and MIDDLE parts of a record that spans blocks
            continue
        record = pb.Record()
        try:
            record.ParseFromString(chunk)
        except DecodeError:
            return None
        chunk = b""
        what = record.WhichOneof("record_type")
        if what == "run":
            run = record.run
            out.update(group=run.run_group, job_type=run.job_type, name=run.display_name, tags=list(run.tags),
                       id=run.run_id)
            set_config(run.config.update)
        elif what == "config":
            set_config(record.config.update)
        elif what == "summary":
            out["summary"].update(items(record.summary.update))
        elif what == "history":
            out["history"].append(items(record.history.item))
        elif what == "metric":
            out["metrics"][record.metric.name or record.metric.glob_name] = record.metric.step_metric or None
        elif what == "files":
            out["files"] += [f.path for f in record.files.files]
        elif what == "exit":
            out["complete"] = True
    return out if not chunk else None
