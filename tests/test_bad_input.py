"""Bad input, tried as a user would: one clear line and exit code 2, or a counted, reported action.

Every case here once ended in a Python traceback, in silence, or in an unhelpful message (issue 11).
"""

from __future__ import annotations

import json
import random
import re
import shutil
import time
import zipfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ptuning_v2.cli.main import main
from ptuning_v2.config import ConfigError, RunConfig, check_eval_overrides
from ptuning_v2.data import DataError
from ptuning_v2.methods import load_run_config


def run_cli(args: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def one_line_error(err: str, command: str) -> str:
    """The error line; there must be nothing else (no traceback) on stderr besides [data] notices."""
    lines = [line for line in err.strip().splitlines() if not line.startswith("[data]")]
    assert len(lines) == 1, err
    assert lines[0].startswith(f"ptv2 {command}: error: "), err
    return lines[0]


def sentiment_rows(n: int, seed: int) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    positive, negative = ["good", "great", "fun", "best"], ["bad", "awful", "boring", "worst"]
    return [
        (f"the movie was {rng.choice(positive if i % 2 == 0 else negative)}", "pos" if i % 2 == 0 else "neg")
        for i in range(n)
    ]


def write_csv(path: Path, rows: list[tuple[str, str]], sep: str = ",") -> Path:
    path.write_text("\n".join([f"review{sep}sentiment"] + [f"{t}{sep}{label}" for t, label in rows]) + "\n")
    return path


def train_args(model: Path, files: dict[str, Path], out: Path, *extra: str) -> list[str]:
    sets = [
        f"model={model}",
        *(f"data.{split}={path}" for split, path in files.items()),
        "data.columns={text: review, label: sentiment}",
        "train.batch_size=8",
        "train.max_steps=4",
        "train.eval_every=2",
        *extra,
    ]
    return ["train", "--no-progress", "--output-dir", str(out)] + [a for s in sets for a in ("--set", s)]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """train.csv holds a label with a trailing space and a 100,000-character review; dev/test 12 rows."""
    directory = tmp_path_factory.mktemp("bad_input_data")
    train = sentiment_rows(40, 0)
    train[3] = (train[3][0], "neg ")  # trailing space: the same class as "neg", not a third one
    train[5] = ("good " * 20_000, "pos")
    write_csv(directory / "train.csv", train)
    write_csv(directory / "validation.csv", sentiment_rows(12, 1))
    write_csv(directory / "test.csv", sentiment_rows(12, 2))
    return directory


def files_of(directory: Path) -> dict[str, Path]:
    return {split: directory / f"{split}.csv" for split in ("train", "validation", "test")}


@pytest.fixture(scope="module")
def trained(tiny_bert_dir: Path, data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A trained run folder (its data report checked in test_every_record_is_counted)."""
    out = tmp_path_factory.mktemp("bad_input_run") / "run"
    args = train_args(tiny_bert_dir, files_of(data_dir), out, "data.max_eval_examples=8")
    assert main(args) == 0
    return out


# ---------------------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("train.lerning_rate=0.1", "did you mean train.lr?"),
        ("train.learning_rate=0.1", "did you mean train.lr?"),
        ("lr=0.1", "did you mean train.lr?"),
        ("trian.lr=0.1", "did you mean train?"),
        ("prompt.pre_seq_len=8", "did you mean prompt.num_virtual_tokens?"),
        ("train.lr=-1", "train.lr: must be a positive number, got -1.0"),
        ("train.lr=nan", "train.lr: expected a finite number, got 'nan'"),
        ("train.batch_size=0", "train.batch_size: must be an integer >= 1, got 0"),
        ("train.grad_accum_steps=0", "train.grad_accum_steps: must be an integer >= 1, got 0"),
        ("train.eval_batch_size=0", "train.eval_batch_size: must be an integer >= 1, got 0"),
        ("train.max_steps=-5", "train.max_steps: must be an integer >= 1, got -5"),
        ("prompt.num_virtual_tokens=0", "trains only the head"),
        ("prompt.num_virtual_tokens=100000", "above the limit of 1024"),
        ("prompt.layers=abc", "prompt.layers: expected a list, got 'abc'"),
        ("task=classifcation", "did you mean 'classification'?"),
        ("method=ptuning_v3", "did you mean 'ptuning_v2'?"),
        ("train.lr=[1", "not valid YAML"),
    ],
)
def test_bad_config_values_give_one_line(override: str, expected: str, tmp_path: Path, capsys) -> None:
    code, _, err = run_cli(["train", "--set", override, "--output-dir", str(tmp_path / "run")], capsys)
    assert code == 2
    assert expected in one_line_error(err, "train")


@pytest.mark.parametrize("layers", ["[0,7]", "[0,0]", "[-3]"])
def test_prompt_layers_outside_the_model(layers: str, tiny_bert_dir, data_dir, tmp_path, capsys) -> None:
    args = train_args(tiny_bert_dir, files_of(data_dir), tmp_path / "run", f"prompt.layers={layers}")
    code, _, err = run_cli(args, capsys)
    assert code == 2
    line = one_line_error(err, "train")
    assert "prompt.layers" in line and ("2 layers" in line or "repeats" in line)


def test_linear_probe_may_have_no_prompt() -> None:
    config = load_run_config(None, ["method=linear_probe", "prompt.num_virtual_tokens=0"])
    assert config.prompt.num_virtual_tokens == 0


def test_yaml_no_is_the_word_where_a_field_takes_it() -> None:
    """YAML reads ``no`` as false; ``--set train.mixed_precision=no`` (or ``no`` in a file) means the word."""
    assert load_run_config(None, ["train.mixed_precision=no"]).train.mixed_precision == "no"


def test_eval_refuses_model_defining_overrides_only() -> None:
    stored = RunConfig.from_dict({"data": {"train": "a.csv", "test": "b.csv"}})
    check_eval_overrides(
        stored, RunConfig.from_dict({"data": {"test": "c.csv"}, "train": {"max_length": 64}}), "x"
    )
    for changed in ({"head": {"pooling": "mean"}}, {"task": "ner"}, {"prompt": {"num_virtual_tokens": 5}}):
        with pytest.raises(ConfigError, match="cannot change at evaluation"):
            check_eval_overrides(stored, RunConfig.from_dict(changed), "x")


# -------------------------------------------------------------------------------------------- data


def test_every_record_is_counted(trained: Path) -> None:
    metrics = json.loads((trained / "metrics.json").read_text())
    report = metrics["data_report"]
    assert report["train"]["read"] == 40 and report["train"]["used"] == 40
    assert report["train"]["changed"] == {
        "labels stripped of surrounding spaces": 1,
        "truncated to train.max_length=128 tokens": 1,
    }
    for split in ("validation", "test"):
        assert report[split] == {
            "read": 12,
            "used": 8,
            "skipped": {"data.max_eval_examples=8": 4},
            "changed": {},
        }
    first = json.loads((trained / "log.jsonl").read_text().splitlines()[0])  # and the log opens with it
    assert first == {"type": "data", "step": 0, "report": report}
    labels = json.loads((trained / "checkpoint" / "ptv2_checkpoint.json").read_text())["task_state"]["labels"]
    assert labels == ["neg", "pos"]  # "neg " did not become a third class


def test_the_report_is_printed(tiny_bert_dir, data_dir, tmp_path, capsys) -> None:
    code, _, err = run_cli(train_args(tiny_bert_dir, files_of(data_dir), tmp_path / "run"), capsys)
    assert code == 0
    assert "[data] train: 40 read, 40 used; 1 labels stripped of surrounding spaces; 1 truncated" in err


def test_max_train_examples_that_drops_a_class(tiny_bert_dir, tmp_path, capsys) -> None:
    rows = sentiment_rows(30, 0)
    rows[9] = ("the movie was fine", "neutral")  # train.seed 42 keeps rows 0, 3, 7, 8, 20 and 23
    files = {"train": write_csv(tmp_path / "train.csv", rows)}
    files["validation"] = write_csv(tmp_path / "validation.csv", rows[:4] + [rows[9]])
    args = train_args(tiny_bert_dir, files, tmp_path / "run", "data.max_train_examples=6")
    code, _, err = run_cli(args, capsys)
    assert code == 2
    line = one_line_error(err, "train")
    assert "'neutral'" in line and "data.max_train_examples=6" in line


def test_tsv_read_as_csv_says_so(tiny_bert_dir, data_dir, tmp_path, capsys) -> None:
    files = files_of(data_dir)
    files["train"] = write_csv(tmp_path / "train.csv", sentiment_rows(8, 0), sep="\t")
    code, _, err = run_cli(train_args(tiny_bert_dir, files, tmp_path / "run"), capsys)
    assert code == 2
    line = one_line_error(err, "train")
    assert "train.csv" in line and "looks tab-separated" in line and "data.format: tsv" in line


def test_missing_data_file_names_its_split(tiny_bert_dir, data_dir, tmp_path, capsys) -> None:
    files = files_of(data_dir)
    files["validation"] = tmp_path / "nope.csv"
    code, _, err = run_cli(train_args(tiny_bert_dir, files, tmp_path / "run"), capsys)
    assert code == 2
    assert "nope.csv: no such file (data.validation)" in one_line_error(err, "train")  # an absolute path
    files["validation"] = Path("relative") / "nope.csv"
    code, _, err = run_cli(train_args(tiny_bert_dir, files, tmp_path / "run"), capsys)
    assert code == 2
    assert f"nope.csv: no such file (data.validation; relative paths are read from {Path.cwd()})" in err


def test_unknown_model_name_fails_in_seconds(data_dir, tmp_path, capsys) -> None:
    start = time.monotonic()
    args = train_args(Path("ptv2-tests/no-such-model-anywhere"), files_of(data_dir), tmp_path / "run")
    code, _, err = run_cli(args, capsys)
    assert code == 2
    line = one_line_error(err, "train")
    assert "'ptv2-tests/no-such-model-anywhere'" in line and "minilm" in line
    assert time.monotonic() - start < 20  # the hub's own retries took about 50 s


def test_a_config_file_that_is_not_utf8_or_not_yaml_gives_its_line(tmp_path, capsys) -> None:
    (tmp_path / "latin.yaml").write_bytes(b"model: minilm\ntask: classification # caf\xe9\n")
    code, _, err = run_cli(
        ["train", str(tmp_path / "latin.yaml"), "--output-dir", str(tmp_path / "r")], capsys
    )
    assert code == 2 and "latin.yaml: line 2: byte 0xe9 is not valid UTF-8" in one_line_error(err, "train")
    (tmp_path / "bad.yaml").write_text("model: minilm\n  task: [x\n", encoding="utf-8")
    code, _, err = run_cli(["train", str(tmp_path / "bad.yaml"), "--output-dir", str(tmp_path / "r")], capsys)
    assert code == 2 and "bad.yaml: invalid YAML: line 2, column 7: " in one_line_error(err, "train")


def test_texts_that_are_not_texts_name_their_line(tiny_bert_dir, tmp_path, capsys) -> None:
    lines = [json.dumps({"text": i, "label": "ab"[i % 2]}) for i in range(8)]  # numbers all the way down
    (tmp_path / "numbers.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    files = {"train": tmp_path / "numbers.jsonl"}
    code, _, err = run_cli(train_args(tiny_bert_dir, files, tmp_path / "r", "data.columns={}"), capsys)
    assert code == 2
    assert "numbers.jsonl: line 1: field 'text': expected a text, found a number" in one_line_error(
        err, "train"
    )


def test_a_misspelt_column_mapping_is_refused(tiny_bert_dir, data_dir, tmp_path, capsys) -> None:
    columns = "data.columns={text: review, label: sentiment, text_pairr: review}"
    code, _, err = run_cli(train_args(tiny_bert_dir, files_of(data_dir), tmp_path / "r", columns), capsys)
    assert code == 2
    assert "not ['text_pairr']; did you mean 'text_pair'?" in one_line_error(err, "train")


def test_an_output_dir_that_is_a_file_is_refused_before_loading(trained: Path, tmp_path, capsys) -> None:
    (tmp_path / "afile").write_text("x", encoding="utf-8")
    for command in (
        ["train", "--set", "model=/no/such/model", "--output-dir", str(tmp_path / "afile")],
        ["eval", str(trained / "checkpoint"), "--output-dir", str(tmp_path / "afile")],
        ["compress", str(trained / "checkpoint"), "--rank", "1", "--output-dir", str(tmp_path / "afile")],
    ):
        code, _, err = run_cli(command, capsys)
        assert code == 2 and "is a file, not a folder" in one_line_error(err, command[0]), command


def test_eval_and_compress_never_write_over_a_run_unasked(trained: Path, tmp_path, capsys) -> None:
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    before = (run / "metrics.json").read_bytes()
    code, _, err = run_cli(["eval", str(trained / "checkpoint"), "--output-dir", str(run)], capsys)
    assert code == 2 and "holds a metrics.json" in one_line_error(err, "eval") and "--overwrite" in err
    code, _, err = run_cli(
        ["compress", str(trained / "checkpoint"), "--rank", "1", "--output-dir", str(run / "checkpoint")],
        capsys,
    )
    assert code == 2 and "not empty; pass --overwrite" in one_line_error(err, "compress")
    assert (run / "metrics.json").read_bytes() == before  # nothing was written
    assert (
        run_cli(["eval", str(trained / "checkpoint"), "--output-dir", str(run), "--overwrite"], capsys)[0]
        == 0
    )
    assert "train_seconds" not in json.loads(
        (run / "metrics.json").read_text()
    )  # an evaluation trained nothing


# ------------------------------------------------------------------------------- eval and predict


def test_eval_refuses_a_different_model(trained: Path, tmp_path, capsys) -> None:
    checkpoint = str(trained / "checkpoint")
    for override, fragment in (("head.pooling=mean", "head.pooling 'cls' -> 'mean'"), ("task=ner", "task")):
        code, _, err = run_cli(["eval", checkpoint, "--set", override, "--output-dir", str(tmp_path)], capsys)
        assert code == 2
        assert fragment in one_line_error(err, "eval") and "cannot change at evaluation" in err
    code, _, err = run_cli(
        ["eval", checkpoint, "--set", "train.eval_batch_size=0", "--output-dir", str(tmp_path)], capsys
    )
    assert code == 2 and "train.eval_batch_size" in one_line_error(err, "eval")


def test_eval_does_not_need_the_train_file(trained: Path, data_dir: Path, tmp_path, capsys) -> None:
    gone = tmp_path / "moved_away.csv"
    args = ["eval", str(trained / "checkpoint"), "--output-dir", str(tmp_path / "eval")]
    code, _, _ = run_cli([*args, "--set", f"data.train={gone}"], capsys)
    assert code == 0
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    trained_metrics = json.loads((trained / "metrics.json").read_text())
    assert metrics["test"]["accuracy"] == trained_metrics["test"]["accuracy"]
    assert "train" not in metrics["data_report"]


def test_a_run_folder_given_for_its_checkpoint_names_the_checkpoint(trained: Path, capsys) -> None:
    code, _, err = run_cli(["predict", str(trained), "good"], capsys)
    assert code == 2 and f"a run folder: its checkpoint is {trained / 'checkpoint'}" in one_line_error(
        err, "predict"
    )


def test_eval_names_the_file_of_an_unseen_label(trained: Path, tmp_path, capsys) -> None:
    rows = sentiment_rows(6, 3)
    rows[4] = ("the movie was fine", "neutral")
    unseen = write_csv(tmp_path / "unseen.csv", rows)
    args = [
        "eval",
        str(trained / "checkpoint"),
        "--output-dir",
        str(tmp_path / "e"),
        "--set",
        f"data.test={unseen}",
    ]
    code, _, err = run_cli(args, capsys)
    assert code == 2
    assert (
        f"{unseen}: record 'row 5': field 'label': the test split has label(s) ['neutral']"
        in one_line_error(err, "eval")
    )


@pytest.mark.parametrize("damage", ["empty", "truncated"])
def test_damaged_adapter_file(trained: Path, tmp_path, capsys, damage: str) -> None:
    checkpoint = tmp_path / "checkpoint"
    shutil.copytree(trained / "checkpoint", checkpoint)
    weights = checkpoint / "adapter.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(b"" if damage == "empty" else data[: len(data) // 2])
    code, _, err = run_cli(["predict", str(checkpoint), "good"], capsys)
    assert code == 2
    assert "adapter.safetensors: damaged" in one_line_error(err, "predict")


def test_predict_on_a_latin1_file(trained: Path, tmp_path, capsys) -> None:
    path = tmp_path / "inputs.txt"
    path.write_bytes("good movie\ncaf\xe9 was awful\n".encode("latin-1"))
    code, _, err = run_cli(["predict", str(trained / "checkpoint"), "--file", str(path)], capsys)
    assert code == 2
    line = one_line_error(err, "predict")
    assert "inputs.txt: line 2: byte 0xe9 is not valid UTF-8" in line


def test_predict_keeps_a_tab_in_single_sentence_input(trained: Path, tmp_path, capsys) -> None:
    path = tmp_path / "inputs.txt"
    path.write_text("good\tfun movie\n\n" + "great " * 5_000 + "\n", encoding="utf-8")
    code, out, err = run_cli(["predict", str(trained / "checkpoint"), "--file", str(path)], capsys)
    assert code == 0
    predictions = [json.loads(line) for line in out.splitlines()]
    assert predictions[0]["text"] == "good\tfun movie"  # one text, not a sentence pair
    assert len(predictions) == 2
    assert (
        "[data] predict: 3 read, 2 used; 1 skipped (empty: line 2); 1 truncated to train.max_length=128 tokens"
        in err
    )


def test_a_pair_model_splits_on_the_tab(trained: Path) -> None:
    from ptuning_v2.trained.model import load_trained

    task, _ = load_trained(trained / "checkpoint", device="cpu")
    assert task.pairs is False and task.parse_input("a\tb") == "a\tb"
    with pytest.raises(DataError, match=re.escape("record '0': this classifier was trained on single texts")):
        task.predict_features([("a", "b")])
    task.load_state({"labels": ["neg", "pos"], "pairs": True})
    assert task.parse_input("a\tb") == ("a", "b")
    assert len(task.predict_features([("a", "b"), ("c", "d")])) == 2
    with pytest.raises(
        DataError, match=re.escape("record '0': this classifier was trained on sentence pairs")
    ):
        task.predict_features(["only one"])


# --------------------------------------------------------------------------- fetched wheels: sha256


def fake_wheel(directory: Path, payload: bytes) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    wheel = directory / "ptv2_fake-0.1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("ptv2_fake/data/file.txt", payload)
        info = "ptv2_fake-0.1.0.dist-info"
        zf.writestr(f"{info}/METADATA", "Metadata-Version: 2.1\nName: ptv2-fake\nVersion: 0.1.0\n")
        zf.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        zf.writestr(f"{info}/RECORD", "")
    return wheel


def test_a_tampered_wheel_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """pip finds wheels only in a local folder here (no network); the pinned sha256 decides."""
    from ptuning_v2.utils.cache import FetchError, WheelSource, fetch_wheel_dir, sha256_of

    good = fake_wheel(tmp_path / "good", b"the real data")
    index = tmp_path / "index"
    monkeypatch.setenv("PTV2_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(index))
    source = WheelSource("ptv2-fake", "0.1.0", sha256_of(good), "ptv2_fake/data")

    tampered = fake_wheel(index, b"something else")  # what the "index" serves differs from the pin
    with pytest.raises(FetchError, match="does not match the pinned"):
        fetch_wheel_dir(source, "data")
    assert not (tmp_path / "cache" / "data").exists()

    # A tampered wheel already in the cache is not used either: it is fetched again and checked.
    cached = tmp_path / "cache" / "wheels" / "ptv2-fake-0.1.0"
    cached.mkdir(parents=True, exist_ok=True)
    shutil.copy(tampered, cached / tampered.name)
    shutil.copy(good, index / good.name)
    folder = fetch_wheel_dir(source, "data")
    assert (folder / "file.txt").read_bytes() == b"the real data"


def test_only_safetensors_and_json_are_loaded() -> None:
    """No pickle anywhere in the package: no pickle / torch.load / numpy allow_pickle calls."""
    source = Path(__file__).resolve().parents[1] / "src" / "ptuning_v2"
    offenders = [
        f"{path.relative_to(source)}: {needle}"
        for path in source.rglob("*.py")
        for needle in ("import pickle", "torch.load(", "allow_pickle=True", "pickle.load")
        if needle in path.read_text(encoding="utf-8")
    ]
    assert offenders == []


# ------------------------------------------------------------------ property-based: readers and config

FUZZ = settings(max_examples=60, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
CELL = st.text(alphabet=st.sampled_from(list("ab ,\t\"';{}[]:\\") + ["é", "\u2028", "\r", "\n"]), max_size=8)
JSON_VALUE = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 3) | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)


WORD = st.sampled_from(["good", "bad", "movie", "the", "é", ""])
LABEL = st.sampled_from(["pos", "neg", "pos ", " neg", "", "1"])


def table_text(sep: str) -> st.SearchStrategy[str]:
    """Mostly well-formed tables (so reading succeeds often), with odd cells, widths and headers."""
    well_formed = st.lists(
        st.tuples(st.lists(WORD, min_size=1, max_size=3).map(" ".join), LABEL), max_size=6
    ).map(lambda rows: "\n".join([f"text{sep}label"] + [f"{t}{sep}{label}" for t, label in rows]))
    header = st.lists(st.sampled_from(["text", "label", "text_pair", "x", ""]), min_size=1, max_size=4)
    rows = st.lists(st.lists(CELL, max_size=5), max_size=6)
    odd = st.builds(lambda h, r: "\n".join(sep.join(cells) for cells in [h, *r]), header, rows)
    return well_formed | odd | st.text(max_size=80)


def jsonl_text(row: st.SearchStrategy[dict]) -> st.SearchStrategy[str]:
    line = row.map(json.dumps) | row.map(json.dumps) | JSON_VALUE.map(json.dumps) | st.text(max_size=20)
    return st.lists(line, max_size=6).map("\n".join)


TABLE_ROW = st.fixed_dictionaries(
    {"text": st.lists(WORD, min_size=1, max_size=3).map(" ".join), "label": LABEL | JSON_VALUE},
    optional={"extra": JSON_VALUE},
)
TAGGED_ROW = st.integers(0, 4).flatmap(
    lambda n: st.fixed_dictionaries(
        {
            "tokens": st.lists(WORD, min_size=n, max_size=n),
            "tags": st.lists(st.sampled_from(["O", "B-X"]), min_size=n, max_size=n + 1),
        },
        optional={"id": JSON_VALUE},
    )
)


def in_file(suffix: str, content: str | bytes) -> Path:
    import tempfile

    directory = Path(tempfile.mkdtemp(prefix="ptv2_fuzz_"))
    path = directory / f"data{suffix}"
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8", "surrogatepass"))
    return path


def only_data_errors(call, *args):
    """The call's result, or None when it raised the project's DataError; any other exception fails."""
    from ptuning_v2.data import DataError

    try:
        return call(*args)
    except DataError:
        return None


@FUZZ
@given(fmt=st.sampled_from([(".csv", ","), (".tsv", "\t")]), data=st.data())
def test_fuzz_tables(fmt: tuple[str, str], data: st.DataObject) -> None:
    from ptuning_v2.data import DataReport, load_local_splits

    content = data.draw(table_text(fmt[1]) | st.binary(max_size=40))
    report = DataReport()
    splits = only_data_errors(
        load_local_splits, {"train": in_file(fmt[0], content)}, None, None, ["text", "label"], True, report
    )
    if splits is not None:
        train = splits["train"]
        assert all(t.strip() for t in train["text"]) and all(
            lab == lab.strip() and lab for lab in train["label"]
        )


@FUZZ
@given(content=jsonl_text(TABLE_ROW))
def test_fuzz_jsonl_table(content: str) -> None:
    from ptuning_v2.data import load_table

    dataset = only_data_errors(
        load_table, in_file(".jsonl", content), None, {"text": "text", "label": "label"}
    )
    if dataset is not None:
        assert all(isinstance(label, str) and label == label.strip() for label in dataset["label"])


@FUZZ
@given(
    lines=st.lists(
        st.sampled_from(
            ["", "-DOCSTART- -X- O", "EU B-ORG", "rejects O", "x y z", "a\tI-PER", "  ", "German"]
        )
        | st.text(alphabet=st.sampled_from(list("ab -\tOBI")), max_size=10),
        max_size=12,
    )
)
def test_fuzz_conll(lines: list[str]) -> None:
    from ptuning_v2.data import read_conll

    sentences = only_data_errors(read_conll, in_file(".conll", "\n".join(lines)))
    for sentence in sentences or []:
        assert sentence["tokens"] and len(sentence["tokens"]) == len(sentence["ner_tags"])


@FUZZ
@given(content=jsonl_text(TAGGED_ROW))
def test_fuzz_tagged_jsonl(content: str) -> None:
    from ptuning_v2.data import read_jsonl_tagged

    for sentence in only_data_errors(read_jsonl_tagged, in_file(".jsonl", content)) or []:
        assert sentence["tokens"] and len(sentence["tokens"]) == len(sentence["ner_tags"])


@st.composite
def squad_document(draw: st.DrawFn) -> object:
    """A SQuAD file, valid or with one part broken (wrong offset, wrong type, missing key)."""
    context = draw(st.lists(WORD, min_size=1, max_size=6).map(" ".join))
    start = draw(st.integers(0, len(context)))
    end = draw(st.integers(start, len(context)))
    answer = {"text": context[start:end], "answer_start": start + draw(st.sampled_from([0, 0, 0, 1, -1]))}
    qa = {"id": draw(st.sampled_from(["q1", "q2", 3])), "question": "what?", "answers": [answer]}
    if draw(st.booleans()):
        qa = {**qa, "is_impossible": True, "answers": []}
    document = {
        "data": [{"title": "t", "paragraphs": [{"context": context, "qas": [qa, {**qa, "id": "other"}]}]}]
    }
    breakage = draw(st.sampled_from(["none", "none", "key", "value"]))
    if breakage != "none":
        target = draw(st.sampled_from([document, document["data"][0], qa, answer]))
        key = draw(st.sampled_from(sorted(target)))
        if breakage == "key":
            del target[key]
        else:
            target[key] = draw(JSON_VALUE)
    return document if draw(st.integers(0, 9)) else draw(JSON_VALUE)


@FUZZ
@given(document=squad_document(), garbage=st.booleans())
def test_fuzz_squad(document: object, garbage: bool) -> None:
    from ptuning_v2.data import read_squad

    text = json.dumps(document)
    rows = only_data_errors(read_squad, in_file(".json", text[: len(text) // 2] if garbage else text))
    for row in rows or []:
        for answer, start in zip(row["answers"]["text"], row["answers"]["answer_start"], strict=True):
            assert row["context"][start : start + len(answer)] == answer


def _config_keys() -> list[str]:
    from dataclasses import fields

    from ptuning_v2.config import _NESTED

    keys = [f.name for f in fields(RunConfig)]
    keys += [f"{section}.{f.name}" for (_, section), cls in _NESTED.items() for f in fields(cls)]
    return keys + ["train.lerning_rate", "bogus", "prompt.layers.x", "train..lr", ".", "=x"]


@FUZZ
@given(
    overrides=st.lists(
        st.tuples(
            st.sampled_from(_config_keys()),
            st.sampled_from(
                [
                    "nan",
                    "inf",
                    "-1",
                    "0",
                    "1",
                    "abc",
                    "[0,7]",
                    "[0,0]",
                    "{a: 1}",
                    "null",
                    "true",
                    "[",
                    "{",
                    "'",
                    "1e400",
                    "",
                    "- a",
                    "[[0, 1, 2]]",
                    "²",
                    "100000",
                    "0.5",
                    "1e-3",
                    "[1, 'a']",
                    "{text: 3}",
                ]
            )  # fmt: skip
            | st.integers(-(10**20), 10**20).map(str)
            | st.floats().map(repr)
            | st.text(max_size=12),
        ).map("=".join),
        min_size=1,
        max_size=3,
    )
)
def test_fuzz_config_overrides(overrides: list[str]) -> None:
    try:
        config = load_run_config(None, overrides)
    except ConfigError as exc:
        assert str(exc).strip()
        return
    train = config.train
    assert train.batch_size >= 1 and train.eval_batch_size >= 1 and train.grad_accum_steps >= 1
    assert train.lr > 0 and train.lr != float("inf")
    assert config.prompt.num_virtual_tokens <= 1024
