"""Benchmark results as JSON, a markdown report (tables + targets) and PNG plots."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ptuning_v2.benchmarks.timing import ratio_stats
from ptuning_v2.utils.io import atomic_write, write_json_atomic, write_text_atomic

Row = dict[str, Any]


@dataclass(frozen=True)
class Target:
    """A ratio that must stay at or under ``limit`` (targets of the performance issue)."""

    name: str
    section: str
    """``inference`` or ``training``: where the rows are."""
    model: str
    batch: int
    seq_len: int
    variant: str
    k: int | None
    limit: float
    against: tuple[str, int | None] | None = None
    """Compare with another variant of the same case (per-round ratio) instead of the case's reference."""
    field: str = "ratio"
    """``ratio`` (time) or ``peak_mib`` (memory against the reference's)."""


TARGETS = (
    Target("MiniLM 16x128, k=20: latency / plain", "inference", "minilm", 16, 128, "ptuning_v2", 20, 1.02),
    Target("MiniLM 16x128, k=100: latency / plain", "inference", "minilm", 16, 128, "ptuning_v2", 100, 1.06),
    Target("SmolLM2 4x128, k=100: latency / plain", "inference", "smollm2", 4, 128, "ptuning_v2", 100, 1.04),
    Target(
        "SmolLM2 4x128, k=100: latency / PEFT prefix tuning k=100",
        "inference",
        "smollm2",
        4,
        128,
        "ptuning_v2",
        100,
        1.0,
        against=("peft_prefix", 100),
    ),
    Target(
        "MiniLM train 32x64, k=20: step time / full FT", "training", "minilm", 32, 64, "ptuning_v2", 20, 0.55
    ),
    Target(
        "MiniLM train 32x64, k=20: peak memory / full FT",
        "training",
        "minilm",
        32,
        64,
        "ptuning_v2",
        20,
        1.0,
        field="peak_mib",
    ),
)

REFERENCES = {"inference": ("plain", None), "training": ("full", None)}


def find_row(
    rows: list[Row], model: str, batch: int, seq_len: int, variant: str, k: int | None
) -> Row | None:
    for row in rows:
        if (row["model"], row["batch"], row["seq_len"], row["variant"], row["k"]) == (
            model,
            batch,
            seq_len,
            variant,
            k,
        ) and not row.get("error"):
            return row
    return None


def evaluate_targets(results: dict[str, Any], targets: tuple[Target, ...] = TARGETS) -> list[Row]:
    """Each target whose rows were measured: the value, the limit and whether it was met."""
    out = []
    for target in targets:
        rows = results.get(target.section, [])
        row = find_row(rows, target.model, target.batch, target.seq_len, target.variant, target.k)
        other_key = target.against or REFERENCES[target.section]
        other = find_row(rows, target.model, target.batch, target.seq_len, *other_key)
        if row is None or other is None:
            continue
        if target.field == "peak_mib":
            value = row["peak_mib"] / other["peak_mib"]
        elif target.against is None:
            value = row["ratio"]
        else:
            value = ratio_stats(other["wall_ms"], row["wall_ms"]).median
        out.append(
            {"target": target.name, "value": value, "limit": target.limit, "met": bool(value <= target.limit)}
        )
    return out


def write_report(results: dict[str, Any], out_dir: Path) -> list[Path]:
    """bench.json, bench.md and one PNG per section that has rows; returns the paths written."""
    paths = [
        write_json_atomic(out_dir / "bench.json", results),
        write_text_atomic(out_dir / "bench.md", markdown(results)),
    ]
    if any(not r.get("error") for r in results.get("inference", [])):
        paths.append(plot_inference(results["inference"], out_dir / "inference.png"))
    if any(not r.get("error") for r in results.get("training", [])):
        paths.append(plot_training(results["training"], out_dir / "training.png"))
    return paths


def _f(value: float | None, digits: int = 1) -> str:
    return "" if value is None else f"{value:,.{digits}f}"


def _ratio(row: Row) -> str:
    return f"{row['ratio']:.3f} ({row['ratio_q1']:.3f}-{row['ratio_q3']:.3f})"


def _variant(row: Row) -> str:
    return row["variant"] if row["k"] is None else f"{row['variant']} k={row['k']}"


