"""Crash-safe resume: real SIGKILLs at exact moments (PTV2_CRASH_AT), resumed runs equal an uninterrupted
one bit for bit; resumes with changed settings; refused reuse of a run folder; a diverging loss."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import traceback
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from ptuning_v2.cli.main import main
from ptuning_v2.config import ConfigError
from ptuning_v2.methods import load_run_config
from ptuning_v2.training.recipe import train_run

SETTINGS = [
    "train.batch_size=8",
    "train.max_steps=12",
    "train.eval_every=4",
    "train.save_every=3",
    "train.lr=5e-2",
    "train.head_lr=5e-2",
    "prompt.num_virtual_tokens=4",
    "prompt.dropout=0.1",  # dropout draws random numbers: the RNG state must resume too
]


def config_file(model_dir: Path, csvs: dict[str, Path], path: Path) -> Path:
    config = {
        "model": str(model_dir),
        "data": {**{k: str(v) for k, v in csvs.items()}, "columns": {"text": "review", "label": "sentiment"}},
    }
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def cli_args(config: Path, out: Path, *extra: str) -> list[str]:
    return [
        "train",
        str(config),
        "--output-dir",
        str(out),
        *(f"--set={s}" for s in SETTINGS),
        "--no-progress",
        *extra,
    ]


def cli_process(args: list[str], crash_at: str) -> tuple[int, str]:
    """``python -m ptuning_v2.cli.main ARGS`` as a user (or a pre-empted machine) runs it: status, output."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PTV2_CRASH_AT": crash_at}
    cmd = [sys.executable, "-m", "ptuning_v2.cli.main", *args]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    return done.returncode, done.stdout + done.stderr


def cli_fork(args: list[str], crash_at: str, tmp_path: Path) -> tuple[int, str]:
    """The same CLI in a forked process (a real process and a real SIGKILL, without the seconds of
    interpreter and import start-up): status as ``subprocess`` reports it, output."""
    output = tmp_path / "child.out"
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 99
        try:
            fd = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            sys.stdout = sys.stderr = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115
            os.environ["PTV2_CRASH_AT"] = crash_at
            code = main(args)
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), output.read_text(encoding="utf-8")


def log_records(out: Path) -> list[dict]:
    """Every line of log.jsonl, parsed (a torn line fails here), without the wall-clock field."""
    lines = (out / "log.jsonl").read_text(encoding="utf-8").splitlines()
    return [{k: v for k, v in json.loads(line).items() if k != "elapsed"} for line in lines]


def complete_steps(out: Path) -> list[int]:
    return sorted(int(p.name.split("-")[1]) for p in (out / "states").glob("step-*"))


def test_sigkill_at_any_moment_resumes_bit_for_bit(
    tiny_bert_dir: Path, sentiment_csvs: dict[str, Path], tmp_path: Path
) -> None:
    config = config_file(tiny_bert_dir, sentiment_csvs, tmp_path / "run.yaml")
    straight = train_run(load_run_config(config, SETTINGS), tmp_path / "straight", show_progress=False)
    out = tmp_path / "killed"
    # States are written at steps 3, 4 (eval), 6, 8 (eval), 9, 12 (eval); each run below is killed
    # (SIGKILL, from inside, at an exact point) and the next one resumes it.
    status, output = cli_process(cli_args(config, out), "state_write:6")  # between the two files of a state
    assert status == -signal.SIGKILL, output[-2000:]
    assert complete_steps(out) == [3, 4] and list((out / "states").glob(".tmp-step-000000006-*"))

    status, output = cli_fork(cli_args(config, out, "--resume"), "log:8", tmp_path)  # half a log line
    assert status == -signal.SIGKILL, output[-2000:]
    assert "from step 4" in output and not list((out / "states").glob(".tmp-*"))
    with pytest.raises(json.JSONDecodeError):
        log_records(out)  # the torn line is there

    status, _ = cli_fork(cli_args(config, out, "--resume"), "state_renamed:9", tmp_path)  # before pruning
    assert status == -signal.SIGKILL and complete_steps(out) == [6, 8, 9]
    status, output = cli_fork(cli_args(config, out, "--resume"), "step:11", tmp_path)  # between two saves
    assert status == -signal.SIGKILL and "from step 9" in output

    status, output = cli_fork(cli_args(config, out, "--resume"), "", tmp_path)
    assert status == 0, output[-2000:]
    assert complete_steps(out) == [9, 12]  # train.keep_states = 2
    for name in ("states/step-000000012/state.safetensors", "checkpoint/adapter.safetensors"):
        a, b = load_file(str(tmp_path / "straight" / name)), load_file(str(out / name))
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), (name, key)
    records = log_records(out)
    assert records == log_records(tmp_path / "straight")  # each step once, in order, no torn line
    assert len({(r["type"], r["step"]) for r in records}) == len(records)
    metrics = json.loads((out / "metrics.json").read_text())
    assert (metrics["dev"], metrics["test"]) == (straight["dev"], straight["test"])
    assert [p.name for p in out.rglob("*") if p.name.startswith(".") or p.suffix == ".tmp"] == []


