"""W&B run identity and flat config (tracking.py), checked on a real offline run's record file.

wandb 0.31 (wandb-core) writes no ``files/config.yaml``, ``wandb-summary.json`` or
``wandb-metadata.json`` in offline mode, and its Python ``datastore`` reader is gone; everything
is in the binary ``run-<id>.wandb`` file: W&B's LevelDB-style log (7-byte header ``:W&B`` +
magic + version, then 32 KiB blocks of CRC/length/type-framed chunks) of ``wandb_internal_pb2.Record``
protobufs. ``offline_records`` below reads it with wandb's own protobuf classes.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf, open_dict

from conftest import CONF_DIR, TINY_TRAIN, compose
from ttfnet_lightning.training.run import train
from ttfnet_lightning.training.tracking import FlatWandbLogger, flatten_config, override_tags, run_identity

_BLOCK = 32768
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def offline_records(path: Path) -> Iterator[Any]:
    """The ``wandb_internal_pb2.Record`` messages of an offline ``run-*.wandb`` file, in order."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B", data[:7]
    pos, pending = 7, b""
    while pos + 7 <= len(data):
        if _BLOCK - pos % _BLOCK < 7:  # a block's tail too short for a chunk header is padding
            pos += _BLOCK - pos % _BLOCK
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0 and length == 0:  # zero padding
            pos += _BLOCK - pos % _BLOCK
            continue
        pending += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (_FULL, _LAST):
            record = pb.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


def _finished_records(run_dir: Path, timeout: float = 60.0) -> list[Any]:
    """The run file's records once its closing ``exit`` record is there (wandb-core appends them
    asynchronously, on a loaded machine seconds after ``wandb.finish()`` returned), or after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        files = list(run_dir.glob("run-*.wandb"))
        try:
            records = list(offline_records(files[0])) if len(files) == 1 else []
        except Exception:  # a record being written
            if time.monotonic() > deadline:
                raise
            records = []
        if any(r.WhichOneof("record_type") == "exit" for r in records) or time.monotonic() > deadline:
            assert len(files) == 1, f"{run_dir}: {files}"
            return records
        time.sleep(0.5)


def read_offline_run(run_dir: Path) -> dict[str, Any]:
    """run record fields, final config and summary, metric definitions, history rows and logged
    artifacts (name, type, aliases, metadata, ``{path: size}``) of a finished offline run."""
    run: dict[str, Any] = {"config": {}, "summary": {}, "metrics": {}, "history": [], "artifacts": []}
    for rec in _finished_records(run_dir):
        kind = rec.WhichOneof("record_type")
        if kind == "run":
            r = rec.run
            run.update(
                group=r.run_group, job_type=r.job_type, tags=list(r.tags), name=r.display_name, project=r.project
            )
            run["config"].update({u.key: json.loads(u.value_json) for u in r.config.update})
        elif kind == "config":
            run["config"].update({u.key: json.loads(u.value_json) for u in rec.config.update})
            for item in rec.config.remove:
                run["config"].pop(item.key, None)
        elif kind == "summary":
            for u in rec.summary.update:
                run["summary"][u.key or "/".join(u.nested_key)] = json.loads(u.value_json)
        elif kind == "metric":
            m = rec.metric
            run["metrics"][m.name or m.glob_name] = m.step_metric
        elif kind == "artifact":
            a = rec.artifact
            files = {e.path: e.size for e in a.manifest.contents}
            run["artifacts"].append((a.name, a.type, list(a.aliases), json.loads(a.metadata or "{}"), files))
        elif kind == "history":
            run["history"].append(
                {it.key or "/".join(it.nested_key): json.loads(it.value_json) for it in rec.history.item}
            )
    return run


@pytest.fixture
def hydra_job():
    """Pretend to be a Hydra job: compose with the Hydra config and register it as HydraConfig
    (what @hydra.main does), so train() sees real task overrides and the run mode."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    def make(overrides: list[str]):
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = hydra_compose("train", overrides=overrides, return_hydra_config=True)
        HydraConfig.instance().set_config(cfg)
        with open_dict(cfg):
            del cfg["hydra"]
        return cfg

    yield make
    HydraConfig.instance().cfg = None


