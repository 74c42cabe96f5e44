"""Real model families: Qwen3 and Hugging Face directories against `transformers`, chat templates, bad input."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from conftest import REPO, cli_env
from hf_fixtures import write_hf_model

SAMPLE = REPO / "datasets" / "samples" / "fspo_sample" / "train.jsonl"


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory) -> dict[str, Path]:
    """Tiny random Hugging Face directories: Qwen3 (tied, sharded), Qwen3 (untied), Llama (tied, llama3 rope)."""
    root = tmp_path_factory.mktemp("hf")
    return {
        "qwen3": write_hf_model(root / "qwen3", "qwen3", seed=1, tied=True, shards=True),
        "qwen3_untied": write_hf_model(root / "qwen3_untied", "qwen3", seed=2, tied=False),
        "llama": write_hf_model(root / "llama", "llama", seed=3, tied=True),
    }


@pytest.fixture(scope="module")
def cards(hf_dirs, tmp_path_factory) -> Path:
    from fspo_recipe.models.hf import main as hf_card_main

    out = tmp_path_factory.mktemp("cards")
    for name, directory in hf_dirs.items():
        assert hf_card_main([str(directory), "--name", f"hf_{name}", "--out", str(out)]) == 0
    return out


def load_fairseq2(name: str, cards: Path):
    from fairseq2 import setup_fairseq2
    from fairseq2.context import get_runtime_context
    from fairseq2.gang import fake_gangs
    from fairseq2.models.decoder import DecoderModel
    from fairseq2.recipes.common import load_reference_model

    from fspo_recipe.assets import add_card_directory
    from fspo_recipe.models.families import packed_model_families

    setup_fairseq2()
    context = get_runtime_context()
    add_card_directory(context, cards)
    with packed_model_families(context):
        return load_reference_model(DecoderModel, context, name, fake_gangs(torch.device("cpu")), torch.float32,
                                    mp=False).eval()


@pytest.mark.parametrize("name", ["qwen3", "qwen3_untied", "llama"])
def test_logits_equal_transformers(name, hf_dirs, cards) -> None:
    from fairseq2.models.sequence import SequenceBatch
    from fairseq2.nn.padding import PaddingMask
    from transformers import AutoModelForCausalLM

    from fspo_recipe.models.transformer import FspoDecoderModel

    ours = load_fairseq2(f"hf_{name}", cards)
    assert isinstance(ours, FspoDecoderModel)
    reference = AutoModelForCausalLM.from_pretrained(hf_dirs[name], dtype=torch.float32).eval()
    generator = torch.Generator().manual_seed(0)
    seqs = torch.randint(3, 400, (4, 64), generator=generator)
    lens = torch.tensor([64, 50, 17, 3])
    with torch.no_grad():
        got = ours(SequenceBatch(seqs, PaddingMask(lens, 64))).logits
        want = reference(input_ids=seqs, attention_mask=(torch.arange(64)[None] < lens[:, None]).long()).logits
    diff = max(float((got[i, :n] - want[i, :n]).abs().max()) for i, n in enumerate(lens.tolist()))
    print(f"{name}: max abs logit difference {diff:.2e}")
    assert diff < 1e-5


def test_the_packed_path_equals_transformers_log_probs(hf_dirs, cards) -> None:
    """Summed response log-probs of the shared-prefix forward of an imported Qwen3 against transformers."""
    from transformers import AutoModelForCausalLM

    from conftest import make_batch, sample_examples
    from fspo_recipe.scoring.logps import pair_logps

    ours = load_fairseq2("hf_qwen3", cards)
    reference = AutoModelForCausalLM.from_pretrained(hf_dirs["qwen3"], dtype=torch.float32).eval()
    examples = sample_examples(3)
    for ex in examples:
        ex["src"] = ex["src"][:200]  # byte ids < 256 are tokens of this vocabulary too
    batch = make_batch(examples)
    with torch.no_grad():
        logps, _ = pair_logps(ours, batch.chosen, batch.rejected, shared_prefix=True)
    for side, offset in ((batch.chosen, 0), (batch.rejected, 3)):
        for i in range(3):
            n = int(side.padding_mask.seq_lens[i]) if side.padding_mask is not None else side.seqs.size(1)
            ids, mask = side.seqs[i, :n], side.target_mask[i, :n]
            with torch.no_grad():
                lp = torch.log_softmax(reference(input_ids=ids[None]).logits[0, :-1].float(), -1)
            want = lp.gather(-1, ids[1:, None])[:, 0][mask[1:]].sum()
            assert float(logps[offset + i]) == pytest.approx(float(want), abs=1e-4)


@pytest.mark.parametrize("name", ["qwen3", "llama"])
def test_tokens_and_chat_template_equal_transformers(name, hf_dirs) -> None:
    from transformers import AutoTokenizer

    from fspo_recipe.models.hf_tokenizer import HfTokenizer
    from fspo_recipe.scoring.pairs import PairEncoder

    ours, theirs = HfTokenizer(hf_dirs[name]), AutoTokenizer.from_pretrained(hf_dirs[name])
    texts = [json.loads(line)["src"] for line in SAMPLE.read_text().splitlines()[:3]] + ["héllo 😀\ttab", ""]
    prompt_encoder = ours.create_encoder(mode="prompt")
    for text in texts:
        assert prompt_encoder(text).tolist() == theirs(text)["input_ids"]
    example = json.loads(SAMPLE.read_text().splitlines()[0])
    encoder = PairEncoder(ours, chat_template=True)
    src, chosen, rejected = encoder.encode(example["src"], example["tgt_chosen"], example["tgt_rejected"])
    for response, ids in ((example["tgt_chosen"], chosen), (example["tgt_rejected"], rejected)):
        conversation = [{"role": "user", "content": example["src"]}, {"role": "assistant", "content": response}]
        full = list(theirs.apply_chat_template(conversation, tokenize=True, return_dict=True)["input_ids"])
        head = list(theirs.apply_chat_template(conversation[:1], tokenize=True, add_generation_prompt=True,
                                               return_dict=True)["input_ids"])
        assert src.tolist() == head
        assert src.tolist() + ids.tolist() == full[: len(head) + len(ids)]
        assert ids[-1] == ours.vocab_info.eos_idx  # the response ends with the end-of-turn token
        assert len(full) - len(head) - len(ids) <= 1  # at most the template's newline after end-of-turn


@pytest.mark.parametrize("name", ["qwen3", "llama"])
def test_a_plain_dialogue_renders_as_its_turns_with_the_chat_template(name, hf_dirs) -> None:
    """A multi-turn HH dialogue (plain sources) is prepared with its turns as the ``messages`` field, which the chat
    template renders as transformers does; without the field the prompt is one user turn, never parsed back."""
    from transformers import AutoTokenizer

    from fspo_recipe.data.sources import hh_turns, messages_field
    from fspo_recipe.models.hf_tokenizer import HfTokenizer
    from fspo_recipe.scoring.pairs import PairEncoder

    ours, theirs = HfTokenizer(hf_dirs[name]), AutoTokenizer.from_pretrained(hf_dirs[name])
    prompt = "\n\nHuman: What is rain?\n\nAssistant: Water falling.\n\nHuman: Can you say more?\n\nAssistant:"
    turns = [{"role": "user", "content": "What is rain?"}, {"role": "assistant", "content": "Water falling."},
             {"role": "user", "content": "Can you say more?"}]
    assert messages_field(hh_turns(prompt)) == turns
    encoder = PairEncoder(ours, chat_template=True)
    src, chosen, _ = encoder.encode(prompt, " Sure, drops of water.", " No.", turns)
    as_text, _, _ = encoder.encode(prompt, " Sure, drops of water.", " No.")
    assert as_text.tolist() == list(theirs.apply_chat_template([{"role": "user", "content": prompt}], tokenize=True,
                                                               add_generation_prompt=True, return_dict=True)["input_ids"])
    head = list(theirs.apply_chat_template(turns, tokenize=True, add_generation_prompt=True,
                                           return_dict=True)["input_ids"])
    full = list(theirs.apply_chat_template([*turns, {"role": "assistant", "content": "Sure, drops of water."}],
                                           tokenize=True, return_dict=True)["input_ids"])
    assert src.tolist() == head and src.tolist() + chosen.tolist() == full[: len(head) + len(chosen)]
    assert encoder.prompt(prompt, turns).tolist() == head


def test_qwen3_architectures_have_the_published_sizes() -> None:
    from fspo_recipe.models.qwen3 import Qwen3Factory, qwen3_architectures

    counts = {}
    for name, config in qwen3_architectures().items():
        with torch.device("meta"):
            model = Qwen3Factory(config).create_model()
        counts[name] = sum(p.numel() for p in model.parameters())  # a tied matrix counts once
    assert counts["qwen3_0_6b"] == 596_049_920  # Qwen3-0.6B: 0.6B, 0.44B without the embedding
    assert round(counts["qwen3_1_7b"] / 1e9, 1) == 1.7
    assert round(counts["qwen3_4b"] / 1e9, 1) == 4.0
    assert round(counts["qwen3_8b"] / 1e9, 1) == 8.2  # untied: the output projection is its own matrix
    attention = qwen3_architectures()["qwen3_4b"]
    assert (attention.model_dim, attention.num_attn_heads, attention.head_dim) == (2560, 32, 128)


def test_hub_names_resolve_through_the_hugging_face_cache(hf_dirs, tmp_path, monkeypatch) -> None:
    """`hf://ORG/NAME` is fetched by huggingface_hub; offline, from a cache laid out as the hub writes it."""
    from fspo_recipe.models.hub import hub_snapshot

    cache = tmp_path / "hub"
    commit = "0" * 40
    repo = cache / "models--TinyOrg--tiny-qwen3"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    shutil.copytree(hf_dirs["qwen3"], repo / "snapshots" / commit)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    path = hub_snapshot("hf://TinyOrg/tiny-qwen3", ["*.safetensors", "*.json"])
    assert (path / "config.json").is_file() and sorted(path.glob("*.safetensors"))


# ---- bad input ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case,expected", [
    ("unsupported", "model_type 'mistral' is not supported; supported: llama, qwen3"),
    ("bias", "'attention_bias' is True; this plugin represents only attention_bias = False exactly"),
    ("missing_shard", "names shard(s) that are not in"),
    ("pickle", "has no *.safetensors file (pytorch_model.bin are pickles"),
    ("vocab", "tensors disagree with config.json: model.embed_tokens.weight is [512, "),
    ("no_dir", "is not a directory"),
    ("hidden", "tensors disagree with config.json"),
    ("layers", "tensors are missing: model.layers.2."),
    ("fewer_layers", "tensors have no place in the model config.json describes: model.layers.1."),
    ("heads", "field 'num_attention_heads' is 0; expected a whole number >= 1"),
    ("truncated", "is cut short"),
    ("no_tokenizer_config", "tokenizer_config.json does not exist"),
])
def test_bad_hugging_face_directories_are_one_line(case, expected, hf_dirs, tmp_path, capsys) -> None:
    from fspo_recipe.models.hf import main as hf_card_main

    directory = tmp_path / "model"
    shutil.copytree(hf_dirs["qwen3"], directory)
    config = json.loads((directory / "config.json").read_text())
    if case == "unsupported":
        config["model_type"] = "mistral"
    elif case == "bias":
        config["attention_bias"] = True
    elif case == "missing_shard":
        next(directory.glob("model-00002-*.safetensors")).unlink()
    elif case == "pickle":
        for f in directory.glob("*.safetensors"):
            f.unlink()
        (directory / "model.safetensors.index.json").unlink()
        (directory / "pytorch_model.bin").write_bytes(b"pickle")
    elif case == "vocab":
        config["vocab_size"] = 128
    elif case == "hidden":
        config["hidden_size"] *= 2
    elif case in ("layers", "fewer_layers"):
        config["num_hidden_layers"] += 1 if case == "layers" else -1
    elif case == "heads":
        config["num_attention_heads"] = 0
    elif case == "truncated":
        shard = next(directory.glob("model-00002-*.safetensors"))
        shard.write_bytes(shard.read_bytes()[:-100])
    elif case == "no_tokenizer_config":
        (directory / "tokenizer_config.json").unlink()
    (directory / "config.json").write_text(json.dumps(config))
    target = tmp_path / "nowhere" if case == "no_dir" else directory
    assert hf_card_main([str(target), "--name", "x", "--out", str(tmp_path / "cards")]) == 1
    err = capsys.readouterr().err
    assert expected in err and err.count("\n") == 1, err
    assert not (tmp_path / "cards" / "x.yaml").exists()


def test_a_lost_shard_at_load_time_names_the_missing_tensors(hf_dirs, tmp_path) -> None:
    from fspo_recipe.models.qwen3 import convert_qwen3_checkpoint
    from fspo_recipe.models.qwen3 import Qwen3Config

    from safetensors.torch import load_file

    tensors = {}
    for f in sorted(hf_dirs["qwen3"].glob("*.safetensors"))[1:]:  # the first shard is lost
        tensors |= load_file(f)
    config = Qwen3Config(model_dim=64, num_layers=2, num_attn_heads=4, num_key_value_heads=2, head_dim=32,
                         ffn_inner_dim=96)
    with pytest.raises(ValueError, match=r"lacks \d+ tensor\(s\) the configuration needs"):
        convert_qwen3_checkpoint(tensors, config)


# ---- through the commands --------------------------------------------------------------------------------


def fairseq2(*args: str) -> subprocess.CompletedProcess:
    from test_cli import FAIRSEQ2

    return subprocess.run([FAIRSEQ2, *args], capture_output=True, text=True, env=cli_env(COLUMNS="400"), cwd=REPO,
                          timeout=600)


CPU = ["trainer.dtype=float32", "criterion.config.reference_dtype=float32", "dataset.batch_size=2",
       "lr_scheduler.config.num_warmup_steps=0", "regime.num_steps=2", "regime.checkpoint_every_n_steps=2",
       "regime.publish_metrics_every_n_steps=1", "dataset.extras={chat_template: true}"]


@pytest.mark.slow
def test_a_hugging_face_qwen3_trains_with_its_chat_template_and_evaluates_as_transformers_scores(
        hf_dirs, cards, tmp_path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    sft, ipo, evaluation = tmp_path / "sft", tmp_path / "ipo", tmp_path / "eval"
    proc = fairseq2("lm", "preference_finetune", str(sft), "--preset", "fspo_sft", "--no-sweep-dir", "--config",
                    f"common.assets.extra_path={cards}", "model.name=hf_qwen3", "optimizer.config.lr=1e-3", *CPU)
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = fairseq2("lm", "preference_finetune", str(ipo), "--preset", "fspo_ipo", "--no-sweep-dir", "--config",
                    f"common.assets.extra_path={cards}", f"common.assets.checkpoint_dir={sft}/checkpoints",
                    "optimizer.config.lr=1e-4", *CPU)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = [json.loads(line) for line in (ipo / "metrics" / "train.jsonl").read_text().splitlines()]
    assert [m["Step"] for m in metrics] == [1, 2] and metrics[0]["FSPO Loss"] == pytest.approx(2500.0)

    # The untrained model scored by preference_eval equals transformers' log-probs of the chat-rendered pairs.
    proc = fairseq2("lm", "preference_eval", str(evaluation), "--no-sweep-dir", "--config",
                    f"common.assets.extra_path={cards}", "model.name=hf_qwen3", f"dataset={SAMPLE}",
                    "max_examples=4", "shots=[]", "criterion.loss=simpo", "chat_template=true")
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = list(csv.DictReader((evaluation / "pairs.csv").open()))
    model = AutoModelForCausalLM.from_pretrained(hf_dirs["qwen3"], dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(hf_dirs["qwen3"])
    for row, line in zip(rows, SAMPLE.read_text().splitlines()):
        example = json.loads(line)
        for key, column in (("tgt_chosen", "chosen_logps"), ("tgt_rejected", "rejected_logps")):
            conversation = [{"role": "user", "content": example["src"]}, {"role": "assistant", "content": example[key]}]
            head = len(tokenizer.apply_chat_template(conversation[:1], add_generation_prompt=True, return_dict=True,
                                                     tokenize=True)["input_ids"])
            ids = list(tokenizer.apply_chat_template(conversation, return_dict=True, tokenize=True)["input_ids"])
            end = ids.index(tokenizer.convert_tokens_to_ids("<|im_end|>"), head) + 1
            ids_t = torch.tensor(ids[:end])
            with torch.no_grad():
                lp = torch.log_softmax(model(input_ids=ids_t[None]).logits[0, :-1], -1)
            want = float(lp.gather(-1, ids_t[1:, None])[head - 1 :, 0].sum())
            assert float(row[column]) == pytest.approx(want, abs=1e-3), (row["id"], key)


@pytest.mark.slow
def test_a_card_that_points_at_a_missing_directory_is_one_line(cards, tmp_path) -> None:
    broken = tmp_path / "cards"
    broken.mkdir()
    lines = (cards / "hf_qwen3.yaml").read_text().replace("name: hf_qwen3", "name: gone").splitlines()
    lines = [f"checkpoint: {tmp_path / 'deleted_model'}" if line.startswith("checkpoint:") else line for line in lines]
    (broken / "gone.yaml").write_text("\n".join(lines) + "\n")
    proc = fairseq2("lm", "preference_finetune", str(tmp_path / "run"), "--preset", "fspo_sft", "--no-sweep-dir",
                    "--config", f"common.assets.extra_path={broken}", "model.name=gone", *CPU)
    assert proc.returncode == 1
    assert "deleted_model" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_the_chat_template_option_needs_a_tokenizer_with_one(tmp_path) -> None:
    """The option is read by the reader: the byte-level tiny tokenizer has no template, so training refuses."""
    from fspo_recipe.models.tiny import write_tiny_assets

    write_tiny_assets(tmp_path / "tiny", seed=0)
    proc = fairseq2("lm", "preference_finetune", str(tmp_path / "run"), "--preset", "fspo_sft", "--no-sweep-dir",
                    "--config", f"common.assets.extra_path={tmp_path / 'tiny'}", "model.name=fspo_tiny_llama", *CPU)
    assert proc.returncode == 1
    assert "the model's tokenizer has no chat template" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_tiny_assets_of_the_qwen3_family_train(tmp_path) -> None:
    from fspo_recipe.models.tiny import main as tiny_main

    assert tiny_main([str(tmp_path / "tiny"), "--family", "qwen3", "--name", "tiny_qwen3"]) == 0
    proc = fairseq2("lm", "preference_finetune", str(tmp_path / "run"), "--preset", "fspo_ipo", "--no-sweep-dir",
                    "--config", f"common.assets.extra_path={tmp_path / 'tiny'}", "model.name=tiny_qwen3",
                    "criterion.config.reference_model={name: tiny_qwen3}", *CPU[:-1])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "FspoDecoderModel" in (tmp_path / "run" / "logs" / "rank_0.log").read_text()


@pytest.mark.slow
def test_generation_speaks_the_chat_template_and_stops_at_its_end_of_turn(hf_dirs, tmp_path) -> None:
    """A Qwen3-Base-like model (end of sequence <|endoftext|>, end of turn <|im_end|>) whose head is edited so that
    greedy decoding writes <|im_end|> at step k: preference_eval's answer is the k-1 tokens before it, exactly as
    transformers' greedy decoding of the chat-rendered prompt stopped at <|im_end|>."""

    from safetensors.torch import load_file, save_file
    from tokenizers import Tokenizer
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from fspo_recipe.models.hf import main as hf_card_main

    model_dir = tmp_path / "qwen3_base"
    shutil.copytree(hf_dirs["qwen3_untied"], model_dir)
    config = json.loads((model_dir / "tokenizer_config.json").read_text())
    (model_dir / "tokenizer_config.json").write_text(json.dumps({**config, "eos_token": "<|endoftext|>"}))
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    end_of_turn, eos = tokenizer.convert_tokens_to_ids("<|im_end|>"), tokenizer.convert_tokens_to_ids("<|endoftext|>")
    example = json.loads(SAMPLE.read_text().splitlines()[0])
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": example["src"]}], add_generation_prompt=True,
                                           tokenize=True, return_dict=True)["input_ids"]

    def greedy(directory: Path, steps: int) -> list[int]:
        model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()
        out = model.generate(torch.tensor([prompt]), do_sample=False, max_new_tokens=steps, eos_token_id=[eos, end_of_turn],
                             pad_token_id=eos)
        return out[0, len(prompt):].tolist()

    free = greedy(model_dir, 12)
    assert end_of_turn not in free and eos not in free
    k = next(i for i in range(2, len(free)) if free[i] not in free[:i])  # a step whose token is new: swap it with <|im_end|>
    weights = load_file(str(model_dir / "model.safetensors"))
    head = weights["lm_head.weight"]
    head[[free[k], end_of_turn]] = head[[end_of_turn, free[k]]].clone()
    save_file(weights, str(model_dir / "model.safetensors"), metadata={"format": "pt"})
    want = greedy(model_dir, 12)
    assert want == free[:k] + [end_of_turn]

    cards = tmp_path / "cards"
    assert hf_card_main([str(model_dir), "--name", "qwen3_base_edit", "--out", str(cards)]) == 0
    out = tmp_path / "gen"
    proc = fairseq2("lm", "preference_eval", str(out), "--no-sweep-dir", "--config", f"common.assets.extra_path={cards}",
                    "model.name=qwen3_base_edit", f"dataset={SAMPLE}", "max_examples=1", "shots=[]",
                    "criterion.loss=simpo", "chat_template=true", "generation.enabled=true", "generation.greedy=true",
                    "generation.max_new_tokens=12")
    assert proc.returncode == 0, proc.stderr[-3000:]
    (gen,) = [json.loads(line) for line in (out / "generations.jsonl").read_text().splitlines()]
    assert gen["tokens"] == k
    assert gen["generated"] == Tokenizer.from_file(str(model_dir / "tokenizer.json")).decode(free[:k], skip_special_tokens=False)
    assert gen["prompt"] == example["src"] and gen["system"] == "policy"


