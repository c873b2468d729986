"""Prompt tuning: a soft prompt equal to some words' embeddings must act exactly like those words."""

from __future__ import annotations

import pytest
import torch

from ptuning_v2.config import ConfigError, RunConfig
from ptuning_v2.methods import get_method
from ptuning_v2.models import load_backbone, load_tokenizer

INIT_TEXT = "the movie"  # two word pieces, so k = 2 reproduces them exactly


def text_prompted(model_dir, kind: str, k: int = 2):
    tokenizer = load_tokenizer(str(model_dir))
    backbone = load_backbone(str(model_dir), kind)
    run = RunConfig.from_dict(
        {
            "method": "prompt_tuning",
            "prompt": {"num_virtual_tokens": k, "init": "text", "init_text": INIT_TEXT},
            "train": {"max_length": 64},
        }
    )
    encoder = get_method("prompt_tuning").build(backbone, run, tokenizer).eval()
    prefix_ids = tokenizer(INIT_TEXT, add_special_tokens=False)["input_ids"]
    return tokenizer, encoder, torch.tensor(prefix_ids)


def test_soft_prompt_of_word_embeddings_matches_those_words_in_front(tiny_bert_dir) -> None:
    tokenizer, encoder, prefix = text_prompted(tiny_bert_dir, "encoder")
    batch = tokenizer(["a good film", "bad"], ["it is fun", "so sad"], padding=True, return_tensors="pt")
    out = encoder(**batch)
    assert out.last_hidden_state.shape[:2] == batch["input_ids"].shape
    backbone = encoder.backbone
    for i in range(2):
        n = int(batch["attention_mask"][i].sum())
        ids = torch.cat([prefix, batch["input_ids"][i, :n]])[None]
        types = torch.cat([torch.zeros(2, dtype=torch.long), batch["token_type_ids"][i, :n]])[None]
        ref = backbone(input_ids=ids, token_type_ids=types)
        torch.testing.assert_close(out.last_hidden_state[i, :n], ref.last_hidden_state[0, 2:])
        # the pooler reads the first real token ([CLS]), not the prompt
        torch.testing.assert_close(
            out.pooler_output[i], backbone.pooler(ref.last_hidden_state[:, 2:])[0], atol=1e-5, rtol=1e-5
        )


def test_only_the_prompt_is_trained(tiny_bert_dir) -> None:
    _, encoder, _ = text_prompted(tiny_bert_dir, "encoder", k=5)
    trainable = {n: p.numel() for n, p in encoder.named_parameters() if p.requires_grad}
    assert trainable == {"prompt.embedding": 5 * 32}


def test_causal_lm_logits_loss_and_generate_match_the_words_in_front(tiny_llama_dir) -> None:
    tokenizer, encoder, prefix = text_prompted(tiny_llama_dir, "causal_lm")
    ids = tokenizer("the film was good", add_special_tokens=False, return_tensors="pt")["input_ids"]
    backbone = encoder.backbone
    full = torch.cat([prefix[None], ids], dim=1)
    out = encoder(input_ids=ids, labels=ids)
    ref_labels = torch.cat([torch.full_like(prefix[None], -100), ids], dim=1)
    ref = backbone(input_ids=full, labels=ref_labels)
    torch.testing.assert_close(out.logits, ref.logits[:, 2:])
    torch.testing.assert_close(out.loss, ref.loss)
    generated = encoder.generate(input_ids=ids, max_new_tokens=4, do_sample=False)
    reference = backbone.generate(input_ids=full, max_new_tokens=4, do_sample=False)
    assert generated.tolist() == torch.cat([ids, reference[:, full.shape[1] :]], dim=1).tolist()


def test_prompt_longer_than_the_position_table_is_a_config_error(tiny_bert_dir) -> None:
    run = RunConfig.from_dict({"method": "prompt_tuning", "prompt": {"num_virtual_tokens": 100}})
    backbone = load_backbone(str(tiny_bert_dir), "encoder")  # 128 positions, max_length 128
    with pytest.raises(ConfigError, match="max_position_embeddings|positions"):
        get_method("prompt_tuning").build(backbone, run, None)


def test_train_and_reload_gives_the_same_predictions(train_and_reload, tiny_bert_dir) -> None:
    train_and_reload("prompt_tuning", tiny_bert_dir)


def test_encoder_decoder_prompt_goes_to_the_encoder_input(tiny_t5_dir) -> None:
    tokenizer = load_tokenizer(str(tiny_t5_dir))
    backbone = load_backbone(str(tiny_t5_dir), "seq2seq").eval()
    run = RunConfig.from_dict(
        {
            "method": "prompt_tuning",
            "prompt": {"num_virtual_tokens": 2, "init": "text", "init_text": INIT_TEXT},
        }
    )
    encoder = get_method("prompt_tuning").build(backbone, run, tokenizer).eval()
    prefix = torch.tensor(tokenizer(INIT_TEXT, add_special_tokens=False)["input_ids"])[None]
    ids = tokenizer("the film was good", add_special_tokens=False, return_tensors="pt")["input_ids"]
    labels = tokenizer("great", add_special_tokens=False, return_tensors="pt")["input_ids"]
    out = encoder(input_ids=ids, labels=labels)
    ref = backbone(input_ids=torch.cat([prefix, ids], dim=1), labels=labels)
    torch.testing.assert_close(out.logits, ref.logits)
    torch.testing.assert_close(out.encoder_last_hidden_state, ref.encoder_last_hidden_state[:, 2:])
    generated = encoder.generate(input_ids=ids, max_new_tokens=4, do_sample=False)
    expected = backbone.generate(input_ids=torch.cat([prefix, ids], dim=1), max_new_tokens=4, do_sample=False)
    assert generated.tolist() == expected.tolist()
