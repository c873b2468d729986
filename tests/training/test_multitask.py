"""Multi-task training: the mix, one backbone for several tasks, per-task checkpoints that load alone."""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file

from ptuning_v2.cli.main import main
from ptuning_v2.config import ConfigError
from ptuning_v2.tasks.base import evaluate_split
from ptuning_v2.trained.model import load_trained
from ptuning_v2.training.multitask import BatchStream, mix_weights, task_schedule
from ptuning_v2.training.multitask_config import load_multitask_config
from ptuning_v2.training.recipe import load_splits
from ptuning_v2.training.trainer import epoch_batches

# ---- the mix ---------------------------------------------------------------------------------------


def test_mix_weights_follow_their_formulas() -> None:
    sizes = [100, 400, 1600]
    assert mix_weights(sizes, "proportional") == pytest.approx([100 / 2100, 400 / 2100, 1600 / 2100])
    # T = 2: n ** (1/2) = 10, 20, 40.
    assert mix_weights(sizes, "temperature", 2.0) == pytest.approx([10 / 70, 20 / 70, 40 / 70])
    assert mix_weights(sizes, "temperature", 1.0) == pytest.approx(mix_weights(sizes, "proportional"))
    assert mix_weights(sizes, "temperature", 1e6) == pytest.approx([1 / 3] * 3, abs=1e-4)
    assert mix_weights(sizes, "round_robin") == pytest.approx([1 / 3] * 3)


@pytest.mark.parametrize(
    ("mix", "temperature"), [("proportional", 2.0), ("temperature", 2.0), ("temperature", 4.0)]
)
def test_drawn_schedule_matches_the_weights_and_the_seed(mix: str, temperature: float) -> None:
    sizes, steps = [100, 400, 1600], 40_000
    schedule = task_schedule(sizes, mix, temperature, steps, seed=7)
    counts = Counter(schedule)
    # Binomial standard deviation at 40,000 draws is at most 0.0025: 0.01 is four of them.
    for index, weight in enumerate(mix_weights(sizes, mix, temperature)):
        assert counts[index] / steps == pytest.approx(weight, abs=0.01)
    assert task_schedule(sizes, mix, temperature, steps, seed=7) == schedule
    assert task_schedule(sizes, mix, temperature, steps, seed=8) != schedule


def test_round_robin_takes_the_tasks_in_turn() -> None:
    assert task_schedule([5, 500, 50], "round_robin", 2.0, 7, seed=0) == [0, 1, 2, 0, 1, 2, 0]


def test_batch_stream_is_the_trainers_epoch_order_continued() -> None:
    stream = BatchStream(10, 4, seed=3)
    drawn = [stream.next() for _ in range(6)]  # 3 batches per epoch: two epochs
    expected = epoch_batches(10, 4, 3, 0, 0, 1) + epoch_batches(10, 4, 3, 1, 0, 1)
    assert drawn == expected
    assert sorted(i for batch in drawn[:3] for i in batch) == list(range(10))


# ---- data and configs ------------------------------------------------------------------------------


def write_csv(path: Path, rows: list[tuple[str, str]]) -> str:
    path.write_text("text,label\n" + "".join(f"{t},{lab}\n" for t, lab in rows), encoding="utf-8")
    return str(path)


def sentiment_rows(n: int, rng: random.Random) -> list[tuple[str, str]]:
    words = {"pos": ["good", "great", "fun", "best"], "neg": ["bad", "awful", "boring", "worst"]}
    return [
        (f"{rng.choice(['the movie was', 'this film is', 'the story is'])} {rng.choice(words[lab])}", lab)
        for lab in (("pos", "neg")[i % 2] for i in range(n))
    ]


def question_rows(n: int, rng: random.Random) -> list[tuple[str, str]]:
    kinds = {"HUM": "who", "LOC": "where", "TIME": "when"}
    labels = list(kinds)
    rows = []
    for i in range(n):
        label = labels[i % 3]
        rows.append((f"{kinds[label]} is {rng.choice(['the actor', 'john', 'the city', 'mary'])}", label))
    return rows


def write_conll(path: Path, n: int, rng: random.Random) -> str:
    lines = ["-DOCSTART- -X- -X- O", ""]
    for _ in range(n):
        for _ in range(rng.randint(3, 6)):
            kind = rng.random()
            if kind < 0.25:
                lines.append(f"{rng.choice(['John', 'Mary'])} NNP B-NP B-PER")
            elif kind < 0.45:
                lines.append(f"{rng.choice(['Paris', 'London', 'Berlin'])} NNP B-NP B-LOC")
            else:
                lines.append(f"{rng.choice(['the', 'was', 'in', 'at', 'movie'])} NN B-NP O")
        lines.append("")
    path.write_text("\n".join(lines), encoding="utf-8")
    return str(path)


