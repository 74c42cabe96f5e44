"""``fspo-score-reference``: write a split's reference log-probs into it, so training loads no reference model.

    fspo-score-reference --model llama3_2_3b_instruct --input data/elix/train.jsonl --output data/elix/train_ref.jsonl
    fspo-score-reference --run-dir runs/sft --input data/elix/train.jsonl --output data/elix/train_ref.jsonl
    fairseq2 lm preference_finetune runs/ipo --preset fspo_ipo \\
        --config dataset.path=data/elix/train_ref.jsonl criterion.config.reference_model=null

Each output line is the input line with ``reference_score_chosen`` and ``reference_score_rejected`` (summed
response log-probs, nats, the same numbers the live reference computes in training: same encoding, same
shared-prefix forward). Interrupted runs resume: scored lines are appended to ``OUTPUT.partial`` chunk by chunk
and the finished file is renamed to OUTPUT.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import torch


def _complete_lines(partial: Path) -> int:
    """Number of complete JSON lines of ``partial``; a torn last line (from a kill) is cut off."""
    if not partial.exists():
        return 0
    data = partial.read_bytes()
    end = data.rfind(b"\n") + 1
    if end < len(data):
        with partial.open("r+b") as fp:
            fp.truncate(end)
    return data[:end].count(b"\n")


def score_reference(
    model_name: str,
    input_path: Path,
    output_path: Path,
    *,
    batch_size: int = 8,
    chunk_size: int = 256,
    dtype: torch.dtype = torch.float32,
    device: str | None = None,
    assets_dir: Path | None = None,
    run_dir: Path | None = None,
    progress: bool = True,
) -> int:
    """Score every line of ``input_path`` with ``model_name`` (or the last checkpoint of the training run
    ``run_dir``, as stage 2's ``last_checkpoint@`` reference); return the number of lines written."""
    from fairseq2 import setup_fairseq2
    from fairseq2.context import get_runtime_context
    from fairseq2.data.text.tokenizers import get_text_tokenizer_hub
    from fairseq2.gang import fake_gangs
    from fairseq2.models.decoder import DecoderModel
    from fairseq2.recipes.common import load_reference_model

    from fspo_recipe.assets import add_card_directory
    from fspo_recipe.data.jsonl import read_preference_jsonl
    from fspo_recipe.eval.scoring import default_device, encode_pairs, score_pairs

    setup_fairseq2()
    context = get_runtime_context()
    if assets_dir is not None:
        add_card_directory(context, assets_dir)
    if run_dir is not None:
        import tempfile

        from fspo_recipe.eval.recipe import register_run_cards

        with tempfile.TemporaryDirectory() as card_dir:  # the cards are read into memory on registration
            steps = register_run_cards(context, run_dir, "reference", Path(card_dir))
        model_name = steps[max(steps)]

    examples = [record for _, record in read_preference_jsonl(input_path)]  # as in the file; bad lines are named
    partial = output_path.with_name(output_path.name + ".partial")
    done = _complete_lines(partial)
    if done > len(examples):
        raise ValueError(f"{partial} has {done} lines but {input_path} only {len(examples)}: remove {partial}.")

    torch_device = default_device(device)
    model = load_reference_model(DecoderModel, context, model_name, fake_gangs(torch_device), dtype, mp=False).eval()
    tokenizer = get_text_tokenizer_hub().load(model_name)

    bar = None
    if progress and sys.stderr.isatty():
        from rich.progress import Progress

        bar = Progress(transient=True)
        task = bar.add_task("reference scores", total=len(examples), completed=done)
        bar.start()
    try:
        with partial.open("ab") as fp:
            for start in range(done, len(examples), chunk_size):
                chunk = examples[start : start + chunk_size]
                pairs = encode_pairs(tokenizer, [e["src"] for e in chunk], [e["tgt_chosen"] for e in chunk],
                                     [e["tgt_rejected"] for e in chunk])
                scores = score_pairs(model, pairs, batch_size=batch_size, device=torch_device)
                for record, c, r in zip(chunk, scores.chosen.tolist(), scores.rejected.tolist()):
                    record = {**record, "reference_score_chosen": c, "reference_score_rejected": r}
                    fp.write((json.dumps(record, ensure_ascii=False) + "\n").encode())
                fp.flush()
                os.fsync(fp.fileno())
                if bar is not None:
                    bar.advance(task, len(chunk))
    finally:
        if bar is not None:
            bar.stop()
    os.replace(partial, output_path)
    return len(examples)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fspo-score-reference", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--model", help="asset card name of the reference model")
    which.add_argument("--run-dir", type=Path, help="a training run's output directory: its last checkpoint")
    parser.add_argument("--input", type=Path, required=True, help="a prepared split (JSONL)")
    parser.add_argument("--output", type=Path, required=True, help="the JSONL to write (resumes OUTPUT.partial)")
    parser.add_argument("--batch-size", type=int, default=8, help="pairs per forward (default: 8)")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32")
    parser.add_argument("--device", default=None, help="cpu, cuda, ... (default: CUDA when present)")
    parser.add_argument("--assets-dir", type=Path, default=None, help="extra fairseq2 card directory")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    try:
        n = score_reference(args.model or "", args.input, args.output, batch_size=args.batch_size,
                            dtype=getattr(torch, args.dtype), device=args.device, assets_dir=args.assets_dir,
                            run_dir=args.run_dir, progress=not args.no_progress)
    except (ValueError, OSError) as ex:
        print(f"fspo-score-reference: {ex}", file=sys.stderr)
        return 1
    print(f"wrote {n} scored examples to {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
