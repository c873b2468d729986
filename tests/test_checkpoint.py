"""A trained checkpoint is read once per load: the loaders pass one ``TrainedCheckpoint`` down instead of
the folder, so ``ptv2 predict``, ``ptv2 eval``, ``MultiPromptModel.add``, prompt transfer and compression
each open ``ptv2_checkpoint.json`` and ``adapter.safetensors`` once."""

from __future__ import annotations

import builtins
import io
import shutil
from collections import Counter
from pathlib import Path

import pytest
import safetensors
import safetensors.torch
import torch
from tiny_runs import sentiment_run
from transformers import AutoModel

from ptuning_v2.benchmarks.multitask import random_checkpoint
from ptuning_v2.checkpoint import CONFIG_FILE, WEIGHTS_FILE, CheckpointError, TrainedCheckpoint
from ptuning_v2.cli.main import main
from ptuning_v2.config import DeepPromptConfig
from ptuning_v2.methods import load_run_config
from ptuning_v2.prompts.model import DeepPromptModel
from ptuning_v2.serving.multi_prompt import MultiPromptModel
from ptuning_v2.trained.compression import compress_checkpoint
from ptuning_v2.training.recipe import train_run


@pytest.fixture()
def checkpoint(tiny_bert_dir: Path, sentiment_csvs: dict[str, Path], tmp_path: Path) -> Path:
    run = load_run_config(
        None, sentiment_run(tiny_bert_dir, sentiment_csvs, "train.max_steps=2", "prompt.num_virtual_tokens=4")
    )
    train_run(run, tmp_path / "run", show_progress=False)
    return tmp_path / "run" / "checkpoint"


@pytest.fixture()
def reads(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """From now on, how often each checkpoint file (by path) is opened for reading: by ``open`` (also
    what ``Path.read_text`` calls) or by safetensors (``load_file`` and ``safe_open`` alike)."""
    counts: Counter[str] = Counter()

    def counted(opener):
        def open_(file, *args, **kwargs):
            mode = args[0] if args else kwargs.get("mode", "r")
            if (
                isinstance(file, str | Path)
                and Path(file).name in (CONFIG_FILE, WEIGHTS_FILE)
                and "r" in mode
            ):
                counts[str(Path(file))] += 1
            return opener(file, *args, **kwargs)

        return open_

    monkeypatch.setattr(builtins, "open", counted(builtins.open))
    monkeypatch.setattr(io, "open", counted(io.open))
    for module in (safetensors, safetensors.torch):
        monkeypatch.setattr(module, "safe_open", counted(module.safe_open))
    return counts


def once_each(checkpoint: Path, times: int = 1) -> Counter[str]:
    return Counter({str(checkpoint / CONFIG_FILE): times, str(checkpoint / WEIGHTS_FILE): times})


def test_the_read_counter_sees_both_files(checkpoint: Path, reads: Counter[str]) -> None:
    read = TrainedCheckpoint.read(checkpoint)
    assert reads == once_each(checkpoint)
    assert read.meta["method"] == "ptuning_v2" and read.run().model == read.run_config["model"]
    assert sorted(read.tensors) == sorted(read.meta["tensors"])


def test_ptv2_predict_and_eval_read_it_once(checkpoint: Path, reads: Counter[str], tmp_path: Path) -> None:
    assert main(["predict", str(checkpoint), "what a great film"]) == 0
    assert reads == once_each(checkpoint)
    reads.clear()
    assert main(["eval", str(checkpoint), "--output-dir", str(tmp_path / "eval")]) == 0
    assert reads == once_each(checkpoint)


def test_serving_reads_each_added_checkpoint_once(checkpoint: Path, reads: Counter[str]) -> None:
    multi = MultiPromptModel.from_checkpoints({"first": checkpoint}, device="cpu")
    assert reads == once_each(checkpoint)
    multi.add("second", checkpoint)
    assert reads == once_each(checkpoint, times=2)
    multi.close()


def test_prompt_transfer_and_compression_read_it_once(
    checkpoint: Path, reads: Counter[str], tiny_bert_dir: Path, tmp_path: Path
) -> None:
    config = DeepPromptConfig(num_virtual_tokens=6, init="checkpoint", init_checkpoint=str(checkpoint))
    DeepPromptModel(AutoModel.from_pretrained(tiny_bert_dir), config)
    assert reads == once_each(checkpoint)
    reads.clear()
    compress_checkpoint(checkpoint, tmp_path / "compressed", rank=1)
    assert reads == once_each(checkpoint)


def test_a_folder_without_tensors_is_refused_by_name(checkpoint: Path) -> None:
    (checkpoint / WEIGHTS_FILE).unlink()
    with pytest.raises(CheckpointError, match=f"missing {WEIGHTS_FILE}"):
        TrainedCheckpoint.read(checkpoint)


def test_read_tensors_are_the_files_bytes_as_read(checkpoint: Path, tmp_path: Path) -> None:
    """A read holds the bytes it read: a weights file written in place afterwards (the store's check that
    a read saw one version relies on it) neither changes the tensors nor, cut short, crashes the process
    (it did with the file mapped: SIGBUS)."""
    read = TrainedCheckpoint.read(checkpoint)
    weights = checkpoint / WEIGHTS_FILE
    other = {name: torch.full_like(t, 7.0) for name, t in read.tensors.items()}
    safetensors.torch.save_file(other, tmp_path / "other.safetensors")
    before = {name: t.clone() for name, t in read.tensors.items()}
    with weights.open("r+b") as file:  # in place: same inode, as ``cp`` or a careless writer does it
        file.write((tmp_path / "other.safetensors").read_bytes())
    assert all(torch.equal(read.tensors[name], t) for name, t in before.items())
    with weights.open("r+b") as file:
        file.truncate(16)
    assert all(torch.equal(read.tensors[name], t) for name, t in before.items())


def test_loading_builds_no_initial_prompt(
    checkpoint: Path,
    reads: Counter[str],
    tiny_bert_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A checkpoint's tensors replace the initial prompt at once, so a load neither reads the checkpoint a
    prompt was transferred from (it need not exist where the task is served) nor runs the init text."""
    source = tmp_path / "source"
    shutil.copytree(checkpoint, source)
    transferred = random_checkpoint(str(tiny_bert_dir), tmp_path / "transferred", "classification",
                                    {"num_virtual_tokens": 6, "init": "checkpoint", "init_checkpoint": str(source)},
                                    {"labels": ["neg", "pos"]})  # fmt: skip
    from_text = random_checkpoint(str(tiny_bert_dir), tmp_path / "from_text", "classification",
                                  {"num_virtual_tokens": 6, "init": "text", "init_text": "a fine film"},
                                  {"labels": ["neg", "pos"]})  # fmt: skip
    shutil.rmtree(source)
    monkeypatch.setattr(DeepPromptModel, "init_from_text", lambda *args: pytest.fail("ran the init text"))
    reads.clear()
    multi = MultiPromptModel.from_checkpoints({"transferred": transferred, "from_text": from_text})
    assert reads == once_each(transferred) + once_each(from_text)
    for name, folder in (("transferred", transferred), ("from_text", from_text)):
        stored = TrainedCheckpoint.read(folder).tensors
        prompts = multi.tasks[name].encoder.prompt.prompts
        assert prompts and all(
            torch.equal(p, stored[f"encoder.prompt.prompts.{s}"]) for s, p in prompts.items()
        )
    multi.close()