@pytest.fixture()
def multitask_yaml(tiny_bert_dir: Path, tmp_path: Path) -> Path:
    """Two classification tasks with different label sets and a NER task, on the tiny BERT."""
    rng = random.Random(0)
    data = {}
    for split, n in (("train", 48), ("validation", 18), ("test", 18)):
        data.setdefault("sent", {})[split] = write_csv(tmp_path / f"sent_{split}.csv", sentiment_rows(n, rng))
        data.setdefault("question", {})[split] = write_csv(tmp_path / f"q_{split}.csv", question_rows(n, rng))
        data.setdefault("ner", {})[split] = write_conll(tmp_path / f"ner_{split}.txt", n, rng)
    config = {
        "model": str(tiny_bert_dir),
        "method": "ptuning_v2",
        "mix": "round_robin",
        "prompt": {"num_virtual_tokens": 4},
        "train": {
            "max_steps": 36,
            "batch_size": 8,
            "eval_every": 18,
            "lr": 3e-2,
            "head_lr": 3e-2,
            "warmup_ratio": 0,
            "max_length": 32,
            "seed": 5,
        },
        "tasks": [
            {"name": "sent", "task": "classification", "data": data["sent"], "head": {"pooling": "mean"}},
            {
                "name": "question",
                "task": "classification",
                "data": data["question"],
                "prompt": {"num_virtual_tokens": 6},
                "train": {"batch_size": 6},
            },
            {"name": "ner", "task": "ner", "data": data["ner"], "train": {"lr": 5e-2}},
        ],
    }
    path = tmp_path / "multi.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def train_multi(config: Path, out: Path, *sets: str) -> int:
    args = ["train-multi", str(config), "--output-dir", str(out), "--no-progress"]
    return main(args + [a for s in sets for a in ("--set", s)])


# ---- a real run -------------------------------------------------------------------------------------


def test_joint_run_writes_per_task_checkpoints_that_load_alone(multitask_yaml, tmp_path, capsys) -> None:
    out = tmp_path / "run"
    assert train_multi(multitask_yaml, out) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    tasks = metrics["tasks"]
    assert list(tasks) == ["sent", "question", "ner"]
    assert [tasks[n]["steps"] for n in tasks] == [12, 12, 12]  # round robin over 36 steps
    assert tasks["question"]["examples_seen"] == 12 * 6  # its own batch size
    assert {tasks[n]["main_metric"] for n in tasks} == {"accuracy", "f1"}
    means = [tasks[n]["dev"][tasks[n]["main_metric"]] for n in tasks]
    assert metrics["mean"]["dev"] == pytest.approx(sum(means) / 3)
    assert tasks["sent"]["dev"]["accuracy"] > 0.8, tasks["sent"]
    # The backbone counts once; each task trains its own prompt and head.
    assert metrics["trainable_params"] == sum(tasks[n]["trainable_params"] for n in tasks)

    config = load_multitask_config(multitask_yaml)
    for spec in config.tasks:
        entry = tasks[spec.name]
        checkpoint = out / "tasks" / spec.name / "checkpoint"
        assert entry["checkpoint"] == str(checkpoint)
        meta = json.loads((checkpoint / "ptv2_checkpoint.json").read_text())
        assert meta["run_config"] == spec.run.to_dict()  # the task's own single-task run config
        assert meta["multitask"]["step"] == entry["best_step"]
        task, model = load_trained(checkpoint)
        splits = load_splits(spec.run, type(task))
        dev = evaluate_split(
            task, model, splits["validation"], task.featurize(splits["validation"], "validation"), 128, "cpu"
        )
        assert dev[entry["main_metric"]] == entry["dev"][entry["main_metric"]]
    capsys.readouterr()

    # ptv2 eval and ptv2 predict take a task's folder like a single-task checkpoint.
    question = out / "tasks" / "question" / "checkpoint"
    assert main(["eval", str(question), "--output-dir", str(tmp_path / "eval")]) == 0
    evaluated = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert evaluated["dev"]["accuracy"] == tasks["question"]["dev"]["accuracy"]
    assert evaluated["test"]["accuracy"] == tasks["question"]["test"]["accuracy"]
    capsys.readouterr()
    assert main(["predict", str(question), "who is john"]) == 0
    (line,) = capsys.readouterr().out.splitlines()
    assert set(json.loads(line)["probabilities"]) == {"HUM", "LOC", "TIME"}
    assert main(["predict", str(out / "tasks" / "ner" / "checkpoint"), "John met Mary in Paris"]) == 0
    assert "entities" in json.loads(capsys.readouterr().out.splitlines()[0])

    records = [json.loads(r) for r in (out / "log.jsonl").read_text().splitlines()]
    evals = [(r["step"], r["task"]) for r in records if r["type"] == "eval"]
    assert evals == [(s, n) for s in (18, 36) for n in ("sent", "question", "ner")]
    assert {r["task"] for r in records if r["type"] == "train"} == {"sent", "question", "ner"}

    # A second run into the same folder is refused unless asked to overwrite it.
    assert train_multi(multitask_yaml, out) == 2
    assert "holds a previous run" in capsys.readouterr().err


