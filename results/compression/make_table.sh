#!/usr/bin/env bash
# Compress a trained prompt checkpoint at several ranks, evaluate each compressed checkpoint with
# `ptv2 eval`, and write results/compression/<name>/summary.json and table.md (docs/compression.md).
#   results/compression/make_table.sh NAME CHECKPOINT "RANKS" "VARIANCES"
# e.g. results/compression/make_table.sh rotten_tomatoes runs/compress/rt/checkpoint "1 2 4 8 16 20" "0.9 0.99"
set -euo pipefail
name=$1 checkpoint=$2 ranks=$3 variances=$4
work=runs/compress/$name out=results/compression/$name
mkdir -p "$work" "$out"
ptv2=${PTV2:-.venv/bin/ptv2}
$ptv2 eval "$checkpoint" --output-dir "$work/eval-dense" --overwrite > /dev/null
cp "$work/eval-dense/metrics.json" "$out/dense-metrics.json"
variants=()
for r in $ranks; do variants+=("rank-$r:--rank $r"); done
for v in $variances; do variants+=("variance-$v:--variance $v"); done
for variant in "${variants[@]}"; do
  label=${variant%%:*} args=${variant#*:}
  # shellcheck disable=SC2086
  $ptv2 compress "$checkpoint" $args --output-dir "$work/$label" --overwrite
  $ptv2 eval "$work/$label" --output-dir "$work/eval-$label" --overwrite > /dev/null
  mkdir -p "$out/$label"
  cp "$work/$label/compression_report.json" "$work/eval-$label/metrics.json" "$out/$label/"
done
.venv/bin/python - "$out" "$checkpoint" <<'PY'
import json, sys
from pathlib import Path

out, checkpoint = Path(sys.argv[1]), sys.argv[2]
dense = json.loads((out / "dense-metrics.json").read_text())
metric = "accuracy" if "accuracy" in dense["test"] else "f1"
rows = []
for folder in sorted(p for p in out.iterdir() if p.is_dir()):
    report = json.loads((folder / "compression_report.json").read_text())
    metrics = json.loads((folder / "metrics.json").read_text())
    ranks = [layer["rank"] for layer in report["layers"]]
    rows.append({
        "variant": folder.name,
        "ranks": ranks,
        "prompt_bytes": report["prompt_bytes_after"],
        "adapter_bytes": report["adapter_bytes_after"],
        "checkpoint_bytes": report["checkpoint_bytes_after"],
        "max_relative_error": report["max_relative_error"],
        "mean_relative_error": sum(l["relative_error"] for l in report["layers"]) / len(ranks),
        "dev": metrics["dev"][metric],
        "test": metrics["test"][metric],
        "test_retained": metrics["test"][metric] / dense["test"][metric],
    })
rows.sort(key=lambda r: (sum(r["ranks"]), r["variant"]))
first = json.loads((out / rows[0]["variant"] / "compression_report.json").read_text())
summary = {
    "checkpoint": checkpoint,
    "metric": metric,
    "dense": {"prompt_bytes": first["prompt_bytes_before"], "adapter_bytes": first["adapter_bytes_before"],
              "checkpoint_bytes": first["checkpoint_bytes_before"],
              "dev": dense["dev"][metric], "test": dense["test"][metric]},
    "rows": rows,
}
(out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
d = summary["dense"]
lines = [f"| variant | rank per layer | prompt bytes | adapter file | mean / max rel. error | dev {metric} | test {metric} | test retained |",
         "|---|---|---|---|---|---|---|---|",
         f"| dense (original) | full | {d['prompt_bytes']:,} | {d['adapter_bytes']:,} | 0 | {d['dev']:.4f} | {d['test']:.4f} | 100.0% |"]
for r in rows:
    ranks = str(r["ranks"][0]) if len(set(r["ranks"])) == 1 else "/".join(map(str, r["ranks"]))
    lines.append(f"| {r['variant']} | {ranks} | {r['prompt_bytes']:,} ({r['prompt_bytes'] / d['prompt_bytes']:.0%}) | "
                 f"{r['adapter_bytes']:,} | {r['mean_relative_error']:.3f} / {r['max_relative_error']:.3f} | "
                 f"{r['dev']:.4f} | {r['test']:.4f} | {r['test_retained']:.1%} |")
(out / "table.md").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
PY