def test_resume_applies_safe_changes_and_refuses_the_rest(
    tiny_bert_dir: Path, sentiment_csvs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    config = config_file(tiny_bert_dir, sentiment_csvs, tmp_path / "run.yaml")
    out = tmp_path / "run"
    paused = train_run(load_run_config(config, SETTINGS), out, show_progress=False, pause_at_step=5)
    assert paused["state"].endswith("step-000000005")
    for changed in (["train.lr=1e-3"], ["prompt.init=zero", "train.seed=7"]):
        with pytest.raises(ConfigError, match=f"cannot resume with changed {changed[0].split('=')[0]}"):
            train_run(load_run_config(config, [*SETTINGS, *changed]), out, resume=True, show_progress=False)
    extended = load_run_config(config, [*SETTINGS, "train.max_steps=16", "train.eval_every=8"])
    capsys.readouterr()
    metrics = train_run(extended, out, resume=True, show_progress=False)
    [line] = [x for x in capsys.readouterr().out.splitlines() if x.startswith("resuming")]
    assert line.endswith("applying changed train.eval_every (4 -> 8), train.max_steps (12 -> 16)"), line
    assert metrics["steps"] == 16
    assert [r["step"] for r in log_records(out) if r["type"] == "eval"] == [4, 8, 16]

    # A fresh run into the same folder: refused, then allowed with overwrite (old run files removed).
    with pytest.raises(ConfigError, match="holds a previous run .*--overwrite"):
        train_run(load_run_config(config, SETTINGS), out, show_progress=False)
    assert main(["train", str(config), "--output-dir", str(out), "--no-progress"]) == 2
    assert "holds a previous run" in capsys.readouterr().err
    train_run(
        load_run_config(config, [*SETTINGS, "train.max_steps=2"]), out, show_progress=False, overwrite=True
    )
    records = log_records(out)  # the new run's log alone: its data report, then steps 1 and 2
    assert complete_steps(out) == [2] and [(r["type"], r["step"]) for r in records] == [
        ("data", 0),
        ("train", 1),
        ("train", 2),
        ("eval", 2),
    ]


def test_a_diverging_loss_stops_the_run_and_predict_prints_valid_json(
    tiny_bert_dir: Path, sentiment_csvs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    config = config_file(tiny_bert_dir, sentiment_csvs, tmp_path / "run.yaml")
    out = tmp_path / "run"
    args = ["train", str(config), "--output-dir", str(out), "--no-progress"]
    args += [f"--set={s}" for s in SETTINGS] + ["--set=train.lr=1e30", "--set=train.eval_every=1"]
    assert main([*args, "--set=train.save_every=1", "--set=train.grad_clip=0"]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("ptv2 train: error: training diverged at step ") and "\n" not in error, error
    assert not (out / "metrics.json").exists()
    step = int(error.split("at step ")[1].split(":")[0])
    assert complete_steps(out)[-1] == step - 1  # the last good state; nothing from the bad step
    for path in [*out.glob("states/*/state.safetensors"), out / "checkpoint" / "adapter.safetensors"]:
        assert all(bool(torch.isfinite(t).all()) for t in load_file(str(path)).values()), path

    # A checkpoint whose scores come out NaN: predict prints null, never a bare NaN (invalid JSON).
    adapter = out / "checkpoint" / "adapter.safetensors"
    save_file({k: torch.full_like(v, math.nan) for k, v in load_file(str(adapter)).items()}, str(adapter))
    capsys.readouterr()
    assert main(["predict", str(out / "checkpoint"), "a good film"]) == 0
    lines = capsys.readouterr().out.splitlines()

    def no_nan(constant: str) -> None:
        raise AssertionError(f"bare {constant} in the output")

    prediction = json.loads(lines[0], parse_constant=no_nan)
    assert prediction["score"] is None and set(prediction["probabilities"].values()) == {None}


def test_a_damaged_newest_state_names_the_one_before_it(tmp_path: Path) -> None:
    from ptuning_v2.checkpoint import CheckpointError
    from ptuning_v2.training.states import STATE_TENSORS, read_state, write_state
    from ptuning_v2.training.trainer import newest_state

    for step in (3, 6):
        write_state(tmp_path / "states", step, {"w": torch.ones(4)}, {"run_config": {}}, keep=2)
    newest = newest_state(tmp_path)
    whole = (newest / STATE_TENSORS).read_bytes()
    (newest / STATE_TENSORS).write_bytes(whole[: len(whole) // 2])
    with pytest.raises(CheckpointError, match="remove this folder \\(then step-000000003 is used\\)"):
        read_state(newest)
    with pytest.raises(
        CheckpointError, match="no such folder, so no run to resume; start it without --resume"
    ):
        newest_state(tmp_path / "never")
