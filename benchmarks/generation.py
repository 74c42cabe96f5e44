"""Answers per second for the same held-out prompts: fairseq2's sampler (as ``preference_eval`` runs it) against
transformers' ``generate`` on the model's ``fspo-export-hf`` export (as ``fspo-generate`` runs it).

    python benchmarks/generation.py [--card smollm2_135m_instruct] [--examples 16] [--max-new-tokens 32]
        [--batch-size 8] [--chat-template] [--data FILE]

Without ``--card`` the model is a tiny random Hugging Face llama (tests/hf_fixtures.py, 2 layers, dim 64) imported
with ``fspo-hf-card``; ``--card NAME`` takes a card from ``FAIRSEQ2_USER_ASSET_DIR`` or ``--assets-dir`` (SmolLM2:
``FAIRSEQ2_USER_ASSET_DIR=$(fspo-fetch-smollm2)``). Both sides answer the first ``--examples`` queries of the data
(default: the bundled few-shot sample), spread over users, greedily, in batches of ``--batch-size``, on CPU (or
CUDA when present); model loading is not timed. Prints wall seconds, answers/s, new tokens/s, and how many answers
are equal token for token.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def fairseq2_side(card: str, assets: Path, prompts: list, args: argparse.Namespace, device: torch.device
                  ) -> tuple[float, list[str], int]:
    from fairseq2 import setup_fairseq2
    from fairseq2.context import get_runtime_context
    from fairseq2.data.text.tokenizers import get_text_tokenizer_hub
    from fairseq2.gang import fake_gangs
    from fairseq2.models.decoder import DecoderModel
    from fairseq2.recipes.common import load_reference_model

    from fspo_recipe.assets import add_card_directory
    from fspo_recipe.eval.generation import Fairseq2Answers
    from fspo_recipe.models.families import packed_model_families
    from fspo_recipe.scoring.pairs import PairEncoder

    setup_fairseq2()
    context = get_runtime_context()
    add_card_directory(context, assets)
    with packed_model_families(context):
        model = load_reference_model(DecoderModel, context, card, fake_gangs(device), torch.float32, mp=False).eval()
    tokenizer = get_text_tokenizer_hub().load(card)
    answers = Fairseq2Answers(model, tokenizer, PairEncoder(tokenizer, chat_template=args.chat_template),
                              greedy=True, top_p=1.0, temperature=1.0, max_new_tokens=args.max_new_tokens, seed=0,
                              chat_kwargs={})
    texts, tokens = [""] * len(prompts), 0
    start = time.perf_counter()
    with torch.inference_mode():
        for i, text, count in answers.generate([p.text for p in prompts], args.batch_size, device):
            texts[i], tokens = text, tokens + count
    return time.perf_counter() - start, texts, tokens


def transformers_side(export: Path, prompts: list, args: argparse.Namespace, device: torch.device
                      ) -> tuple[float, list[str], int]:
    from fspo_recipe.eval.generate_cli import Sampling, TransformersBackend

    backend = TransformersBackend(export, chat_template=args.chat_template, device=str(device), dtype="float32",
                                  batch_size=args.batch_size)
    texts, tokens = [""] * len(prompts), 0

    def done(i: int, text: str, count: int) -> None:
        nonlocal tokens
        texts[i], tokens = text, tokens + count

    start = time.perf_counter()
    backend.generate(prompts, Sampling(max_new_tokens=args.max_new_tokens), done)
    return time.perf_counter() - start, texts, tokens


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--card", help="a model card (default: a tiny random llama made here)")
    parser.add_argument("--assets-dir", type=Path, help="extra card directory for --card")
    parser.add_argument("--data", default=str(REPO / "datasets" / "samples" / "fspo_sample" / "train.jsonl"))
    parser.add_argument("--examples", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--chat-template", action="store_true", help="prompts in the model's chat template")
    args = parser.parse_args()

    from fspo_recipe.eval.generate_cli import load_prompts
    from fspo_recipe.models.hf_export import main as export_main

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        card, assets = args.card, args.assets_dir or work / "cards"
        if card is None:
            sys.path.insert(0, str(REPO / "tests"))
            from hf_fixtures import write_hf_model

            from fspo_recipe.models.hf import main as hf_card_main

            hf_card_main([str(write_hf_model(work / "hf", "llama", seed=0)), "--name", "bench_llama", "--out",
                          str(assets)])
            card = "bench_llama"
        assets.mkdir(parents=True, exist_ok=True)
        if export_main(["--card", card, "--assets-dir", str(assets), str(work / "export")]) != 0:
            return 1
        prompts = load_prompts(args.data, assets, None, args.examples)
        rows = [("fairseq2 sampler", *fairseq2_side(card, assets, prompts, args, device)),
                ("transformers generate", *transformers_side(work / "export", prompts, args, device))]
    equal = sum(a == b for a, b in zip(rows[0][2], rows[1][2]))
    print(f"{card}: {len(prompts)} answers of at most {args.max_new_tokens} tokens, batch {args.batch_size}, "
          f"{device.type}, {torch.get_num_threads()} threads, chat template {'on' if args.chat_template else 'off'}")
    print("| generator | seconds | answers/s | new tokens/s |")
    print("|---|---|---|---|")
    for name, seconds, _, tokens in rows:
        print(f"| {name} | {seconds:.2f} | {len(prompts) / seconds:.2f} | {tokens / seconds:.1f} |")
    print(f"equal answers: {equal} of {len(prompts)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