def test_flatten_config_gives_flat_scalar_keys():
    flat = flatten_config(
        compose("train", ["kernel.beta=0.3", "schedule.lr=0.01", "data.datamodule.input_size=[96,96]"])
    )
    assert flat["kernel.beta"] == 0.3 and flat["backbone.name"] == "r18" and flat["schedule.lr"] == 0.01
    assert flat["table"] is None and flat["group"] is None
    assert flat["data.datamodule.input_size"] == "[96, 96]"  # lists as text: groupable
    assert all(isinstance(v, (str, int, float, bool, type(None))) for v in flat.values())
    assert "kernel" not in flat and "hydra" not in flat


def test_run_identity_without_hydra():
    plain = compose("train", ["tags=[mine]"])
    assert run_identity(plain) == {
        "name": "r18-fast-shapes-ttfnet",
        "group": None,
        "job_type": "train",
        "tags": ["mine"],
    }
    assert run_identity(compose("train", ["group=g"]))["group"] == "g"
    table = compose("train", ["table={name:table2,protocol:cpu}", "tags=[mine]"])
    ident = run_identity(
        table, overrides=["kernel.beta=0.3", "+seed=1", "output_dir=/tmp/x", "~callbacks", "experiment=table2"]
    )
    assert ident == {
        "name": "r18-fast-shapes-ttfnet",  # overrides given: not a sweep job, cfg.name
        "group": "table2-cpu",
        "job_type": "ablation",
        "tags": ["mine", "table2", "protocol=cpu", "kernel.beta=0.3", "seed=1", "experiment=table2"],
    }
    # explicit group wins, job_type/group from the table dict when given
    table = compose("train", ["table={name:table4,protocol:paper,job_type:speed}", "group=mine"])
    assert run_identity(table, overrides=[]) == {
        "name": "r18-fast-shapes-ttfnet",
        "group": "mine",
        "job_type": "speed",
        "tags": ["table4", "protocol=paper"],
    }
    assert override_tags(["data.datamodule.root=" + "x" * 64, "schedule=2x"]) == ["schedule=2x"]


def write_multirun_yaml(sweep: Path, task: list[str], params: dict | None = None) -> Path:
    """The ``multirun.yaml`` Hydra's basic sweeper writes into a sweep dir before its first job (the
    parts read back: the command line and the sweeper's params)."""
    sweep.mkdir(parents=True, exist_ok=True)
    mr = {"hydra": {"overrides": {"task": task}, "sweeper": {"params": params}}}
    OmegaConf.save(OmegaConf.create(mr), sweep / "multirun.yaml")
    return sweep


def test_run_identity_of_a_plain_multirun_job(hydra_job, tmp_path):
    """``-m kernel.beta=0.3,0.54 schedule.lr=0.01 logger=wandb``, job 0: only the swept value is a
    tag and names the run; the constant schedule.lr is neither."""
    sweep = write_multirun_yaml(tmp_path / "sw1", ["kernel.beta=0.3,0.54", "schedule.lr=0.01", "logger=wandb"])
    job = ["kernel.beta=0.3", "schedule.lr=0.01", "logger=wandb", "hydra.mode=MULTIRUN", f"hydra.sweep.dir={sweep}"]
    assert run_identity(hydra_job([*job, "hydra.job.num=0"])) == {
        "name": "beta=0.3",
        "group": "sweep-sw1",
        "job_type": "sweep",
        "tags": ["kernel.beta=0.3"],
    }
    # name=... on the command line prefixes the job names; no swept key found: the job number
    assert run_identity(hydra_job([*job, "name=mine", "hydra.job.num=0"]))["name"] == "mine:beta=0.3"
    (sweep / "multirun.yaml").unlink()
    bare = run_identity(hydra_job([*job, "hydra.job.num=1"]))
    assert bare["name"] == "r18-fast-shapes-ttfnet#1" and bare["tags"] == []