def markdown(results: dict[str, Any]) -> str:
    meta = results.get("meta", {})
    lines = ["# Benchmark results", ""]
    if meta:
        lines += [
            f"Command: `{meta.get('command', '')}`",
            "",
            ", ".join(
                f"{key}: {meta[key]}"
                for key in ("device", "dtype", "threads", "torch", "transformers", "allocator")
                if key in meta  # files written before the allocator was recorded
            ),
            "",
        ]
    if results.get("targets"):
        lines += ["## Targets", "", "| target | measured | limit | met |", "|---|---|---|---|"]
        for t in results["targets"]:
            lines.append(
                f"| {t['target']} | {t['value']:.3f} | {t['limit']:.2f} | {'yes' if t['met'] else 'NO'} |"
            )
        lines.append("")
    lines += _table(
        [
            "## Inference (forward pass)",
            "",
            "Ratio: median over rounds of the variant's latency / the plain model's in the same round "
            "(interquartile range in brackets); cpu ratio: the same on process CPU time.",
            "",
        ],
        ["p50 ms", "p90 ms", "examples/s", "tokens/s", "peak MiB", "ratio to plain", "cpu ratio"],
        results.get("inference", []),
        lambda r: [
            _f(r["latency_p50_ms"]),
            _f(r["latency_p90_ms"]),
            _f(r["examples_per_s"]),
            _f(r["tokens_per_s"], 0),
            _f(r["peak_mib"]),
            _ratio(r),
            _f(r["cpu_ratio"], 3),
        ],
    )
    lines += _table(
        ["## Training step (forward, backward, AdamW step)", ""],
        ["trained params", "step p50 ms", "step p90 ms", "peak MiB", "ratio to full FT", "cpu ratio"],
        results.get("training", []),
        lambda r: [
            f"{r['trainable_params']:,}",
            _f(r["step_p50_ms"]),
            _f(r["step_p90_ms"]),
            _f(r["peak_mib"]),
            _ratio(r),
            _f(r["cpu_ratio"], 3),
        ],
    )
    notes = meta.get("notes", [])
    if notes:
        lines += ["## Notes", ""] + [f"- {note}" for note in notes] + [""]
    return "\n".join(lines)


def _table(
    intro: list[str], columns: list[str], rows: list[Row], cells: Callable[[Row], list[str]]
) -> list[str]:
    """A section's table: the case and variant, then ``cells``; a failed variant's row holds its error.

    Nothing for a section without rows (it was not run).
    """
    if not rows:
        return []
    columns = ["model", "batch x tokens", "variant", *columns]
    lines = [*intro, "| " + " | ".join(columns) + " |", "|---" * len(columns) + "|"]
    for r in rows:
        head = f"| {r['model']} | {r['batch']} x {r['seq_len']} | {_variant(r)} |"
        if r.get("error"):
            lines.append(f"{head} failed: {r['error']} " + "|" * (len(columns) - 2))
        else:
            lines.append(f"{head} " + " | ".join(cells(r)) + " |")
    return [*lines, ""]


def plot_inference(rows: list[Row], path: Path) -> Path:
    """Ratio to the plain model against k, one line per model and input shape (IQR as error bars)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    cases = sorted({(r["model"], r["batch"], r["seq_len"]) for r in rows if not r.get("error")})
    for model, batch, seq_len in cases:
        for variant, style in (("ptuning_v2", "o-"), ("peft_prefix", "s--")):
            points = sorted(
                (r["k"], r["ratio"], r["ratio_q1"], r["ratio_q3"])
                for r in rows
                if (r["model"], r["batch"], r["seq_len"], r["variant"]) == (model, batch, seq_len, variant)
                and not r.get("error")
            )
            if not points:
                continue
            ks, ratios, q1, q3 = zip(*points, strict=True)
            errors = [
                [m - a for m, a in zip(ratios, q1, strict=True)],
                [b - m for m, b in zip(ratios, q3, strict=True)],
            ]
            label = f"{model} {batch}x{seq_len}" + (" (PEFT)" if variant == "peft_prefix" else "")
            ax.errorbar(ks, ratios, yerr=errors, fmt=style, capsize=3, label=label)
    ax.axhline(1.0, color="gray", lw=0.8)
    ax.set_xlabel("prefix tokens per layer (k)")
    ax.set_ylabel("latency / plain model (median of per-round ratios)")
    ax.set_title("Inference cost of deep prompts")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def plot_training(rows: list[Row], path: Path) -> Path:
    """Step time and peak memory of each variant, relative to full fine-tuning of the same case."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in rows if not r.get("error")]
    xs: list[float] = []
    labels, ratios, memory, colors = [], [], [], []
    position = 0.0
    for i, case in enumerate(sorted({(r["model"], r["batch"], r["seq_len"]) for r in ok})):
        case_rows = [r for r in ok if (r["model"], r["batch"], r["seq_len"]) == case]
        full = find_row(case_rows, *case, "full", None)
        for r in case_rows:
            xs.append(position)
            labels.append(f"{case[0]} {case[1]}x{case[2]}: {_variant(r)}")
            ratios.append(r["ratio"])
            memory.append(r["peak_mib"] / full["peak_mib"] if full else float("nan"))
            colors.append(f"C{i}")
            position += 1
        position += 0.5
    fig, axes = plt.subplots(1, 2, figsize=(11, 5))
    axes[0].bar(xs, ratios, color=colors)
    axes[1].bar(xs, memory, color=colors)
    for ax in axes:
        ax.set_xticks(xs, labels, rotation=40, ha="right", fontsize=7)
        ax.axhline(1.0, color="gray", lw=0.8)
    axes[0].set_ylabel("step time / full fine-tuning")
    axes[1].set_ylabel("peak memory / full fine-tuning")
    fig.suptitle("Training step cost")
    fig.tight_layout()
    return _save(fig, path)


def _save(fig: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)
    return path
