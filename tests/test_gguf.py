"""fspo_recipe/models/gguf_import.py (fspo-gguf-card): tiny GGUF files written with the gguf package from random
Hugging Face llama and qwen3 models import to exactly their weights, tokenizer and template; bad files are one line.
The real SmolLM2 file (fspo-fetch-smollm2) is tested in tests/test_smollm2.py."""

from __future__ import annotations

import json

import numpy as np
import pytest

from hf_fixtures import write_gguf, write_hf_model


@pytest.fixture(scope="module", params=["llama", "qwen3"])
def imported(request, tmp_path_factory):
    family = request.param
    base = tmp_path_factory.mktemp(f"gguf_{family}")
    hf_dir = write_hf_model(base / "hf", family, seed=5, tied=family == "llama")  # llama tied, as SmolLM2
    path = write_gguf(hf_dir, base / "model.gguf", family, quantize=("ffn_up.weight",))
    from fspo_recipe.models.gguf_import import main

    assert main([str(path), "--name", f"tiny_{family}", "--out", str(base / "cards")]) == 0
    return family, hf_dir, path, base / "cards"


def test_weights_are_the_files_dequantized_and_in_hugging_faces_layout(imported) -> None:
    import gguf
    from safetensors.numpy import load_file

    family, hf_dir, path, cards = imported
    original = {k: v for f in hf_dir.glob("*.safetensors") for k, v in load_file(f).items()}
    ours = load_file(cards / f"tiny_{family}" / "model.safetensors")
    assert set(ours) == set(original)  # tied models have no lm_head in either
    reader = {t.name: t for t in gguf.GGUFReader(path).tensors}
    for name, w in ours.items():
        assert w.dtype == np.float32
        if name.endswith("up_proj.weight"):  # stored as Q8_0: exactly what the gguf package dequantizes
            i = name.split(".")[2]
            t = reader[f"blk.{i}.ffn_up.weight"]
            np.testing.assert_array_equal(w, gguf.quants.dequantize(t.data, t.tensor_type))
            assert 0 < np.abs(w - original[name]).max() < 0.02 * np.abs(original[name]).max()
        else:  # stored as float32: the original, q/k rows back in Hugging Face's layout
            np.testing.assert_array_equal(w, original[name].astype(np.float32), err_msg=name)


def test_tokenizer_and_template_are_the_originals(imported) -> None:
    from tokenizers import Tokenizer

    family, hf_dir, _, cards = imported
    ours, theirs = (Tokenizer.from_file(str(d / "tokenizer.json")) for d in (cards / f"tiny_{family}", hf_dir))
    for text in ["What is rain?", "# Example 1\n## Question \nRAIN IS WET! 0123 dog", "<|im_start|>x<|im_end|>"]:
        assert ours.encode(text).ids == theirs.encode(text).ids, text
        assert ours.decode(ours.encode(text).ids, skip_special_tokens=False) == theirs.decode(
            theirs.encode(text).ids, skip_special_tokens=False)
    config = json.loads((cards / f"tiny_{family}" / "tokenizer_config.json").read_text())
    original = json.loads((hf_dir / "tokenizer_config.json").read_text())
    assert config["chat_template"] == original["chat_template"]
    assert config["eos_token"] == original["eos_token"]