def test_a_tied_llama_trains_one_matrix_for_embedding_and_output(hf_dirs, cards) -> None:
    """tie_word_embeddings in a llama config.json: the output projection is the embedding itself (one parameter,
    one gradient, the parameter count of transformers), before and after optimizer steps."""
    from fairseq2.models.sequence import SequenceBatch
    from transformers import AutoModelForCausalLM

    ours = load_fairseq2("hf_llama", cards).train()
    embed = ours.decoder_frontend.embed.weight
    assert ours.final_proj.weight is embed
    reference = AutoModelForCausalLM.from_pretrained(hf_dirs["llama"], dtype=torch.float32)
    assert sum(p.numel() for p in ours.parameters()) == reference.num_parameters()
    before = embed.detach().clone()
    optimizer = torch.optim.AdamW(ours.parameters(), lr=1e-2)
    seqs = torch.randint(3, 400, (2, 32), generator=torch.Generator().manual_seed(0))
    for _ in range(2):
        optimizer.zero_grad()
        ours(SequenceBatch(seqs, None)).logits.logsumexp(-1).mean().backward()
        optimizer.step()
    assert ours.final_proj.weight is ours.decoder_frontend.embed.weight
    assert not torch.equal(embed.detach(), before)  # trained, as one matrix
    untied = load_fairseq2("hf_qwen3_untied", cards)
    assert untied.final_proj.weight is not untied.decoder_frontend.embed.weight


