"""The OpenAI-compatible routes, through the official ``openai`` client against a live uvicorn server on
loopback: text equal to ``ptv2 predict``, streams that join to it, stop sequences, ``max_tokens``, seeds,
chat templates, two streams at once, and errors as the client's own types."""

from __future__ import annotations

import concurrent.futures
import re
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
import torch
from serving_checks import InProcessServer, cli_predict, metric
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from ptuning_v2.benchmarks.multitask import random_checkpoint
from ptuning_v2.serving.app import ServeConfig
from ptuning_v2.serving.auth import read_keys
from ptuning_v2.serving.decode_batching import DecodeBatcher, Row
from ptuning_v2.serving.multi_prompt import MultiPromptModel, UnknownTaskError
from ptuning_v2.serving.openai_api import Generation, Settings

CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }} : {{ m['content'] }} [SEP] {% endfor %}"
    "{% if add_generation_prompt %}assistant :{% endif %}"
)
PROMPTS = ["the movie was good", "a bad plot", "i think this film is great fun"]
KEY = "sk-ptv2-test-key-0123456789"


def openai_client(server: InProcessServer, key: str = KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def chat_llama_dir(tiny_llama_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny Llama with weights at std 0.3 (so a prompt moves its outputs) and a chat template."""
    directory = tmp_path_factory.mktemp("chat_llama")
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    tokenizer.chat_template = CHAT_TEMPLATE
    config = LlamaConfig.from_pretrained(tiny_llama_dir)
    config.initializer_range = 0.3
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def generation_tasks(chat_llama_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Random prompts (large, so they matter): greedy, chat-templated, and sampling (top_p 0.9)."""
    root = tmp_path_factory.mktemp("openai_tasks")
    options = {
        "plain": {"max_new_tokens": 12},
        "chat": {"max_new_tokens": 12, "chat_template": True, "source_template": "{source} ?"},
        "sampled": {"max_new_tokens": 12, "generation": {"do_sample": True, "top_p": 0.9}},
    }
    folders = {}
    for seed, (name, task_options) in enumerate(options.items()):
        torch.manual_seed(seed)
        prompt = {"num_virtual_tokens": 4 + seed, "init_std": 0.5}
        folders[name] = random_checkpoint(
            str(chat_llama_dir), root / name / "checkpoint", "causal_lm", prompt, {}, task_options
        )
    return folders


@pytest.fixture(scope="module")
def multi(generation_tasks: dict[str, Path]) -> MultiPromptModel:
    return MultiPromptModel.from_checkpoints(generation_tasks, device="cpu")


@pytest.fixture(scope="module", params=["generate", "decode loop"])
def server(multi: MultiPromptModel, request: pytest.FixtureRequest) -> Iterator[InProcessServer]:
    """Every test against both ways of generating: one ``generate()`` call per request, and the decode
    loop of ``--decode-batching``."""
    live = InProcessServer(multi, ServeConfig(max_tokens=40, decode_batching=request.param == "decode loop"))
    live.decode_batching = request.param == "decode loop"
    yield live
    live.stop()


@pytest.fixture(scope="module")
def client(server: InProcessServer) -> openai.OpenAI:
    return openai_client(server)


def complete(client: openai.OpenAI, model: str, prompt: str, **settings) -> str:
    return client.completions.create(model=model, prompt=prompt, **settings).choices[0].text


def streamed(client: openai.OpenAI, model: str, source: str, chat: bool = False, **settings) -> list:
    """The chunks of a streamed completion (or chat completion of one user turn)."""
    if chat:
        messages = [{"role": "user", "content": source}]
        return list(client.chat.completions.create(model=model, messages=messages, stream=True, **settings))
    return list(client.completions.create(model=model, prompt=source, stream=True, **settings))


def joined(chunks: list, chat: bool = False) -> str:
    if chat:
        return "".join(c.choices[0].delta.content or "" for c in chunks)
    return "".join(c.choices[0].text for c in chunks)


# ------------------------------------------------------------------------------- equal to ptv2 predict


@pytest.mark.parametrize("name", ["plain", "sampled"])
def test_completion_text_equals_ptv2_predict(client, generation_tasks, name) -> None:
    """Settings left out are the checkpoint's own: greedy for one, top-p sampling seeded with train.seed
    for the other; the same settings given explicitly give the same text."""
    # one input at a time: sampled tokens depend on the batch a row is drawn in
    expected = [cli_predict(generation_tasks[name], [prompt])[0]["generated"] for prompt in PROMPTS]
    assert len(set(expected)) > 1  # the prompts matter
    for prompt, want in zip(PROMPTS, expected, strict=True):
        response = client.completions.create(model=name, prompt=prompt)
        assert response.choices[0].text == want
        assert response.object == "text_completion" and response.model == name
        assert response.usage.completion_tokens <= 12 and response.usage.prompt_tokens > 0
    explicit = {"temperature": 0} if name == "plain" else {"temperature": 1.0, "top_p": 0.9, "seed": 42}
    assert complete(client, name, PROMPTS[0], max_tokens=12, **explicit) == expected[0]


def test_chat_text_equals_ptv2_predict_of_its_user_turn(client, generation_tasks) -> None:
    """A chat-templated task: one user turn is ``ptv2 predict``'s input, in the template as in training."""
    expected = [p["generated"] for p in cli_predict(generation_tasks["chat"], PROMPTS)]
    for prompt, want in zip(PROMPTS, expected, strict=True):
        response = client.chat.completions.create(
            model="chat", messages=[{"role": "user", "content": prompt}]
        )
        assert response.choices[0].message.content == want
        assert response.choices[0].message.role == "assistant" and response.object == "chat.completion"
    # a completion to the same task is the same input
    assert complete(client, "chat", PROMPTS[0]) == expected[0]


def test_a_conversation_keeps_its_earlier_turns(multi) -> None:
    """The last user turn goes through the task's source template; the earlier turns stay as they are."""
    task = multi.tasks["chat"].task
    turns = [
        {"role": "system", "content": "be nice"},
        {"role": "user", "content": "the movie"},
        {"role": "assistant", "content": "good"},
        {"role": "user", "content": "a bad plot"},
    ]
    (feature,) = task.chat_features(turns)[0]
    text = "system : be nice [SEP] user : the movie [SEP] assistant : good [SEP] user : a bad plot ? [SEP] assistant :"
    assert feature["prompt_ids"] == task.tokenizer(text, add_special_tokens=False)["input_ids"]
    (single,) = task.chat_features(turns[-1:])[0]
    assert single == task.predict_features(["a bad plot"])[0][0]


# ------------------------------------------------------------------------------------------ streaming


@pytest.mark.parametrize("chat", [False, True])
def test_streamed_chunks_join_to_the_text(client, chat) -> None:
    name = "chat" if chat else "plain"
    for prompt in PROMPTS:
        if chat:
            messages = [{"role": "user", "content": prompt}]
            whole = client.chat.completions.create(model=name, messages=messages)
            text, finish = whole.choices[0].message.content, whole.choices[0].finish_reason
        else:
            whole = client.completions.create(model=name, prompt=prompt)
            text, finish = whole.choices[0].text, whole.choices[0].finish_reason
        chunks = streamed(client, name, prompt, chat)
        assert joined(chunks, chat) == text
        assert chunks[-1].choices[0].finish_reason == finish
        assert all(c.choices[0].finish_reason is None for c in chunks[:-1])
        assert len({c.id for c in chunks}) == 1
        if chat:
            assert chunks[0].choices[0].delta.role == "assistant"
    # token by token: a long text comes in many chunks
    assert len(streamed(client, "plain", PROMPTS[2], max_tokens=30)) > 5


@pytest.mark.parametrize("chat", [False, True])
def test_a_stream_can_end_with_its_usage(client, chat) -> None:
    name, prompt = ("chat" if chat else "plain"), PROMPTS[1]
    if chat:
        whole = client.chat.completions.create(model=name, messages=[{"role": "user", "content": prompt}])
    else:
        whole = client.completions.create(model=name, prompt=prompt)
    chunks = streamed(client, name, prompt, chat, stream_options={"include_usage": True})
    assert chunks[-1].choices == [] and chunks[-1].usage == whole.usage
    assert joined(chunks[:-1], chat) == (whole.choices[0].message.content if chat else whole.choices[0].text)
    assert chunks[-2].choices[0].finish_reason == whole.choices[0].finish_reason


def test_a_participant_name_in_a_message_is_accepted_and_changes_nothing(client) -> None:
    def answer(message: dict) -> str:
        return client.chat.completions.create(model="chat", messages=[message]).choices[0].message.content

    plain = {"role": "user", "content": PROMPTS[0]}
    assert answer({**plain, "name": "alice"}) == answer(plain)
    with pytest.raises(openai.BadRequestError, match=re.escape("messages[0].name: expected a text")):
        answer({**plain, "name": 3})


def test_stream_is_server_sent_events_ending_with_done(server) -> None:
    body = {"model": "plain", "prompt": PROMPTS[0], "stream": True, "max_tokens": 4}
    with httpx.stream("POST", f"{server.url}/v1/completions", json=body, timeout=60) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [line for line in response.iter_lines() if line]
    assert all(line.startswith("data: ") for line in events)
    assert events[-1] == "data: [DONE]"


@pytest.mark.parametrize("pair", [("plain", "chat"), ("plain", "sampled")])
def test_two_tasks_stream_at_once(client, server, monkeypatch, pair) -> None:
    """Two streams opened together, for two tasks, are generated at the same time, each on a model thread
    of its own (a sampled one too): neither goes past its first token until the other has one. Each gets
    the text it gets alone."""
    if server.decode_batching:
        pytest.skip("in the decode loop two streams are rows of one pass: test_streams_join_the_decode_loop")

    def alone(name: str) -> str:
        if name == "chat":
            messages = [{"role": "user", "content": PROMPTS[1]}]
            return (
                client.chat.completions.create(model=name, messages=messages, max_tokens=30)
                .choices[0]
                .message.content
            )
        return complete(client, name, PROMPTS[1], max_tokens=30)

    expected = {name: alone(name) for name in pair}
    meeting = threading.Barrier(2, timeout=30)  # broken (an error answer) if one waits for the other
    step = Generation.__call__

    def first_tokens_meet(self, input_ids, scores, **kwargs):
        if not getattr(self, "met", False):
            self.met = True
            meeting.wait()
        return step(self, input_ids, scores, **kwargs)

    monkeypatch.setattr(Generation, "__call__", first_tokens_meet)
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        futures = {
            name: pool.submit(streamed, client, name, PROMPTS[1], name == "chat", max_tokens=30)
            for name in pair
        }
        results = {name: joined(future.result(), name == "chat") for name, future in futures.items()}
    assert results == expected


def test_streams_join_the_decode_loop(multi) -> None:
    """With --decode-batching, streams opened while others run join them: one backbone pass serves several
    rows (three tasks, one sampling), and each text is the one the request gets alone."""
    live = InProcessServer(multi, ServeConfig(max_tokens=40, decode_batching=True))
    try:
        client = openai_client(live)
        jobs = [("plain", PROMPTS[0], False), ("chat", PROMPTS[1], True), ("sampled", PROMPTS[2], False)]
        alone = [joined(streamed(client, name, text, chat, max_tokens=30), chat) for name, text, chat in jobs]
        with concurrent.futures.ThreadPoolExecutor(3) as pool:
            futures = [
                pool.submit(streamed, client, name, text, chat, max_tokens=30) for name, text, chat in jobs
            ]
            together = [joined(f.result(), chat) for f, (_, _, chat) in zip(futures, jobs, strict=True)]
        passes = metric(live.url, "ptv2_batch_rows_count")
        text = httpx.get(f"{live.url}/metrics", timeout=30).text
        (one_row,) = [
            float(line.split()[-1])
            for line in text.splitlines()
            if 'ptv2_batch_rows_bucket{le="1.0"}' in line
        ]
    finally:
        live.stop()
    assert together == alone
    assert passes > one_row  # some passes ran more than one row


def loop_texts(
    multi: MultiPromptModel, jobs: list[tuple[str, str]], monkeypatch
) -> tuple[list, list[int], list[int]]:
    """The answers (or errors) of ``jobs`` (task, prompt) queued together in one decode loop, run to its end
    on this thread, the number of rows of each prefill pass tried, and the rows of each pass the loop
    reports to its ``observe_pass`` (``ptv2_batch_rows``)."""
    loop = DecodeBatcher(multi, max_rows=8)
    prefills: list[int] = []
    prefill = loop._prefill

    def counted(rows: list[Row]):
        prefills.append(len(rows))
        return prefill(rows)

    monkeypatch.setattr(loop, "_prefill", counted)
    rows = [
        Row(
            Generation(multi.tasks[task], prompt, Settings(max_tokens=20), False), concurrent.futures.Future()
        )
        for task, prompt in jobs
    ]
    loop._waiting = list(rows)
    observed: list[int] = []
    loop.run(observed.append)
    return [row.future.exception() or row.future.result().text for row in rows], prefills, observed


def test_requests_that_arrive_together_are_prefilled_in_one_pass(multi, monkeypatch) -> None:
    """Prompts of different lengths and tasks (one sampling), left-padded into one prefill pass: each text
    is the one its request gets alone."""
    jobs = [("plain", PROMPTS[0]), ("chat", PROMPTS[1]), ("sampled", PROMPTS[2])]
    alone = [loop_texts(multi, [job], monkeypatch)[0][0] for job in jobs]
    together, prefills, observed = loop_texts(multi, jobs, monkeypatch)
    assert prefills == [3] and together == alone
    assert observed[0] == 3 and observed[1] == 3  # the prefill pass is reported, then the first step
    assert sorted(observed[1:], reverse=True) == observed[1:]  # steps: rows leave as they end


def test_a_request_that_fails_a_shared_prefill_fails_alone(multi, monkeypatch) -> None:
    """A shared prefill pass that raises is tried again one row at a time: only the row that fails alone
    gets the error."""
    jobs = [("plain", PROMPTS[0]), ("chat", PROMPTS[1]), ("sampled", PROMPTS[2])]
    alone = [loop_texts(multi, [job], monkeypatch)[0][0] for job in jobs]
    prepare = Generation.prepare

    def out_of_vocabulary_for_chat(self, multi):
        batch, options = prepare(self, multi)
        if self.entry.name == "chat":
            batch = {**batch, "prompt_input_ids": torch.full_like(batch["prompt_input_ids"], 10**6)}
        return batch, options

    monkeypatch.setattr(Generation, "prepare", out_of_vocabulary_for_chat)
    together, prefills, observed = loop_texts(multi, jobs, monkeypatch)
    assert prefills == [3, 1, 1, 1]
    assert observed[:3] == [1, 1, 2]  # the two row-by-row prefills that ran, then a step of both rows
    assert together[0] == alone[0] and together[2] == alone[2]
    assert isinstance(together[1], IndexError)


def test_sampled_generations_at_once_keep_their_seeded_texts(client) -> None:
    """Sampled generations opened together take turns on torch's global generator: each text is the one
    its seed gives alone."""
    settings = [{"temperature": 1.0, "seed": seed} for seed in (1, 2, 3)]
    alone = [complete(client, "sampled", PROMPTS[2], max_tokens=20, **s) for s in settings]
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        together = list(
            pool.map(lambda s: complete(client, "sampled", PROMPTS[2], max_tokens=20, **s), settings)
        )
    assert together == alone and len(set(alone)) > 1


# ------------------------------------------------------------------------- stop, max_tokens and seed


def test_stop_sequences_cut_the_text_and_end_the_generation(client) -> None:
    full = complete(client, "plain", PROMPTS[2], max_tokens=30)
    words = full.split()
    assert len(words) > 4, full
    stop = words[3]
    want = full[: full.index(stop)].strip()
    response = client.completions.create(model="plain", prompt=PROMPTS[2], max_tokens=30, stop=[stop, "zzz"])
    assert response.choices[0].text == want and response.choices[0].finish_reason == "stop"
    assert response.usage.completion_tokens < len(full.split())  # it ended there
    assert joined(streamed(client, "plain", PROMPTS[2], max_tokens=30, stop=stop)) == want
    # a stop sequence that does not come changes nothing
    assert complete(client, "plain", PROMPTS[2], max_tokens=30, stop="zzz") == full


def test_max_tokens_bounds_the_generation(client) -> None:
    full = complete(client, "plain", PROMPTS[0], max_tokens=30)
    response = client.completions.create(model="plain", prompt=PROMPTS[0], max_tokens=3)
    assert response.usage.completion_tokens == 3 and response.choices[0].finish_reason == "length"
    assert full.startswith(response.choices[0].text) and len(response.choices[0].text) < len(full)


def test_seed_makes_sampling_repeatable(client) -> None:
    def sample(seed: int) -> str:
        return complete(client, "plain", PROMPTS[0], temperature=1.5, seed=seed, max_tokens=12)

    assert sample(7) == sample(7)
    assert len({sample(seed) for seed in (7, 8, 9, 10)}) > 1
    chunks = streamed(client, "plain", PROMPTS[0], temperature=1.5, seed=7, max_tokens=12)
    assert joined(chunks) == sample(7)


# -------------------------------------------------------------------------------------------- errors


def test_models_lists_the_tasks(client) -> None:
    assert [m.id for m in client.models.list()] == ["chat", "plain", "sampled"]


@pytest.mark.parametrize(
    "settings, words",
    [
        ({"n": 2}, "only 1 completion"),
        ({"temperature": 3}, "temperature"),
        ({"max_tokens": 41}, "max_tokens: expected an integer from 1 to 40"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"extra_body": {"logit_bias": {"1": 5}}}, "unsupported field(s) ['logit_bias']"),
        ({"prompt": ["a", "b"]}, "lists of prompts are not supported"),
        ({"stream_options": {"include_usage": True}}, "stream_options: expected"),  # without stream
    ],
)
def test_bad_settings_are_the_clients_bad_request(client, settings, words) -> None:
    settings = {"prompt": "the movie", **settings}
    with pytest.raises(openai.BadRequestError, match=re.escape(words)):
        client.completions.create(model="plain", **settings)


def test_errors_have_openais_shape(client, server) -> None:
    with pytest.raises(openai.NotFoundError, match="unknown task 'nope'") as error:
        client.completions.create(model="nope", prompt="the movie")
    assert error.value.body == {
        "message": error.value.body["message"],
        "type": "invalid_request_error",
        "code": "model_not_found",
    }
    with pytest.raises(openai.BadRequestError, match="trained without a chat template"):
        client.chat.completions.create(model="plain", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.BadRequestError, match="the last message must be the user's"):
        client.chat.completions.create(model="chat", messages=[{"role": "assistant", "content": "hi"}])
    response = httpx.post(f"{server.url}/v1/completions", content="{", timeout=30)
    assert response.status_code == 400 and set(response.json()["error"]) == {"message", "type", "code"}
    lone = '{"model": "plain", "prompt": "\\ud800"}'  # JSON lets a lone surrogate in; no tokenizer takes it
    response = httpx.post(f"{server.url}/v1/completions", content=lone, timeout=30)
    assert response.status_code == 400 and "lone surrogate" in response.json()["error"]["message"]


def test_a_classification_task_is_sent_to_its_predict_route(tiny_bert_dir: Path, tmp_path: Path) -> None:
    torch.manual_seed(0)
    folder = random_checkpoint(
        str(tiny_bert_dir),
        tmp_path / "checkpoint",
        "classification",
        {"num_virtual_tokens": 4},
        {"labels": ["a", "b"]},
    )
    live = InProcessServer(
        MultiPromptModel.from_checkpoints({"sentiment": folder}, device="cpu"), ServeConfig()
    )
    try:
        with pytest.raises(openai.BadRequestError, match="use POST /v1/tasks/sentiment/predict"):
            openai_client(live).completions.create(model="sentiment", prompt="a fine film")
    finally:
        live.stop()


def test_keys_give_the_clients_own_errors(multi, tmp_path: Path) -> None:
    """Through ``--api-keys``: a wrong or missing key is the client's AuthenticationError, a task outside
    the key's patterns its NotFoundError, and ``/v1/models`` lists only what the key may use."""
    keys = tmp_path / "keys.yaml"
    keys.write_text(f"keys:\n  - {{name: tenant, key: {KEY}, role: client, tasks: ['pla*']}}\n")
    live = InProcessServer(multi, ServeConfig(api_keys=read_keys(keys)))
    try:
        with pytest.raises(openai.AuthenticationError):
            openai_client(live, "sk-wrong").completions.create(model="plain", prompt="the movie")
        with pytest.raises(openai.AuthenticationError):
            openai_client(live, "sk-wrong").models.list()
        with pytest.raises(openai.AuthenticationError):  # before the stream starts
            streamed(openai_client(live, "sk-wrong"), "plain", "the movie")
        anonymous = httpx.post(
            f"{live.url}/v1/completions", json={"model": "plain", "prompt": "x"}, timeout=30
        )
        assert anonymous.status_code == 401
        assert anonymous.json()["error"]["type"] == "authentication_error"
        assert anonymous.json()["error"]["code"] == "invalid_api_key"
        with pytest.raises(openai.NotFoundError):  # exists, but not for this tenant
            openai_client(live).completions.create(model="sampled", prompt="the movie")
        assert [m.id for m in openai_client(live).models.list()] == ["plain"]
        assert openai_client(live).completions.create(model="plain", prompt="the movie").choices[0].text
    finally:
        live.stop()


@pytest.mark.slow
def test_chat_on_the_real_smollm2(tmp_path: Path) -> None:
    """SmolLM2-135M-Instruct with a zero-initialised prompt, chat-templated, served with and without
    --decode-batching: the chat answer is ``ptv2 predict``'s, streamed or not, a stop sequence cuts it, two
    streams at once each get theirs, and a seeded sampled answer is the same both ways."""
    torch.manual_seed(0)
    options = {"chat_template": True, "source_template": "{source}", "max_new_tokens": 24}
    prompt = {"num_virtual_tokens": 8, "init": "zero"}
    folder = random_checkpoint("smollm2", tmp_path / "checkpoint", "causal_lm", prompt, {}, options)
    question, other = "What is the capital of France?", "Name a colour."
    want = cli_predict(folder, [question])[0]["generated"]
    multi = MultiPromptModel.from_checkpoints({"assistant": folder}, device="cpu")

    def served(decode_batching: bool) -> str:
        """The checks against one server; its seeded sampled answer."""
        live = InProcessServer(multi, ServeConfig(decode_batching=decode_batching))
        client = openai_client(live)

        def ask(text: str, **settings) -> str:
            messages = [{"role": "user", "content": text}]
            return (
                client.chat.completions.create(model="assistant", messages=messages, **settings)
                .choices[0]
                .message.content
            )

        def stream(text: str) -> str:
            return joined(streamed(client, "assistant", text, chat=True), chat=True)

        try:
            assert ask(question) == want and want
            assert stream(question) == want
            stop = want.split()[2]
            assert ask(question, stop=stop) == want[: want.index(stop)].strip()
            other_alone = ask(other)
            with concurrent.futures.ThreadPoolExecutor(2) as pool:  # two streams at once, each its own text
                assert list(pool.map(stream, [question, other])) == [want, other_alone]
            return ask(other, temperature=0.9, seed=5)
        finally:
            live.stop()

    sampled = [served(decode_batching) for decode_batching in (False, True)]
    assert sampled[0] == sampled[1]
    print(f"SmolLM2 answered {want!r}; sampled {sampled[0]!r}")


class CleaningTokenizer:
    """Words joined by spaces, then " ' " cleaned to "'" as some tokenizers clean up: the next token can
    change the end of the text decoded so far."""

    WORDS = ["it", "'", "s", "great", "fun", "the", "end", "[SEP]"]

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        words = [
            self.WORDS[int(i)] for i in ids if not (skip_special_tokens and self.WORDS[int(i)] == "[SEP]")
        ]
        return " ".join(words).replace(" ' ", "'")


@pytest.mark.parametrize(
    "stop, want",
    [
        ([], "it's great fun the end"),
        (["fun the"], "it's great"),
        (["t fun", "'"], "it"),
        (["end"], "it's great fun the"),
    ],
)
def test_a_stream_sends_only_text_that_stays(stop, want) -> None:
    """Token by token, a stream sends what later tokens will not change; its parts join to the answer."""
    entry = type("Entry", (), {"task": type("Task", (), {"tokenizer": CleaningTokenizer()})()})()
    generation = Generation(entry, "prompt", Settings(stop=stop), refuse_overlong=False)
    sent: list[str] = []
    generation.emit = sent.append
    ids = list(range(len(CleaningTokenizer.WORDS)))
    for step in range(1, len(ids) + 1):
        if generation(torch.tensor([ids[:step]]), None).all():
            break
    text, stopped = generation.answer(ids[:step])
    assert text == want and "".join(sent) == want and stopped == bool(stop)
    assert len(sent) >= len(want.split())  # piece by piece, not all at the end
    generation.cancelled = True  # the client went away: the next token ends the generation
    assert generation(torch.tensor([ids[:1]]), None).all()


def test_a_task_removed_while_its_request_waited_is_not_found(multi, generation_tasks) -> None:
    """Checked on the model thread, where tasks are loaded and removed: a request never runs a removed
    task's prompt (here the task came back under the same name, as a new entry)."""
    stale = multi.entry("sampled")
    multi.remove("sampled")
    multi.add("sampled", generation_tasks["sampled"])
    with pytest.raises(UnknownTaskError, match="removed while its request waited"):
        Generation(stale, "the movie", Settings(), refuse_overlong=False).run(multi)
    assert Generation(multi.entry("sampled"), "the movie", Settings(), refuse_overlong=False).run(multi).text


def test_a_task_removed_while_its_rows_decode_ends_only_its_requests(generation_tasks, monkeypatch) -> None:
    """In the decode loop, removing a task ends its running request with a not-found error; the stream of
    another task in the same passes goes on to its own text."""
    multi = MultiPromptModel.from_checkpoints(generation_tasks, device="cpu")
    live = InProcessServer(multi, ServeConfig(max_tokens=40, decode_batching=True))
    client = openai_client(live)
    try:
        plain_alone = joined(streamed(client, "plain", PROMPTS[0], max_tokens=30))
        seen: set[str] = set()
        step = Generation.__call__

        def remove_chat_once_both_run(self, input_ids, scores, **kwargs):
            seen.add(self.entry.name)
            if self.entry.name == "plain" and "chat" in seen and "chat" in multi.tasks:
                multi.remove("chat")
            return step(self, input_ids, scores, **kwargs)

        monkeypatch.setattr(Generation, "__call__", remove_chat_once_both_run)
        messages = [{"role": "user", "content": PROMPTS[1]}]
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            plain = pool.submit(streamed, client, "plain", PROMPTS[0], max_tokens=30)
            chat = pool.submit(client.chat.completions.create, model="chat", messages=messages, max_tokens=30)
            assert joined(plain.result()) == plain_alone
            with pytest.raises(openai.NotFoundError, match="removed while its request ran"):
                chat.result()
    finally:
        live.stop()