def test_the_card_loads_in_fairseq2_and_matches_transformers(imported) -> None:
    import torch
    import yaml
    from fairseq2.models.sequence import SequenceBatch
    from transformers import AutoModelForCausalLM

    from fspo_recipe.models.hf import hf_card
    from test_models import load_fairseq2

    family, _, _, cards = imported
    card = yaml.safe_load((cards / f"tiny_{family}.yaml").read_text())
    assert card["model_family"] == family and card["source"]["tensor_types"]["Q8_0"] == 2
    assert card == {**hf_card(cards / f"tiny_{family}", f"tiny_{family}"), "source": card["source"]}
    ours = load_fairseq2(f"tiny_{family}", cards)
    theirs = AutoModelForCausalLM.from_pretrained(cards / f"tiny_{family}", dtype=torch.float32).eval()
    seqs = torch.randint(0, 400, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        got, want = ours(SequenceBatch(seqs, None)).logits, theirs(seqs).logits
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_bad_files_are_one_line(tmp_path, capsys) -> None:
    import gguf

    from fspo_recipe.models.gguf_import import main

    not_gguf = tmp_path / "x.gguf"
    not_gguf.write_bytes(b"not a gguf file at all")
    other = tmp_path / "other.gguf"
    writer = gguf.GGUFWriter(str(other), "gpt2")
    writer.add_tensor("token_embd.weight", np.zeros((4, 2), dtype=np.float32))
    writer.write_header_to_file(), writer.write_kv_data_to_file(), writer.write_tensors_to_file(), writer.close()
    for path, expected in ((tmp_path / "absent.gguf", "absent.gguf does not exist"),
                           (not_gguf, "is not a readable GGUF file"),
                           (other, "architecture 'gpt2' is not supported; supported: llama, qwen3")):
        assert main([str(path), "--name", "m", "--out", str(tmp_path / "cards")]) == 1
        err = capsys.readouterr().err
        assert expected in err and err.count("\n") == 1, err
    assert not (tmp_path / "cards" / "m").exists()


def test_an_existing_import_is_replaced_only_with_overwrite(imported, capsys) -> None:
    from fspo_recipe.models.gguf_import import main

    family, _, path, cards = imported
    assert main([str(path), "--name", f"tiny_{family}", "--out", str(cards)]) == 1
    assert "exists; pass --overwrite to replace it" in capsys.readouterr().err
    foreign = cards / "foreign"
    foreign.mkdir()
    (foreign / "mine.txt").write_text("not the importer's")
    assert main([str(path), "--name", "foreign", "--out", str(cards), "--overwrite"]) == 1
    assert "was not written by fspo-gguf-card" in capsys.readouterr().err
    assert (foreign / "mine.txt").read_text() == "not the importer's"
    assert main([str(path), "--name", f"tiny_{family}", "--out", str(cards), "--overwrite"]) == 0  # its own: replaced


def test_a_config_value_off_by_float32_rounding_is_accepted_and_others_are_not(tmp_path) -> None:
    from fspo_recipe.models.hf import hf_card
    from fspo_recipe.models.hf_tokenizer import HfImportError

    directory = write_hf_model(tmp_path / "llama", "llama", seed=1)
    config = json.loads((directory / "config.json").read_text())
    for eps, accepted in ((9.999999747378752e-06, True), (1e-05, True), (1.1e-05, False), (1e-06, False)):
        (directory / "config.json").write_text(json.dumps({**config, "rms_norm_eps": eps}))
        if accepted:
            hf_card(directory, "m")
        else:
            with pytest.raises(HfImportError, match="'rms_norm_eps' is"):
                hf_card(directory, "m")


def test_the_chat_template_is_read_from_chat_template_jinja_when_the_config_has_none(tmp_path) -> None:
    from fspo_recipe.models.hf_tokenizer import HfTokenizer

    directory = write_hf_model(tmp_path / "qwen3", "qwen3", seed=1)
    config = json.loads((directory / "tokenizer_config.json").read_text())
    template = config.pop("chat_template")
    (directory / "tokenizer_config.json").write_text(json.dumps(config))
    assert HfTokenizer(directory).chat_template is None
    (directory / "chat_template.jinja").write_text(template)  # as transformers 5 saves it
    rendered = HfTokenizer(directory).chat_template
    assert rendered is not None and rendered.render_prompt("hi").endswith("<|im_start|>assistant\n")


def test_the_fetch_cache_is_imported_once_and_again_after_a_format_change(imported, tmp_path) -> None:
    """fspo-fetch-smollm2 on a cache that already holds the GGUF (no download): imported on the first call, reused
    on the second, imported again when the cached card is of an older import format (it lacks tied_embeddings)."""
    import shutil

    import yaml

    from fspo_recipe.models.smollm2 import GGUF_MEMBER, SMOLLM2_NAME, fetch_smollm2

    family, _, path, _ = imported
    if family != "llama":
        pytest.skip("the cache holds a llama, as SmolLM2 is")
    shutil.copy(path, tmp_path / GGUF_MEMBER.split("/")[-1])
    said: list[str] = []
    cards = fetch_smollm2(tmp_path, say=said.append)
    card = cards / f"{SMOLLM2_NAME}.yaml"
    data = yaml.safe_load(card.read_text())
    assert data["model_config"]["_set_"]["tied_embeddings"] is True and len(said) == 1
    assert fetch_smollm2(tmp_path, say=said.append) == cards and len(said) == 1  # reused
    del data["source"]["import_format"]
    card.write_text(card.read_text().splitlines()[0] + "\n" + yaml.safe_dump(data, sort_keys=False))
    fetch_smollm2(tmp_path, say=said.append)
    assert len(said) == 2 and "older format" in said[1]
    assert yaml.safe_load(card.read_text())["source"]["import_format"] >= 2


def test_a_damaged_cache_is_imported_again_or_named(imported, tmp_path) -> None:
    """fspo-fetch-smollm2 verifies what it cached: a model.safetensors cut short is imported again from the cached
    GGUF; a GGUF cut short is named as the file to remove, in one line (FetchError), never a traceback."""
    import shutil

    from fspo_recipe.models.smollm2 import GGUF_MEMBER, SMOLLM2_NAME, FetchError, fetch_smollm2

    family, _, path, _ = imported
    if family != "llama":
        pytest.skip("the cache holds a llama, as SmolLM2 is")
    gguf = tmp_path / GGUF_MEMBER.split("/")[-1]
    shutil.copy(path, gguf)
    said: list[str] = []
    cards = fetch_smollm2(tmp_path, say=said.append)
    import torch
    from safetensors.torch import load_file

    weights = cards / SMOLLM2_NAME / "model.safetensors"
    whole, tensors = weights.read_bytes(), {k: v.clone() for k, v in load_file(str(weights)).items()}
    weights.write_bytes(whole[: len(whole) // 2])
    assert fetch_smollm2(tmp_path, say=said.append) == cards
    assert len(said) == 2 and "the cached import is damaged" in said[1] and "cut short" in said[1]
    again = load_file(str(weights))
    assert set(again) == set(tensors) and all(torch.equal(again[k], v) for k, v in tensors.items())
    gguf.write_bytes(gguf.read_bytes()[:2000])
    weights.write_bytes(whole[:100])
    with pytest.raises(FetchError, match="cannot be imported .*not a readable GGUF file.*remove it and run again"):
        fetch_smollm2(tmp_path, say=said.append)
