"""fspo-export-hf (fspo_recipe/models/hf_export.py): Hugging Face directory -> card -> export gives the same tensors;
after training steps transformers' logits and greedy answers of the export equal fairseq2's of the run's checkpoint;
refusals are one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import REPO
from hf_fixtures import write_hf_model
from test_models import CPU, fairseq2, load_fairseq2

SAMPLE = REPO / "datasets" / "samples" / "fspo_sample" / "train.jsonl"

CASES = {"llama_tied": ("llama", True), "llama_untied": ("llama", False), "qwen3_tied": ("qwen3", True),
         "qwen3_untied": ("qwen3", False)}


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> tuple[dict[str, Path], Path]:
    from fspo_recipe.models.hf import main as hf_card_main

    root = tmp_path_factory.mktemp("export")
    dirs = {name: write_hf_model(root / name, family, seed=i, tied=tied)
            for i, (name, (family, tied)) in enumerate(CASES.items())}
    for name, directory in dirs.items():
        assert hf_card_main([str(directory), "--name", f"x_{name}", "--out", str(root / "cards")]) == 0
    return dirs, root / "cards"


def read_tensors(directory: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    out: dict[str, torch.Tensor] = {}
    for file in sorted(directory.glob("*.safetensors")):
        out |= load_file(str(file))
    return out


@pytest.mark.parametrize("name", list(CASES))
def test_a_card_exports_to_the_tensors_and_config_it_was_imported_from(name, models, tmp_path) -> None:
    from fspo_recipe.models.hf_export import main

    import os

    dirs, cards = models
    out = tmp_path / "export"
    before = os.umask(0o002)  # a group sharing the export (a group-mate's vLLM server reads it)
    try:
        assert main(["--card", f"x_{name}", "--assets-dir", str(cards), str(out), "--max-shard-size", "100KB"]) == 0
    finally:
        os.umask(before)
    modes = {p.name: p.stat().st_mode & 0o777 for p in [out, *out.iterdir()]}
    assert modes == {n: 0o775 if n == "export" else 0o664 for n in modes}, modes  # safetensors alone makes 0600
    original, exported = read_tensors(dirs[name]), read_tensors(out)
    assert set(exported) == set(original)
    for key, tensor in original.items():
        assert torch.equal(exported[key], tensor), key
    assert len(list(out.glob("*.safetensors"))) > 1 and (out / "model.safetensors.index.json").is_file()
    theirs, ours = json.loads((dirs[name] / "config.json").read_text()), json.loads((out / "config.json").read_text())
    for key in ("architectures", "model_type", "hidden_size", "intermediate_size", "num_hidden_layers",
                "num_attention_heads", "num_key_value_heads", "rms_norm_eps", "tie_word_embeddings", "vocab_size",
                "max_position_embeddings", "bos_token_id", "eos_token_id"):
        assert ours.get(key) == theirs.get(key), key
    # Rotary settings as the importer reads them (transformers 5 writes `rope_parameters`; the export writes the
    # `rope_theta` / `rope_scaling` keys that transformers 4 and 5 and vLLM all read).
    from fspo_recipe.models.hf_config import rope_settings

    (theta, scaling), (want_theta, want_scaling) = (rope_settings(c, d, 10_000.0)
                                                    for c, d in ((ours, out), (theirs, dirs[name])))
    assert theta == want_theta
    assert {k: v for k, v in (scaling or {}).items() if k != "rope_theta"} == \
        {k: v for k, v in (want_scaling or {}).items() if k != "rope_theta"}
    for file in ("tokenizer.json", "tokenizer_config.json"):
        assert (out / file).read_bytes() == (dirs[name] / file).read_bytes()


def test_refusals_are_one_line(models, tmp_path, capsys) -> None:
    from fspo_recipe.models.hf_export import main

    for size in ("0", "0KB", "0.0001KB", "-5MB", "lots"):  # 0 would write one file per tensor
        with pytest.raises(SystemExit):
            main(["--card", "x_llama_tied", str(tmp_path / "sized"), "--max-shard-size", size])
        assert "--max-shard-size" in capsys.readouterr().err
    assert not (tmp_path / "sized").exists()

    dirs, cards = models
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "mine.txt").write_text("keep")
    cases = [
        (["--card", "x_llama_tied", "--assets-dir", str(cards), str(occupied)], "exists and is not empty"),
        (["--card", "x_llama_tied", "--assets-dir", str(cards), str(occupied), "--overwrite"],
         "was not written by fspo-export-hf"),
        (["--card", "x_llama_tied", "--assets-dir", str(cards), str(cards / "inside")], "is inside the source"),
        (["--card", "x_llama_tied", "--assets-dir", str(cards), str(dirs["llama_tied"] / "export")],
         "is inside the source"),  # the card's model directory
        ([str(tmp_path / "no_run"), str(tmp_path / "out")], "does not exist"),
        (["--card", "no_such_model", str(tmp_path / "out2")], "no model card named"),
    ]
    model_files = sorted(p.name for p in dirs["llama_tied"].iterdir())
    for argv, expected in cases:
        assert main(argv) == 1, argv
        err = capsys.readouterr().err.strip()
        assert expected in err and len(err.splitlines()) == 1, err
    assert (occupied / "mine.txt").read_text() == "keep"
    assert sorted(p.name for p in dirs["llama_tied"].iterdir()) == model_files  # nothing left in the model's directory
    out = tmp_path / "again"
    assert main(["--card", "x_llama_tied", "--assets-dir", str(cards), str(out)]) == 0
    assert main(["--card", "x_qwen3_tied", "--assets-dir", str(cards), str(out), "--overwrite"]) == 0  # its own
    assert json.loads((out / "config.json").read_text())["model_type"] == "qwen3"
    # --overwrite replaces what an export wrote, nothing else: a source kept inside it, or a file of someone else's.
    run = out / "runs" / "sft"
    run.mkdir(parents=True)
    (run / "keep.txt").write_text("a run")
    assert main([str(run), str(out), "--overwrite"]) == 1
    assert "is inside the output" in capsys.readouterr().err
    assert main(["--card", "x_llama_tied", "--assets-dir", str(cards), str(out), "--overwrite"]) == 1
    err = capsys.readouterr().err.strip()
    assert "runs" in err and "did not write" in err and len(err.splitlines()) == 1, err
    assert (run / "keep.txt").read_text() == "a run"


@pytest.mark.slow
@pytest.mark.parametrize("name", ["llama_tied", "qwen3_untied"])
def test_after_training_transformers_reads_the_export_as_fairseq2_reads_the_checkpoint(name, models, tmp_path) -> None:
    from fairseq2.context import get_runtime_context
    from fairseq2.models.sequence import SequenceBatch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from fspo_recipe.models.hf_export import main
    from fspo_recipe.runs import register_run_cards

    _, cards = models
    run = tmp_path / "sft"
    proc = fairseq2("lm", "preference_finetune", str(run), "--preset", "fspo_sft", "--no-sweep-dir", "--config",
                    f"common.assets.extra_path={cards}", f"model.name=x_{name}", "optimizer.config.lr=1e-2", *CPU)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = tmp_path / "export"
    assert main([str(run), str(out)]) == 0
    readme = (out / "README.md").read_text()
    assert f"base model: x_{name}" in readme and "step: 2" in readme and "shots: 2" in readme

    names = register_run_cards(get_runtime_context(), run, "trained", tmp_path / "run_cards")
    ours = load_fairseq2(names[2], cards)
    theirs = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    start = load_fairseq2(f"x_{name}", cards)
    seqs = torch.randint(3, 400, (3, 48), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        got, want = ours(SequenceBatch(seqs, None)).logits, theirs(input_ids=seqs).logits
        moved = (ours.decoder_frontend.embed.weight - start.decoder_frontend.embed.weight).abs().max()
    assert float(moved) > 1e-4  # trained
    diff = float((got - want).abs().max())
    print(f"{name}: max |logit difference| {diff:.2e}")
    assert diff < 1e-4

    # Greedy answers with the chat template: fairseq2's sampler (preference_eval) and transformers' generate.
    tokenizer = AutoTokenizer.from_pretrained(out)
    example = json.loads(SAMPLE.read_text().splitlines()[0])
    ids = tokenizer.apply_chat_template([{"role": "user", "content": example["src"]}], add_generation_prompt=True,
                                        return_tensors="pt", return_dict=True)["input_ids"]
    want_ids = theirs.generate(ids, max_new_tokens=12, do_sample=False, eos_token_id=tokenizer.eos_token_id,
                               pad_token_id=tokenizer.eos_token_id)[0, ids.shape[1]:].tolist()
    from fairseq2.generation import SamplingSequenceGenerator, TopKSampler

    from fspo_recipe.fairseq2_compat import generation_view

    # fairseq2's generator ends a hypothesis at max_gen_len with a forced EOS: one step more, then the same length.
    generator = SamplingSequenceGenerator(generation_view(ours), TopKSampler(k=1), max_gen_len=13, temperature=1.0)
    got_ids = generator(ids, None).hypotheses[0][0].seq.tolist()
    assert got_ids[: len(want_ids)] == want_ids and want_ids


@pytest.mark.slow
def test_a_run_exports_without_the_environment_it_was_trained_in(models, tmp_path) -> None:
    """A run whose base model's card came from FAIRSEQ2_USER_ASSET_DIR (as the quick start's) records that directory
    (fspo_card_directories.json), so a later fspo-export-hf (another process, without the variable) needs no extra
    knowledge; without the record it refuses in one line naming --assets-dir, and with --assets-dir it exports."""
    import subprocess

    from conftest import cli_env
    from test_cli import FAIRSEQ2

    from fspo_recipe.runs import CARD_DIRECTORIES_FILE

    _, cards = models
    run = tmp_path / "sft"
    proc = subprocess.run([FAIRSEQ2, "lm", "preference_finetune", str(run), "--preset", "fspo_sft", "--no-sweep-dir",
                           "--config", "model.name=x_llama_tied", "optimizer.config.lr=1e-2", *CPU], capture_output=True,
                          text=True, env=cli_env(FAIRSEQ2_USER_ASSET_DIR=str(cards)), cwd=REPO, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((run / CARD_DIRECTORIES_FILE).read_text())["card_directories"] == [str(cards.resolve())]

    def export(*args: str) -> subprocess.CompletedProcess:
        env = {k: v for k, v in cli_env().items() if not k.startswith("FAIRSEQ2_") or k == "FAIRSEQ2_EXTENSION_TRACE"}
        return subprocess.run([str(Path(FAIRSEQ2).with_name("fspo-export-hf")), str(run), *args], capture_output=True,
                              text=True, env=env, cwd=REPO, timeout=600)

    done = export(str(tmp_path / "export"))
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "export" / "config.json").is_file()
    (run / CARD_DIRECTORIES_FILE).unlink()  # a run of an older version
    refused = export(str(tmp_path / "export2"))
    err = refused.stderr.strip()
    assert refused.returncode == 1 and len(err.splitlines()) == 1 and "--assets-dir" in err, err
    assert not (tmp_path / "export2").exists()
    assert export(str(tmp_path / "export2"), "--assets-dir", str(cards)).returncode == 0

    # Damaged inputs are one line each, never a traceback: a truncated model.pt, a config.yaml that is not YAML.
    import shutil

    for damage, expected in (("model", "is damaged"), ("config", "cannot be read as the run's configuration")):
        broken = tmp_path / f"broken_{damage}"
        shutil.copytree(run, broken)
        if damage == "model":
            model = broken / "checkpoints" / "step_2" / "model.pt"
            model.write_bytes(model.read_bytes()[:100])
        else:
            (broken / "config.yaml").write_text("model: [unclosed\n  - {")
        done = subprocess.run([str(Path(FAIRSEQ2).with_name("fspo-export-hf")), str(broken), str(tmp_path / "x"),
                               "--assets-dir", str(cards)], capture_output=True, text=True, env=cli_env(), cwd=REPO,
                              timeout=600)
        err = done.stderr.strip()
        assert done.returncode == 1 and expected in err and len(err.splitlines()) == 1, err


@pytest.mark.parametrize("family", ["llama", "mistral"])
def test_a_tiny_model_of_fairseq2s_families_exports_with_equal_logits(family, tmp_path, capsys) -> None:
    """fspo-tiny-assets models (fairseq2's llama with llama 3.2's scaled rotary table; mistral, which has no Hugging
    Face import here): transformers' logits of the export equal fairseq2's; no tokenizer files, and it says so."""
    from fairseq2.models.sequence import SequenceBatch
    from transformers import AutoModelForCausalLM

    from fspo_recipe.models.hf_export import main
    from fspo_recipe.models.tiny import TinyModelSpec, write_tiny_assets

    write_tiny_assets(tmp_path / "assets", seed=3, name=f"tiny_{family}", spec=TinyModelSpec(family=family))
    out = tmp_path / "export"
    assert main(["--card", f"tiny_{family}", "--assets-dir", str(tmp_path / "assets"), str(out)]) == 0
    assert "no tokenizer files" in capsys.readouterr().out and not (out / "tokenizer.json").exists()
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == [{"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM"}[family]]
    ours = load_fairseq2(f"tiny_{family}", tmp_path / "assets")
    theirs = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    seqs = torch.randint(0, 512, (2, 300), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        diff = float((ours(SequenceBatch(seqs, None)).logits - theirs(input_ids=seqs).logits).abs().max())
    print(f"tiny {family}: max |logit difference| {diff:.2e}")
    assert diff < 1e-4