@pytest.mark.slow
def test_a_tied_llama_stays_tied_through_training_and_its_checkpoints(cards, tmp_path) -> None:
    """Two SFT steps of the recipe from a tied llama: the checkpoint's output projection equals its (trained)
    embedding, and the run's checkpoint card says tied_embeddings, so the next stage builds one matrix again."""
    import yaml

    from fspo_recipe.runs import register_run_cards

    run = tmp_path / "sft"
    proc = fairseq2("lm", "preference_finetune", str(run), "--preset", "fspo_sft", "--no-sweep-dir", "--config",
                    f"common.assets.extra_path={cards}", "model.name=hf_llama", "optimizer.config.lr=1e-2", *CPU)
    assert proc.returncode == 0, proc.stderr[-3000:]
    state = torch.load(run / "checkpoints" / "step_2" / "model.pt", weights_only=True)["model"]
    start = load_fairseq2("hf_llama", cards).decoder_frontend.embed.weight
    assert not torch.equal(state["decoder_frontend.embed.weight"], start)
    assert torch.equal(state["final_proj.weight"], state["decoder_frontend.embed.weight"])
    docs = list(yaml.safe_load_all((run / "checkpoints" / "model.yaml").read_text()))
    assert any(d.get("model_config", {}).get("_set_", {}).get("tied_embeddings") is True for d in docs)

    from fairseq2.context import get_runtime_context

    names = register_run_cards(get_runtime_context(), run, "tied_run", tmp_path / "run_cards")
    model = load_fairseq2(names[2], cards)
    assert model.final_proj.weight is model.decoder_frontend.embed.weight
    assert torch.equal(model.final_proj.weight, state["final_proj.weight"])
