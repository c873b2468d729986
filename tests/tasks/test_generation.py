"""Generation tasks (causal_lm, seq2seq): features, losses against transformers' own, batched generation,
options, metrics, and training end to end on tiny random models."""

from __future__ import annotations

import json
import re
import threading
from pathlib import Path

import pytest
import torch
from datasets import Dataset, DatasetDict
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from ptuning_v2.cli.main import main
from ptuning_v2.config import ConfigError, DeepPromptConfig, RunConfig
from ptuning_v2.data import DataError
from ptuning_v2.evaluation.generation import text_metrics
from ptuning_v2.experiments.untuned import evaluate_untuned
from ptuning_v2.models import load_backbone, load_tokenizer
from ptuning_v2.prompts.model import DeepPromptModel, mask_positions
from ptuning_v2.tasks import get_task
from ptuning_v2.tasks.generation import SAMPLING, seeded
from ptuning_v2.trained.model import load_trained
from ptuning_v2.training.recipe import train_run

SOURCES = ["the movie was good", "a bad plot", "i think this film is great fun", "awful"]


@pytest.fixture(scope="module")
def llama_dir(tiny_llama_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny Llama's tokenizer with weights drawn at std 0.3, so that a prompt can move its outputs."""
    directory = tmp_path_factory.mktemp("gen_llama")
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    config = LlamaConfig.from_pretrained(tiny_llama_dir)
    config.initializer_range = 0.3
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def make_task(model: Path, task: str = "causal_lm", **options):
    run = RunConfig.from_dict({"model": str(model), "task": task, "task_options": options})
    return get_task(task)(run, load_tokenizer(str(model)))


def rows(target: str | None = "great movie") -> list[dict]:
    return [{"source": s, "aspect": "tone", **({"target": target} if target else {})} for s in SOURCES]


# ---------------------------------------------------------------------------------------------- metrics


def test_text_metrics_on_a_hand_computed_example() -> None:
    """'cats' and 'cat' match after stemming: 5 of 6 predicted and 5 of 7 reference tokens in the LCS."""
    metrics = text_metrics(["the cat sat on the mat"], ["the cats were sitting on the mat"])
    assert metrics["rougeL"] == pytest.approx(100 * 2 * (5 / 6) * (5 / 7) / (5 / 6 + 5 / 7))
    assert metrics["rouge1"] == pytest.approx(metrics["rougeL"])
    assert metrics["gen_words"] == 6
    perfect = text_metrics(["a b c d e"], ["a b c d e"])
    assert perfect["bleu"] == pytest.approx(100.0) and perfect["rouge2"] == pytest.approx(100.0)


# ------------------------------------------------------------------------------------------- features


def test_causal_lm_features_train_on_the_target_only(llama_dir: Path) -> None:
    task = make_task(llama_dir, source_template="{aspect} of: {source} =")
    tokenizer = task.tokenizer
    features = [task.encode(row) for row in rows()]
    batch = task.collate(features)
    first = features[0]
    assert (
        first["prompt_ids"]
        == [tokenizer.bos_token_id]
        + tokenizer("tone of: the movie was good =", add_special_tokens=False)["input_ids"]
    )
    assert first["target_ids"] == tokenizer("great movie", add_special_tokens=False)["input_ids"] + [
        tokenizer.eos_token_id
    ]
    # left padding: every prompt ends in the last column, every sequence ends with its target
    assert (batch["prompt_attention_mask"][:, -1] == 1).all()
    for row, feature in enumerate(features):
        n = len(feature["target_ids"])
        assert batch["labels"][row, -n:].tolist() == feature["target_ids"]
        assert (batch["labels"][row, :-n] == -100).all()
        assert batch["input_ids"][row, -n:].tolist() == feature["target_ids"]
        assert int(batch["attention_mask"][row].sum()) == len(feature["prompt_ids"]) + n


def test_source_is_cut_to_max_source_length_tokens(llama_dir: Path) -> None:
    task = make_task(llama_dir, max_source_length=3, source_template="({source})")
    prompt = task.tokenizer.decode(task.encode({"source": "the movie was good"})["prompt_ids"])
    assert prompt == "[CLS] ( the movie was )"


@pytest.mark.parametrize("prompted", [False, True])
def test_causal_lm_loss_is_transformers_own_loss(llama_dir: Path, prompted: bool) -> None:
    task = make_task(llama_dir)
    backbone = load_backbone(str(llama_dir), "causal_lm")
    encoder = DeepPromptModel(backbone, DeepPromptConfig(num_virtual_tokens=3)) if prompted else backbone
    model = task.build_model(encoder).eval()
    batch = task.collate([task.encode(row) for row in rows()])
    with torch.no_grad():
        ours = model(batch)["loss"]
        reference = encoder(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            position_ids=mask_positions(batch["attention_mask"]),
            labels=batch["labels"],
        ).loss
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=1e-5)


