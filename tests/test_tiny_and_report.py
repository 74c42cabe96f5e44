"""The tiny CPU assets are deterministic; fspo-metrics reads a run and names bad files."""

from __future__ import annotations

import json

import pytest
import torch

from fspo_recipe.report import last_metrics, main as metrics_main
from fspo_recipe.models.tiny import BYTE_VOCAB_SIZE, main as tiny_main, write_tiny_assets


def test_same_seed_same_assets(tmp_path) -> None:
    a, b, c = (write_tiny_assets(tmp_path / d, seed=s).parent for d, s in (("a", 0), ("b", 0), ("c", 1)))
    for name in ("tiny_model.yaml", "tokenizer.model"):
        assert (a / name).read_bytes() == (b / name).read_bytes()
    sd = [torch.load(d / "model.pt", weights_only=True)["model"] for d in (a, b, c)]
    assert all(torch.equal(sd[0][k], sd[1][k]) for k in sd[0])
    assert not all(torch.equal(sd[0][k], sd[2][k]) for k in sd[0])
    assert sd[0]["decoder_frontend.embed.weight"].shape[0] == BYTE_VOCAB_SIZE
    assert not list(a.glob("*.tmp"))


def test_head_counts_from_the_command_line(tmp_path, capsys) -> None:
    assert tiny_main([str(tmp_path / "mha"), "--num-heads", "8", "--kv-heads", "8"]) == 0
    sd = torch.load(tmp_path / "mha" / "model.pt", weights_only=True)["model"]
    attn = "decoder.layers.0.self_attn."
    assert sd[attn + "k_proj.weight"].shape == sd[attn + "q_proj.weight"].shape == (64, 64)
    assert tiny_main([str(tmp_path / "gqa")]) == 0  # the default: 4 heads sharing 2 key/value heads
    sd = torch.load(tmp_path / "gqa" / "model.pt", weights_only=True)["model"]
    assert sd[attn + "k_proj.weight"].shape == (32, 64)
    with pytest.raises(SystemExit):
        tiny_main([str(tmp_path / "bad"), "--num-heads", "4", "--kv-heads", "3"])
    assert "--kv-heads (3) must divide --num-heads (4)" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def test_tiny_tokenizer_is_byte_level(tmp_path) -> None:
    from fairseq2.data.text.tokenizers.llama import LLaMA3Tokenizer

    write_tiny_assets(tmp_path, seed=0)
    tok = LLaMA3Tokenizer(tmp_path / "tokenizer.model")
    text = "## Question \nWhat is rain?\n"
    ids = tok.create_encoder(mode="prompt_response")(text).tolist()
    assert ids == [*text.encode(), 257]
    assert tok.vocab_info.size == BYTE_VOCAB_SIZE and tok.vocab_info.pad_idx == 260


def test_metrics_report(tmp_path, capsys) -> None:
    (tmp_path / "metrics").mkdir()
    path = tmp_path / "metrics" / "train.jsonl"
    path.write_text(json.dumps({"Step": 1, "FSPO Loss": 2.0}) + "\n" + json.dumps({"Step": 2, "FSPO Loss": 1.5}) + "\n")
    assert last_metrics(tmp_path)["FSPO Loss"] == 1.5
    assert metrics_main([str(tmp_path)]) == 0
    assert "FSPO Loss" in capsys.readouterr().out

    path.write_text('{"Step": 1}\n{"Step": 2, "FSPO\n')
    with pytest.raises(ValueError, match=r"train.jsonl, line 2: not valid JSON"):
        last_metrics(tmp_path)
    assert metrics_main([str(tmp_path / "nowhere")]) == 1
    assert "does not exist: is" in capsys.readouterr().err


def test_bpe_vocabulary_from_training_texts(tmp_path, capsys) -> None:
    import yaml
    from fairseq2.data.text.tokenizers.llama import LLaMA3Tokenizer

    from fspo_recipe.models.bpe import corpus_texts, learn_bpe

    rows = [{"src": f"## Question \nWhat is {t}?\n", "tgt_chosen": f"{t.capitalize()} is lovely!\n",
             "tgt_rejected": f"{t.capitalize()} is awful.\n"} for t in ("rain", "snow", "a cloud", "the moon") * 3]
    corpus = tmp_path / "train.jsonl"
    corpus.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tokens = learn_bpe(corpus_texts([corpus]), 40)
    assert tokens[:256] == [bytes([b]) for b in range(256)] and len(set(tokens)) == len(tokens) == 296
    assert tokens == learn_bpe(corpus_texts([corpus]), 40)
    every = learn_bpe(corpus_texts([corpus]), 10_000)  # until no pair occurs twice: the same merges, then more
    assert 296 < len(every) < 10_256 and every[:296] == tokens

    assert tiny_main([str(tmp_path / "m"), "--bpe-merges", "40", "--bpe-from", str(corpus)]) == 0
    assert "vocab 552, 40 BPE tokens" in capsys.readouterr().out
    tok = LLaMA3Tokenizer(tmp_path / "m" / "tokenizer.model")
    encode, decode = tok.create_raw_encoder(), tok.create_decoder()
    for word in (" lovely", " awful", " Question"):  # a word of the texts is one learned token
        ids = encode(word).tolist()
        assert len(ids) == 1 and 256 <= ids[0] < 296 and tokens[ids[0]] == word.encode()
    text = "Rain is lovely! Zebras are not in the texts."
    assert decode(encode(text)) == text
    card = yaml.safe_load((tmp_path / "m" / "tiny_model.yaml").read_text())["model_config"]["_set_"]
    info = tok.vocab_info
    assert card["vocab_info"] == {"size": info.size, "unk_idx": None, "bos_idx": info.bos_idx,
                                  "eos_idx": info.eos_idx, "pad_idx": info.pad_idx}
    sd = torch.load(tmp_path / "m" / "model.pt", weights_only=True)["model"]
    assert sd["decoder_frontend.embed.weight"].shape[0] == info.size == 552

    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(rows[0]) + "\n" + json.dumps({"text": "no field"}) + "\n")
    assert tiny_main([str(tmp_path / "b"), "--bpe-merges", "5", "--bpe-from", str(bad)]) == 2
    assert "bad.jsonl, line 2: expected a JSON object with a text field" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        tiny_main([str(tmp_path / "b"), "--bpe-merges", "5"])
    assert "--bpe-merges N and --bpe-from FILE go together" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()
