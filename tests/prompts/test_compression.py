"""PCA prompt compression: the factors match an independent SVD, compressed folders load everywhere."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from tiny_runs import sentiment_run
from transformers import AutoTokenizer

from ptuning_v2.checkpoint import CheckpointError
from ptuning_v2.cli.main import main
from ptuning_v2.config import ConfigError, RunConfig
from ptuning_v2.methods import load_run_config
from ptuning_v2.trained.compression import compress_checkpoint, expand_checkpoint
from ptuning_v2.trained.model import load_trained
from ptuning_v2.training.recipe import train_run

TEXTS = ["the movie was great", "awful boring film", "i think it is fun"]
PROMPTS = ["encoder.prompt.prompts.self_0", "encoder.prompt.prompts.self_1"]


def trained(model_dir: Path, csvs: dict[str, Path], out: Path, *extra: str) -> Path:
    """A few real training steps; prompts of k = 8 x width 64 (tiny BERT: 2 x 32), large enough to matter."""
    run: RunConfig = load_run_config(
        None,
        sentiment_run(
            model_dir,
            csvs,
            "train.max_steps=4",
            "train.eval_every=4",
            "train.lr=5e-2",
            "prompt.num_virtual_tokens=8",
            "prompt.init_std=1.0",
            *extra,
        ),
    )
    train_run(run, out, show_progress=False)
    return out / "checkpoint"


def logits(checkpoint: Path, model_dir: Path) -> torch.Tensor:
    _, model = load_trained(checkpoint, device="cpu")
    batch = dict(AutoTokenizer.from_pretrained(model_dir)(TEXTS, padding=True, return_tensors="pt"))
    with torch.no_grad():
        return model(batch)["logits"]


def numpy_pca(matrix: np.ndarray, rank: int) -> tuple[np.ndarray, np.ndarray]:
    """Rank-``rank`` PCA reconstruction of ``matrix`` and the explained-variance shares, in float64."""
    mean = matrix.mean(axis=0)
    u, s, vt = np.linalg.svd(matrix - mean, full_matrices=False)
    return u[:, :rank] * s[:rank] @ vt[:rank] + mean, np.cumsum(s**2) / np.sum(s**2)


@pytest.fixture()
def checkpoint(tiny_bert_dir: Path, sentiment_csvs: dict[str, Path], tmp_path: Path) -> Path:
    return trained(tiny_bert_dir, sentiment_csvs, tmp_path / "run")


def test_loaded_prompts_are_the_svd_reconstruction_and_the_head_is_unchanged(
    checkpoint: Path, tmp_path: Path
) -> None:
    report = compress_checkpoint(checkpoint, tmp_path / "r3", rank=3)
    dense = {k: v.double().numpy() for k, v in load_file(str(checkpoint / "adapter.safetensors")).items()}
    stored = load_file(str(tmp_path / "r3" / "adapter.safetensors"))
    assert {k for k in stored if "prompt" in k} == {
        f"{p}.{f}" for p in PROMPTS for f in ("pca_mean", "pca_components", "pca_coefficients")
    }
    assert stored[f"{PROMPTS[0]}.pca_coefficients"].shape == (8, 3)
    assert stored[f"{PROMPTS[0]}.pca_components"].shape == (3, 64)

    _, model = load_trained(tmp_path / "r3", device="cpu")
    params = dict(model.named_parameters())
    on_disk = json.loads((tmp_path / "r3" / "compression_report.json").read_text())
    for i, name in enumerate(PROMPTS):
        expected, _ = numpy_pca(dense[name], 3)
        np.testing.assert_allclose(params[name].detach().double().numpy(), expected, atol=1e-6, rtol=0)
        error = np.linalg.norm(expected - dense[name]) / np.linalg.norm(dense[name])
        assert 0.05 < error < 1 and on_disk["layers"][i]["relative_error"] == pytest.approx(error, rel=1e-4)
        assert on_disk["layers"][i]["bytes_after"] == (64 + 3 * 64 + 8 * 3) * 4
    assert on_disk == json.loads(json.dumps(report))
    for name in ("head.1.weight", "head.1.bias"):
        assert torch.equal(params[name].detach(), torch.from_numpy(dense[name]).float())


def test_full_rank_reproduces_the_logits_and_rank_one_is_smaller(
    checkpoint: Path, tiny_bert_dir: Path, tmp_path: Path
) -> None:
    original = logits(checkpoint, tiny_bert_dir)
    compress_checkpoint(checkpoint, tmp_path / "full", rank=8)  # min(length 8, width 64)
    torch.testing.assert_close(logits(tmp_path / "full", tiny_bert_dir), original, atol=1e-5, rtol=0)

    report = compress_checkpoint(checkpoint, tmp_path / "r1", rank=1)
    size = (tmp_path / "r1" / "adapter.safetensors").stat().st_size
    assert size < (checkpoint / "adapter.safetensors").stat().st_size
    assert (
        report["adapter_bytes_after"] == size and report["prompt_bytes_after"] < report["prompt_bytes_before"]
    )
    # rank 1 moves the logits far beyond the 1e-5 tolerance: the full-rank check can fail
    assert (logits(tmp_path / "r1", tiny_bert_dir) - original).abs().max() > 1e-4


def test_variance_threshold_keeps_the_fewest_components_that_reach_it(
    checkpoint: Path, tmp_path: Path
) -> None:
    dense = {k: v.double().numpy() for k, v in load_file(str(checkpoint / "adapter.safetensors")).items()}
    report = compress_checkpoint(checkpoint, tmp_path / "v", variance=0.9)
    capped = compress_checkpoint(checkpoint, tmp_path / "vr", rank=2, variance=0.9)
    for layer, layer_capped in zip(report["layers"], capped["layers"], strict=True):
        _, shares = numpy_pca(dense[layer["name"]], 1)
        expected = int(np.argmax(shares >= 0.9)) + 1
        assert layer["rank"] == expected and layer["explained_variance"] >= 0.9
        assert layer_capped["rank"] == min(2, expected)


def test_an_mlp_reparameterised_prompt_is_folded_first(
    tiny_bert_dir: Path, sentiment_csvs: dict[str, Path], tmp_path: Path
) -> None:
    checkpoint = trained(
        tiny_bert_dir,
        sentiment_csvs,
        tmp_path / "mlp",
        "prompt.reparameterize=true",
        "prompt.reparam_hidden_size=16",
    )
    assert "encoder.prompt.mlp.0.weight" in load_file(str(checkpoint / "adapter.safetensors"))
    report = compress_checkpoint(checkpoint, tmp_path / "full", rank=8)
    assert report["folded_mlp"]
    meta = json.loads((tmp_path / "full" / "ptv2_checkpoint.json").read_text())
    assert meta["run_config"]["prompt"]["reparameterize"] is False and meta["compression"]["folded_mlp"]
    torch.testing.assert_close(
        logits(tmp_path / "full", tiny_bert_dir), logits(checkpoint, tiny_bert_dir), atol=1e-5, rtol=0
    )


def test_predict_and_eval_run_on_a_compressed_folder(checkpoint: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "cli"
    assert main(["compress", str(checkpoint), "--rank", "8", "--output-dir", str(out)]) == 0
    table = capsys.readouterr().out
    assert "encoder.prompt.prompts.self_1" in table and "bytes before" in table

    assert main(["predict", str(out), *TEXTS]) == 0
    compressed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert main(["predict", str(checkpoint), *TEXTS]) == 0
    dense = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [p["label"] for p in compressed] == [p["label"] for p in dense]
    for a, b in zip(compressed, dense, strict=True):
        assert a["probabilities"] == pytest.approx(b["probabilities"], abs=1e-5)

    for name, folder in (("dense", checkpoint), ("compressed", out)):
        assert main(["eval", str(folder), "--output-dir", str(tmp_path / f"eval-{name}")]) == 0
    scores = [
        json.loads((tmp_path / f"eval-{n}" / "metrics.json").read_text()) for n in ("dense", "compressed")
    ]
    assert scores[0]["test"]["accuracy"] == scores[1]["test"]["accuracy"]
    assert scores[1]["checkpoint_bytes"] > 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--rank", "0"], "--rank: must be an integer >= 1, got 0"),
        (["--rank", "9"], "--rank 9: larger than any prompted layer allows (at most min(length, width) = 8)"),
        (["--variance", "1.5"], "--variance: must be in (0, 1], got 1.5"),
        ([], "give --rank R and/or --variance V (an explained-variance share, e.g. 0.99)"),
    ],
)
def test_bad_requests_end_with_one_line(checkpoint: Path, tmp_path: Path, capsys, args, message) -> None:
    assert main(["compress", str(checkpoint), *args, "--output-dir", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.splitlines()[-1:] == [f"ptv2 compress: error: {message}"]
    assert not (tmp_path / "out").exists()


def test_a_rank_beyond_a_short_layer_is_clipped_there_and_said(
    tiny_bert_dir: Path, sentiment_csvs: dict[str, Path], tmp_path: Path, capsys
) -> None:
    checkpoint = trained(tiny_bert_dir, sentiment_csvs, tmp_path / "run", "prompt.layer_lengths=[3, 8]")
    assert main(["compress", str(checkpoint), "--rank", "5", "--output-dir", str(tmp_path / "r5")]) == 0
    assert "(clipped to min(length, width) = 3)" in capsys.readouterr().out
    report = json.loads((tmp_path / "r5" / "compression_report.json").read_text())
    assert [(r["length"], r["rank"], r["clipped"]) for r in report["layers"]] == [(3, 3, True), (8, 5, False)]
    assert report["layers"][0]["relative_error"] < 1e-6


def test_a_compressed_checkpoint_is_refused_until_expanded(checkpoint: Path, tmp_path: Path) -> None:
    compress_checkpoint(checkpoint, tmp_path / "r2", rank=2)
    with pytest.raises(CheckpointError, match="already compressed.*--expand"):
        compress_checkpoint(tmp_path / "r2", tmp_path / "again", rank=1)
    with pytest.raises(ConfigError, match="must differ"):
        compress_checkpoint(checkpoint, checkpoint, rank=1)

    expand_checkpoint(tmp_path / "r2", tmp_path / "dense")
    meta = json.loads((tmp_path / "dense" / "ptv2_checkpoint.json").read_text())
    assert "compression" not in meta and meta["expanded_from"]["rank"] == 2
    stored = load_file(str(tmp_path / "dense" / "adapter.safetensors"))
    _, model = load_trained(tmp_path / "r2", device="cpu")
    for name in PROMPTS:
        assert torch.equal(stored[name], dict(model.named_parameters())[name].detach())
    report = compress_checkpoint(tmp_path / "dense", tmp_path / "r1", rank=1)
    assert [layer["rank"] for layer in report["layers"]] == [1, 1]