def test_seq2seq_loss_is_transformers_own_loss(tiny_t5_dir: Path) -> None:
    task = make_task(tiny_t5_dir, "seq2seq", source_template="summarise: {source}")
    backbone = load_backbone(str(tiny_t5_dir), "seq2seq")
    model = task.build_model(DeepPromptModel(backbone, DeepPromptConfig(num_virtual_tokens=2))).eval()
    features = [task.encode(row) for row in rows()]
    assert features[0]["labels"][-1] == task.tokenizer.eos_token_id
    batch = task.collate(features)
    with torch.no_grad():
        ours = model(batch)["loss"]
        reference = model.encoder(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]
        ).loss
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("decoding", [{}, {"num_beams": 3}])
def test_batched_generation_equals_one_input_at_a_time(llama_dir: Path, decoding: dict) -> None:
    task = make_task(llama_dir, max_new_tokens=5, generation=decoding)
    backbone = load_backbone(str(llama_dir), "causal_lm")
    model = task.build_model(DeepPromptModel(backbone, DeepPromptConfig(num_virtual_tokens=3, init_std=0.5)))
    model.eval()
    together = task.predict(model, SOURCES)
    alone = [task.predict(model, [source])[0] for source in SOURCES]
    assert together == alone
    assert len({p["generated"] for p in together}) > 1  # inputs matter


def test_sampling_is_seeded_by_the_run(llama_dir: Path) -> None:
    task = make_task(llama_dir, max_new_tokens=6, generation={"do_sample": True, "top_k": 0})
    model = task.build_model(load_backbone(str(llama_dir), "causal_lm")).eval()
    first, second = task.predict(model, SOURCES), task.predict(model, SOURCES)
    assert first == second


def test_seeded_sampling_takes_turns_and_greedy_decoding_does_not_wait() -> None:
    """A sampled call draws from the global generator seeded for it alone (and leaves it as it was), holding
    SAMPLING; a greedy call takes neither the lock nor the generator, so it runs beside a sampled one."""
    torch.manual_seed(123)
    state = torch.get_rng_state()
    with seeded(7, {"do_sample": True}):
        assert SAMPLING.locked()
        drawn = torch.rand(3)
    assert torch.equal(drawn, torch.rand(3, generator=torch.Generator().manual_seed(7)))
    assert torch.equal(torch.get_rng_state(), state)
    untouched = []

    def greedy() -> None:
        with seeded(7, {"do_sample": False}):
            untouched.append(torch.equal(torch.get_rng_state(), state))

    with SAMPLING:  # as a sampled call does
        beside = threading.Thread(target=greedy, daemon=True)
        beside.start()
        beside.join(timeout=10)
    assert untouched == [True]


# -------------------------------------------------------------------------------------------- options


def test_options_are_checked_with_their_names(llama_dir: Path) -> None:
    with pytest.raises(ConfigError, match="unknown option.*max_len"):
        make_task(llama_dir, max_len=3)
    with pytest.raises(ConfigError, match="task_options.max_new_tokens"):
        make_task(llama_dir, max_new_tokens=0)
    with pytest.raises(ConfigError, match="task_options.generation.*beams"):
        make_task(llama_dir, generation={"beams": 2})
    with pytest.raises(ConfigError, match="task_options.source_template"):
        make_task(llama_dir, source_template="{}")
    task = make_task(llama_dir, source_template="{aspect}: {source}")
    splits = DatasetDict({"train": Dataset.from_list([{"source": "a", "target": "b"}])})
    with pytest.raises(DataError, match="train split has no column.*aspect"):
        task.prepare(splits)
    with pytest.raises(DataError, match="'aspect'"):
        task.predict(task.build_model(load_backbone(str(llama_dir), "causal_lm")), ["no aspect given"])


def test_predict_reads_json_objects_for_templates_with_several_fields(llama_dir: Path) -> None:
    task = make_task(llama_dir, source_template="{aspect}: {source}", max_new_tokens=2)
    model = task.build_model(load_backbone(str(llama_dir), "causal_lm")).eval()
    [out] = task.predict(model, [json.dumps({"source": "good film", "aspect": "tone"})])
    assert out["input"] == {"source": "good film", "aspect": "tone"} and isinstance(out["generated"], str)