def test_same_seed_same_run_and_shared_prompt_is_one_prompt(multitask_yaml, tmp_path) -> None:
    sets = ["train.max_steps=8", "train.eval_every=null", "mix=temperature", "temperature=2"]
    for name in ("a", "b"):
        assert train_multi(multitask_yaml, tmp_path / name, *sets) == 0
    for task in ("sent", "question", "ner"):
        a = load_file(tmp_path / "a" / "tasks" / task / "checkpoint" / "adapter.safetensors")
        b = load_file(tmp_path / "b" / "tasks" / task / "checkpoint" / "adapter.safetensors")
        assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)
    assert (tmp_path / "a" / "metrics.json").read_text() != ""
    steps = {
        n: e["steps"] for n, e in json.loads((tmp_path / "a" / "metrics.json").read_text())["tasks"].items()
    }
    assert sum(steps.values()) == 8

    # One prompt for all tasks: every task's checkpoint holds the same prompt, and its own head.
    shared = [*sets, "prompt_sharing=shared", "tasks.1.prompt=null", "tasks.2.train={}"]
    assert train_multi(multitask_yaml, tmp_path / "shared", *shared) == 0
    metrics = json.loads((tmp_path / "shared" / "metrics.json").read_text())
    tensors = {
        t: load_file(tmp_path / "shared" / "tasks" / t / "checkpoint" / "adapter.safetensors")
        for t in ("sent", "question", "ner")
    }
    prompt_keys = [k for k in tensors["sent"] if "prompt" in k]
    assert prompt_keys and all(k in tensors["ner"] for k in prompt_keys)
    assert all((tensors["sent"][k] == tensors["ner"][k]).all() for k in prompt_keys)
    prompt_size = sum(tensors["sent"][k].numel() for k in prompt_keys)
    heads = sum(v.numel() for t in tensors.values() for k, v in t.items() if "prompt" not in k)
    assert metrics["trainable_params"] == prompt_size + heads


# ---- config errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (
            ["tasks.1.data={name: trec7}"],
            "tasks[1].data.name: unknown built-in data set 'trec7'; did you mean 'trec6'?",
        ),
        (["tasks.1.data={name: conll2003}"], "tasks[1].data.name: 'conll2003' is a ner data set"),
        (["tasks.1.name=sent"], "tasks[1].name: 'sent' is the name of an earlier task"),
        (["tasks.2.train.max_steps=5"], "tasks[2].train.max_steps: shared by all tasks"),
        (["train.save_every=10"], "train.save_every: not supported by multi-task runs"),
        (["tasks.0.task=seq2seq"], "tasks[1].task: 'classification' needs backbone kind 'encoder'"),
        (["tasks.2.task=nerr"], "tasks[2].task: unknown task 'nerr'; did you mean 'ner'?"),
        (["method=lora"], "method: 'lora' cannot train several tasks on one shared backbone"),
        (["mix=tempreature"], "mix: 'tempreature' is not one of"),
        (["temperature=2"], "temperature: applies to mix: temperature only"),
        (["prompt_sharing=shared"], "tasks[1].prompt: with prompt_sharing: shared"),
        (["tasks.0.prompt.num_virtual_tokens=0"], "tasks[0]: prompt.num_virtual_tokens"),
        (["tasks.5.name=x"], "there is no tasks[5]"),
    ],
)
def test_config_errors_name_the_field(multitask_yaml, sets, message) -> None:
    with pytest.raises(ConfigError) as error:
        load_multitask_config(multitask_yaml, sets)
    assert message in str(error.value)
    assert "\n" not in str(error.value)


def test_the_multi_prompt_model_serves_the_tasks_of_one_run_together(multitask_yaml, tmp_path) -> None:
    from ptuning_v2.serving.multi_prompt import MultiPromptModel

    assert train_multi(multitask_yaml, tmp_path / "run", "train.max_steps=6", "train.eval_every=null") == 0
    folders = [tmp_path / "run" / "tasks" / name / "checkpoint" for name in ("sent", "question", "ner")]
    multi = MultiPromptModel.from_checkpoints(folders, device="cpu")
    assert sorted(multi.tasks) == ["ner", "question", "sent"]
    texts, tasks = (
        ["the movie was good", "who is the actor", "this film is bad"],
        ["sent", "question", "sent"],
    )
    batch = dict(multi.tokenizer(texts, padding=True, return_tensors="pt"))
    mixed = multi.run(batch, tasks)
    for text, name, row in zip(texts, tasks, mixed, strict=True):
        task, model = load_trained(folders[["sent", "question", "ner"].index(name)], device="cpu")
        alone = model(dict(task.tokenizer([text], return_tensors="pt")))["logits"][0]
        assert (row["logits"] - alone).abs().max() <= 1e-5


def test_ptv2_train_points_a_multi_task_config_to_train_multi(capsys) -> None:
    from ptuning_v2.cli.main import main

    config = str(Path(__file__).parents[2] / "configs" / "multitask_rt_trec_conll.yaml")
    assert main(["train", config, "--output-dir", "unused"]) == 2
    assert f"use ptv2 train-multi {config}" in capsys.readouterr().err