def test_table_job_offline_run_files(hydra_job, tmp_path, monkeypatch):
    """A tiny training run as one job of a table sweep, read back from the offline run file:
    name, group/job_type, swept-only tags, every config key once (no ``_target_``, no module
    hyper-parameters), val/* against training hours, the best val/AP in the summary, the best
    checkpoint as a model artifact (logger.wandb.log_model=true) and the box overlays."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DATA_DIR", str(tmp_path / "wandb-data"))  # the artifact's staged copy
    sweep = write_multirun_yaml(
        tmp_path / "sweep", ["experiment=table2", "schedule.max_epochs=1"], {"kernel.beta": "0.3,0.9", "seed": "1,2"}
    )
    base = [o for o in TINY_TRAIN if not o.startswith(("logger=", "schedule.max_epochs", "callbacks.log_val_images"))]
    cfg = hydra_job(
        [
            "kernel.beta=0.3",
            "seed=1",
            *base,
            "schedule.max_epochs=1",
            "logger=wandb",
            f"output_dir={tmp_path / 'job'}",
            "schedule.lr=0.01",
            "table={name:table2,protocol:cpu}",
            "hydra.mode=MULTIRUN",
            f"hydra.sweep.dir={sweep}",
            "trainer.log_every_n_steps=1",
            "logger.wandb.log_model=true",
            "callbacks.log_val_images=2",
        ]
    )
    train(cfg)
    (run_dir,) = (tmp_path / "job" / "wandb").glob("offline-run-*")
    run = read_offline_run(run_dir)

    assert run["name"] == "beta=0.3,seed=1"
    assert run["group"] == "table2-cpu" and run["job_type"] == "ablation"
    assert run["tags"] == ["table2", "protocol=cpu", "kernel.beta=0.3", "seed=1"]  # no constant override

    config = {k: v for k, v in run["config"].items() if not k.startswith("_")}
    assert config["kernel.beta"] == 0.3 and config["seed"] == 1 and config["backbone.name"] == "r18"
    assert config["schedule.lr"] == 0.01 and config["table.name"] == "table2" and config["table.protocol"] == "cpu"
    assert "config" not in config  # no longer one nested key
    nested = {k: v for k, v in config.items() if isinstance(v, (dict, list))}
    assert not nested, f"config not flat: {sorted(nested)}"
    assert not [k for k in config if k.endswith("_target_")]
    internal = [k for k in config if k.startswith(("net.", "optim.", "loss.", "decode.", "data_info."))]
    assert not internal, f"the module's hparams duplicate the config: {internal}"
    # the wiring copies of conf/train.yaml are sent once, under their user-facing key
    assert config["schedule.max_epochs"] == 1 and "trainer.max_epochs" not in config
    assert "data.datamodule.augment" not in config and "logger.wandb.name" not in config

    # val/* against training hours; the clock itself against the global step
    assert run["metrics"]["val/AP"] == "time/train_hours" and run["metrics"]["val/AP50"] == "time/train_hours"
    assert run["metrics"]["val/*"] == "time/train_hours" and run["metrics"]["time/train_hours"] == "trainer/global_step"
    val_rows = [row for row in run["history"] if "val/AP" in row]
    assert len(val_rows) == 1 and val_rows[0]["time/train_hours"] > 0 and val_rows[0]["time/step"] == 2
    # summary: the best (here the only) value, where it was reached
    assert run["summary"]["val/AP50"] == {"max": val_rows[0]["val/AP50"]}
    assert run["summary"]["best/val/AP"] == val_rows[0]["val/AP"] and run["summary"]["best/step"] == 2
    assert run["summary"]["best/train_hours"] == val_rows[0]["time/train_hours"]
    assert "train/loss" in run["summary"]

    # the best checkpoint as a model artifact, and nothing else
    ((name, kind, aliases, meta, files),) = run["artifacts"]
    assert kind == "model" and set(aliases) == {"best", "latest"} and name.startswith("model-")
    assert meta["original_filename"].startswith("best-") and meta["ModelCheckpoint"]["monitor"] == "val/AP"
    assert (
        list(files) == ["model.ckpt"]
        and files["model.ckpt"] == (tmp_path / "job" / "checkpoints" / meta["original_filename"]).stat().st_size
    )

    # validation images with W&B box overlays: both layers, their box files written beside the run
    (pred_row,) = [row for row in run["history"] if "val/predictions/all_boxes" in row]
    overlays = pred_row["val/predictions/all_boxes"]
    assert len(overlays) == 2 and all(set(o) == {"predictions", "ground_truth"} for o in overlays)
    truth = json.loads((run_dir / "files" / overlays[0]["ground_truth"]["path"]).read_text())
    assert truth["box_data"] and truth["class_labels"]["0"] == "circle"
    assert all(b["domain"] == "pixel" and b["class_id"] in range(5) for b in truth["box_data"])


def test_plain_run_keeps_cfg_group_and_tags(tmp_path, monkeypatch):
    """Not a table, no Hydra: group and tags from the config, as before (W&B logger built only)."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    from ttfnet_lightning.training.tracking import build_loggers

    cfg = compose("train", ["logger=wandb", "group=mygroup", "tags=[a,b]", f"output_dir={tmp_path}"])
    (lg,) = [lg for lg in build_loggers(cfg, tmp_path) if isinstance(lg, FlatWandbLogger)]
    init = lg._wandb_init
    assert init["group"] == "mygroup" and init["tags"] == ["a", "b"] and init["job_type"] == "train"
    assert lg._offline  # offline by default (WANDB_MODE=offline here)
    OmegaConf.to_container(cfg, resolve=True)  # table: null composes and resolves