def test_a_column_that_is_not_a_text_is_named(llama_dir: Path) -> None:
    task = make_task(llama_dir)
    with pytest.raises(DataError, match=re.escape("record '1': field 'source': expected a text, got int 5")):
        task.predict_features(["good film", json.dumps({"source": 5})])
    with pytest.raises(
        DataError, match=re.escape("record '0': field 'source': expected a text, got NoneType")
    ):
        task.predict_features([{"source": None}])
    as_text = task.predict_features(["[1, 2]"])  # JSON, but no object: the source itself
    assert as_text == task.predict_features([{"source": "[1, 2]"}])
    with pytest.raises(DataError, match=re.escape("source_template needs the field 'source'")):
        task.predict_features([json.dumps({"text": "x"})])  # the template's own error, not a KeyError
    titled = make_task(llama_dir, source_template="{title}\n")  # a template without a source
    assert titled.predict_features([{"title": "x"}]) == titled.predict_features([json.dumps({"title": "x"})])


# ----------------------------------------------------------------------------------------- end to end


def write_splits(directory: Path) -> dict[str, str]:
    """A target the prompt can learn ('great movie' whatever the source)."""
    files = {}
    for split, n in (("train", 32), ("validation", 8), ("test", 8)):
        path = directory / f"{split}.jsonl"
        lines = [json.dumps({"source": SOURCES[i % 4], "target": "great movie"}) for i in range(n)]
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        files[split] = str(path)
    return files


def run_config(model: Path, task: str, files: dict[str, str], method: str = "ptuning_v2") -> RunConfig:
    return RunConfig.from_dict(
        {
            "model": str(model),
            "task": task,
            "method": method,
            "data": files,
            "prompt": {"num_virtual_tokens": 4},
            "train": {
                "max_steps": 40,
                "batch_size": 8,
                "eval_batch_size": 8,
                "lr": 0.1,
                "scheduler": "constant",
                "warmup_ratio": 0.0,
            },
            "task_options": {"max_new_tokens": 3, "source_template": "{source} ="},
        }  # fmt: skip
    )


def test_causal_lm_trains_evaluates_and_predicts(llama_dir: Path, tmp_path: Path, capsys) -> None:
    run = run_config(llama_dir, "causal_lm", write_splits(tmp_path))
    untuned = evaluate_untuned(run, tmp_path / "untuned")
    tuned = train_run(run, tmp_path / "tuned", show_progress=False)
    for key in ("bleu", "rouge1", "rouge2", "rougeL", "perplexity", "loss"):
        assert key in tuned["test"]
    assert tuned["test"]["loss"] < untuned["test"]["loss"] - 1.0
    assert tuned["test"]["rougeL"] > untuned["test"]["rougeL"]
    checkpoint = str(tmp_path / "tuned" / "checkpoint")
    assert main(["predict", checkpoint, "the movie was good"]) == 0
    [line] = capsys.readouterr().out.splitlines()
    assert json.loads(line)["generated"] == "great movie"
    assert main(["eval", checkpoint, "--output-dir", str(tmp_path / "eval")]) == 0
    evaluated = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert evaluated["test"]["rougeL"] == pytest.approx(tuned["test"]["rougeL"])


def test_full_fine_tuning_generates_through_the_plain_backbone(llama_dir: Path, tmp_path: Path) -> None:
    run = run_config(llama_dir, "causal_lm", write_splits(tmp_path), method="full")
    run.train.max_steps, run.train.lr = 5, 1e-3
    train_run(run, tmp_path / "full", show_progress=False)
    task, model = load_trained(tmp_path / "full" / "checkpoint")
    pretrained = load_backbone(str(llama_dir), "causal_lm").state_dict()
    tuned = model.encoder.state_dict()
    assert set(tuned) == set(pretrained)  # the plain backbone, no prompt around it
    assert any(not torch.equal(tuned[name], pretrained[name]) for name in pretrained)  # its weights trained
    assert isinstance(task.predict(model, ["a bad plot"])[0]["generated"], str)


def test_seq2seq_trains_and_evaluates(tiny_t5_dir: Path, tmp_path: Path) -> None:
    run = run_config(tiny_t5_dir, "seq2seq", write_splits(tmp_path))
    untuned = evaluate_untuned(run, tmp_path / "untuned")
    tuned = train_run(run, tmp_path / "tuned", show_progress=False)
    assert tuned["test"]["loss"] < untuned["test"]["loss"] - 1.0
    assert tuned["test"]["rougeL"] >= untuned["test"]["rougeL"]


@pytest.mark.slow
@pytest.mark.parametrize("task", ["causal_lm", "seq2seq"])
def test_builtin_aclsum_feeds_both_tasks(task: str) -> None:
    from ptuning_v2.training.recipe import load_splits

    run = RunConfig.from_dict({"model": "smollm2", "task": task, "data": {"name": "aclsum"}})
    splits = load_splits(run, get_task(task))
    assert {"source", "target", "aspect"} <= set(splits["test"].column_names)
