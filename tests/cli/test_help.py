"""``python -m ttfnet_lightning.<command> --help`` starts with what the command does and gives examples;
the Hydra commands list their groups, not the whole composed config."""

from __future__ import annotations

import contextlib
import functools
import importlib
import io
import re
import subprocess
import sys

import pytest

from conftest import CONF_DIR, REPO, compose, subprocess_env

# command -> the first words of its description
DESCRIPTIONS = {
    "train": "Train TTFNet",
    "evaluate": "Evaluate a checkpoint",
    "predict": "Run a trained model on images or videos",
    "export": "Export a trained TTFNet for deployment",
    "convert": "Convert a released TTFNet checkpoint",
    "data.check": "Check a data set before training",
    "data.prepare": "Write a COCO data set once",
    "analyze": "The share of ambiguous regression samples",
    "tables": "Build the paper's table",
    "race": "Race detectors against training time",
    "speed": "Measure Table 4's FPS row again",
    "viz": "Figures, one subcommand each",
}
ARGPARSE = {"tables", "speed", "viz", "race"}


@functools.cache
def _run(command: str, *args: str) -> str:
    """The command's stdout, run as ``python -m`` (argparse ones: in this process)."""
    if command in ARGPARSE:
        main = importlib.import_module(f"ttfnet_lightning.{command}").main
        out = io.StringIO()
        with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as stop:
            main(list(args))
        assert stop.value.code == 0
        return out.getvalue()
    proc = subprocess.run(
        [sys.executable, "-m", f"ttfnet_lightning.{command}", *args],
        capture_output=True,
        text=True,
        env=subprocess_env(),
        cwd=REPO,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


@pytest.mark.parametrize("command", sorted(DESCRIPTIONS))
def test_help_starts_with_the_description_and_has_examples(command):
    text = _run(command, "--help")
    if command in ARGPARSE:  # argparse: its usage line(s), then the description
        assert text.startswith(f"usage: python -m ttfnet_lightning.{command} ")
        text = text.split("\n\n", 1)[1]
    assert text.startswith(DESCRIPTIONS[command]), text[:300]
    examples = re.findall(rf"^\s+python -m ttfnet_lightning\.{command} \S", text, flags=re.MULTILINE)
    assert len(examples) >= 2
    if command not in ARGPARSE:  # the groups, not Hydra's dump of the composed config
        assert "== Config ==" not in text and "powered by Hydra" not in text
        assert not re.search(r"^seed: 0$", text, flags=re.MULTILINE)
        assert len(text.splitlines()) < 50


def test_train_help_lists_every_group_and_cfg_job_still_prints_the_config():
    text = _run("train", "--help")
    groups = {line.split(":")[0] for line in text.splitlines() if re.match(r"^[a-z_/0-9]+: \S", line)}
    on_disk = {p.name for p in CONF_DIR.iterdir() if p.is_dir() and any(p.glob("*.yaml")) and p.name != "hydra"}
    assert on_disk <= groups and "debug" in groups
    assert re.search(r"^debug: default, limit, overfit, profiler$", text, flags=re.MULTILINE)
    config = _run("train", "--cfg", "job")
    assert re.search(r"^seed: 0$", config, flags=re.MULTILINE) and "every_seconds:" in config


@pytest.mark.parametrize(
    ("command", "overrides"),
    [
        ("evaluate", ["ckpt=x"]),
        ("predict", ["ckpt=x", "input=y"]),
        ("export", ["ckpt=x"]),
        ("convert", ["input=x", "output=y"]),
    ],
)
def test_settings_named_in_the_help_exist(command, overrides):
    """The hand-written lists of a command's settings and group options (conf/hydra/help/) are real."""
    text = (CONF_DIR / "hydra" / "help" / f"{command}.yaml").read_text()
    cfg = compose(command, overrides)
    listed = re.search(r"Main settings: (.*?)\n\n", text, flags=re.DOTALL).group(1)
    for key in re.findall(r"([a-z_.]+)(?: \([^)]*\))?(?:,|$)", " ".join(listed.split())):
        node = cfg
        for part in key.split("."):
            assert part in node, f"{command} --help names {key}, which its config lacks"
            node = node[part]
    for group, options in re.findall(r"^    (data|trainer): (.*)$", text, flags=re.MULTILINE):
        for option in re.sub(r" \(default\)", "", options).split(", "):
            assert (CONF_DIR / group / f"{option}.yaml").is_file(), f"{command} --help names {group}={option}"