def test_wandb_goes_online_only_with_credentials_wandb_itself_finds(tmp_path):
    """tracking.wandb_offline: an explicit setting wins, then WANDB_MODE, then W&B's own lookup
    (wandb.login(prompt=False): never prompts). Fresh processes: a login is remembered per process."""
    # os._exit: with credentials, wandb's exit handlers may wait on the (unreachable) server;
    # only the decision is tested here
    code = (
        "import os; from ttfnet_lightning.training.tracking import wandb_offline as o; "
        "print(o(None), o(False), o(True), flush=True); os._exit(0)"
    )
    base = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")} | {
        "PYTHONPATH": os.pathsep.join(sys.path)
    }
    empty = tmp_path / "empty"
    empty.mkdir()
    keyed = tmp_path / "keyed"
    keyed.mkdir()
    (keyed / ".netrc").write_text(f"machine api.wandb.ai\n  login user\n  password {'a' * 40}\n")
    (keyed / ".netrc").chmod(0o600)

    def ask(home, **env):
        proc = subprocess.run(
            [sys.executable, "-c", code],
            env=base | {"HOME": str(home)} | env,
            capture_output=True,
            text=True,
            timeout=120,
            stdin=subprocess.DEVNULL,
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
        return proc.stdout.split()[-3:]

    assert ask(empty) == ["True", "False", "True"]  # no key anywhere: offline, and no prompt (stdin closed)
    assert ask(keyed) == ["False", "False", "True"]  # a netrc key: online


def test_wandb_mode_decides_before_any_credentials(monkeypatch):
    from ttfnet_lightning.training.tracking import wandb_offline

    monkeypatch.setenv("WANDB_MODE", "offline")
    assert wandb_offline(None) is True and wandb_offline(False) is False
    monkeypatch.setenv("WANDB_MODE", "online")
    assert wandb_offline(None) is False and wandb_offline(True) is True


def test_plain_command_without_wandb_mode_or_key_trains_offline(tmp_path):
    """The README's entry point on a machine with no W&B key and no WANDB_MODE: the W&B logger
    runs offline (before the fix, wandb.init asked for an API key after the credentials probe)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")} | {
        "HOME": str(tmp_path / "home"),
        "PYTHONPATH": os.pathsep.join(sys.path),
    }
    (tmp_path / "home").mkdir()
    out = tmp_path / "run"
    args = [o for o in TINY_TRAIN if not o.startswith(("logger=", "schedule.max_epochs"))]
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "ttfnet_lightning.train",
            *args,
            "schedule.max_epochs=1",
            "logger=wandb",
            f"output_dir={out}",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert list((out / "wandb").glob("offline-run-*")), list(out.iterdir())
