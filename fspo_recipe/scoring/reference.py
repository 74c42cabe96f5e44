"""``fspo-score-reference``: write a split's reference log-probs into it, so training loads no reference model.

    fspo-score-reference --model llama3_2_3b_instruct --input data/elix/train.jsonl --output data/elix/train_ref.jsonl
    fspo-score-reference --run-dir runs/sft --input data/elix/train.jsonl --output data/elix/train_ref.jsonl
    fairseq2 lm preference_finetune runs/ipo --preset fspo_ipo \\
        --config dataset.path=data/elix/train_ref.jsonl criterion.config.reference_model=null

Each output line is the input line with ``reference_score_chosen`` and ``reference_score_rejected`` (summed
response log-probs, nats, the same numbers the live reference computes in training: same encoding, same
shared-prefix forward). Interrupted runs resume: scored lines are appended to ``OUTPUT.partial`` chunk by chunk
and the finished file is renamed to OUTPUT. ``OUTPUT.partial.json`` records what the partial file was made from
(the input's path, size and a hash of its first lines; the model's name, the files of its weights with their sizes
and times, the dtype and the encoding): a partial made from anything else (another input, other weights under the
same card name, a run directory trained again in place, another ``--dtype``), or whose lines are not the input's
lines plus the two scores, is started over with a message, never merged.

One run writes an OUTPUT at a time (a lock beside it, ``.OUTPUT.lock``). An existing OUTPUT is replaced only with
``--overwrite`` and only if it holds reference scores (this command's output); the input is never the output.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from fspo_recipe.assets import add_card_directory, describe_load_error, load_error_types
from fspo_recipe.cli import run_command
from fspo_recipe.data.jsonl import read_preference_jsonl
from fspo_recipe.files import atomic_file, complete_lines
from fspo_recipe.lock import OutputInUseError, OutputLock
from fspo_recipe.models.families import packed_model_families
from fspo_recipe.progress import ProgressBar
from fspo_recipe.runs import register_run
from fspo_recipe.scoring.pairs import PairEncoder, default_device, encode_pairs, score_pairs

IDENTITY_LINES = 64  # input lines hashed into the partial file's identity
CHUNK_SIZE = 256  # lines scored between two writes (and fsyncs) of the partial output


class ResumeMismatchError(ValueError):
    """``OUTPUT.partial`` was made from another input or model, or its lines do not match the input."""


def partial_identity(input_path: Path, model: str, checkpoint: str | None, *, chat_template: bool = False,
                     chat_template_kwargs: dict[str, object] | None = None, weights: list[list[object]] | None = None,
                     dtype: str = "float32") -> dict[str, object]:
    """What a partial output depends on: the input (path, size, hash of its first lines), the model (name, checkpoint,
    weight files), the dtype and the encoding."""
    digest = hashlib.sha256()
    with input_path.open("rb") as fp:
        for _, line in zip(range(IDENTITY_LINES), fp):
            digest.update(line)
    return {"input": str(input_path.resolve()), "input_bytes": input_path.stat().st_size,
            "input_head_sha256": digest.hexdigest(), "model": model, "checkpoint": checkpoint,
            "weights": weights or [], "dtype": dtype,
            "chat_template": {"enabled": chat_template, "kwargs": chat_template_kwargs or {}}}


def weight_files(context: object, model_name: str) -> list[list[object]]:
    """[path, bytes, modification time (ns)] of every file of the checkpoint of card ``model_name`` (a file, or the
    files of a directory): other weights under the same name, or a checkpoint written again, differ here."""
    from urllib.parse import unquote, urlparse

    from fairseq2.assets import AssetCardError, AssetCardNotFoundError

    try:
        uri = context.asset_store.retrieve_card(model_name).field("checkpoint").as_uri()  # type: ignore[attr-defined]
    except (AssetCardError, AssetCardNotFoundError):
        return []
    parsed = urlparse(uri)
    if parsed.scheme != "file":
        return [[uri, None, None]]  # a hub repository: its name and revision are all we know before downloading
    path = Path(unquote(parsed.path))
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path] if path.exists() else []
    return [[str(p), p.stat().st_size, p.stat().st_mtime_ns] for p in files]


def resume_point(partial: Path, meta_path: Path, expected: dict[str, object], examples: list[dict[str, object]]
                 ) -> int:
    """How many lines of ``partial`` to keep: all of its complete lines when it was made from ``expected`` and each
    is its input line plus the two scores; otherwise 0, after removing it with a message saying why."""
    if not partial.exists():
        return 0
    try:
        recorded = json.loads(meta_path.read_text(encoding="utf-8"))
        differ = [key for key in expected if recorded.get(key) != expected[key]]
        why = (f"it was made from another input or model ({'; '.join(differ)} differ{'s' if len(differ) == 1 else ''})"
               if differ else None)
    except FileNotFoundError:
        why = f"it has no record of what it was made from ({meta_path} is missing)"
    except (ValueError, AttributeError) as ex:
        why = f"its record {meta_path} is not a JSON object ({ex})"
    if why is None:
        done = len(complete_lines(partial))  # a line torn by a kill is cut off
        try:
            if done > len(examples):
                raise ResumeMismatchError(f"it has {done} lines, the input only {len(examples)}")
            check_resumed_lines(partial, examples, done)
            return done
        except ResumeMismatchError as ex:
            why = str(ex)
    print(f"fspo-score-reference: not resuming {partial}: {why}; scoring from the start.", file=sys.stderr)
    partial.unlink()
    meta_path.unlink(missing_ok=True)
    return 0


def check_resumed_lines(partial: Path, examples: list[dict[str, object]], done: int) -> None:
    """Every one of the ``done`` lines of ``partial`` must be the matching input record plus its two scores."""
    if done == 0:
        return
    with partial.open(encoding="utf-8") as fp:
        for lineno, (line, example) in enumerate(zip(fp, examples[:done]), 1):
            try:
                record = json.loads(line)
            except json.JSONDecodeError as ex:
                raise ResumeMismatchError(f"line {lineno} is not valid JSON ({ex.msg})") from None
            stripped = {k: v for k, v in record.items() if k not in SCORE_KEYS} if isinstance(record, dict) else None
            if stripped != {k: v for k, v in example.items() if k not in SCORE_KEYS}:
                theirs = record.get("id") if isinstance(record, dict) else None
                raise ResumeMismatchError(f"its line {lineno} is not line {lineno} of the input plus scores (id "
                                          f"{theirs!r} vs {example.get('id')!r})")


SCORE_KEYS = ("reference_score_chosen", "reference_score_rejected")


def score_reference(
    model_name: str,
    input_path: Path,
    output_path: Path,
    *,
    batch_size: int = 8,
    chunk_size: int | None = None,
    dtype: torch.dtype = torch.float32,
    device: str | None = None,
    assets_dir: Path | None = None,
    run_dir: Path | None = None,
    progress: bool = True,
    chat_template: bool = False,
    chat_template_kwargs: dict[str, object] | None = None,
    overwrite: bool = False,
) -> int:
    """Score every line of ``input_path`` with ``model_name`` (or the last checkpoint of the training run
    ``run_dir``, as stage 2's ``last_checkpoint@`` reference); return the number of lines written. With
    ``chat_template`` the pairs are encoded with the model's chat template, as training with
    ``dataset.extras.chat_template=true`` encodes them. An existing ``output_path`` is replaced only with
    ``overwrite`` (see :func:`check_output_path`)."""
    from fairseq2 import setup_fairseq2
    from fairseq2.context import get_runtime_context
    from fairseq2.data.text.tokenizers import get_text_tokenizer_hub
    from fairseq2.gang import fake_gangs
    from fairseq2.models.decoder import DecoderModel
    from fairseq2.recipes.common import load_reference_model

    setup_fairseq2()
    context = get_runtime_context()
    check_output_path(output_path, input_path, overwrite=overwrite)
    with OutputLock(output_path, "fspo-score-reference", directory=False):
        check_output_path(output_path, input_path, overwrite=overwrite)  # again, now that no other run writes it
        if assets_dir is not None:
            add_card_directory(context, assets_dir)
        checkpoint = None
        if run_dir is not None:
            steps = register_run(context, run_dir, "reference", known=assets_dir)  # type: ignore[arg-type]
            model_name = steps[max(steps)]
            checkpoint = str((run_dir / "checkpoints" / f"step_{max(steps)}").resolve())

        examples = [record for _, record in read_preference_jsonl(input_path)]  # as in the file; bad lines named
        partial = output_path.with_name(output_path.name + ".partial")
        meta = output_path.with_name(output_path.name + ".partial.json")
        identity = partial_identity(input_path, model_name, checkpoint, chat_template=chat_template,
                                    chat_template_kwargs=chat_template_kwargs,
                                    weights=weight_files(context, model_name), dtype=str(dtype).removeprefix("torch."))
        done = resume_point(partial, meta, identity, examples)
        if done == 0:
            with atomic_file(meta) as fp:
                json.dump(identity, fp, indent=1)

        torch_device = default_device(device)
        with packed_model_families(context):
            model = load_reference_model(DecoderModel, context, model_name, fake_gangs(torch_device), dtype, mp=False)
        model.eval()
        tokenizer = get_text_tokenizer_hub().load(model_name)
        encoder = PairEncoder(tokenizer, chat_template=chat_template, chat_kwargs=chat_template_kwargs)

        with partial.open("ab") as fp, ProgressBar(progress, "reference scores", len(examples)) as tick:
            tick(done)
            chunk_size = chunk_size or CHUNK_SIZE
            for start in range(done, len(examples), chunk_size):
                chunk = examples[start : start + chunk_size]
                pairs = encode_pairs(tokenizer, [e["src"] for e in chunk], [e["tgt_chosen"] for e in chunk],
                                     [e["tgt_rejected"] for e in chunk], encoder, [e.get("messages") for e in chunk])
                scores = score_pairs(model, pairs, batch_size=batch_size, device=torch_device)
                for record, c, r in zip(chunk, scores.chosen.tolist(), scores.rejected.tolist()):
                    record = {**record, "reference_score_chosen": c, "reference_score_rejected": r}
                    fp.write((json.dumps(record, ensure_ascii=False) + "\n").encode())
                fp.flush()
                os.fsync(fp.fileno())
                tick(len(chunk))
        os.replace(partial, output_path)
        meta.unlink(missing_ok=True)
    return len(examples)


def _scored(path: Path) -> bool:
    """Whether the first line of ``path`` holds reference scores (a file this command wrote)."""
    with path.open("rb") as fp:
        first = next((line for line in fp if line.strip()), b"")
    try:
        record = json.loads(first)
    except ValueError:
        return False
    return isinstance(record, dict) and all(k in record for k in SCORE_KEYS)


def check_output_path(output_path: Path, input_path: Path, *, overwrite: bool = False) -> None:
    """Refuse, before any work, an ``--output`` that cannot be written as a file, is the input, or exists (without
    ``overwrite``, or holding something else than reference scores)."""
    if output_path.is_dir():
        raise ValueError(f"--output {output_path} is a directory; name the JSONL file to write.")
    if not output_path.parent.is_dir():
        raise ValueError(f"--output {output_path}: the directory {output_path.parent} does not exist.")
    if output_path.resolve() == input_path.resolve() or (output_path.exists() and input_path.exists()
                                                          and output_path.samefile(input_path)):
        raise ValueError(f"--output {output_path} is the --input: choose another file (the input is never replaced).")
    if output_path.exists():
        if not overwrite:
            raise ValueError(f"--output {output_path} exists; pass --overwrite to replace it (only a file of reference "
                             "scores is replaced).")
        if not _scored(output_path):
            raise ValueError(f"--output {output_path} exists and holds no reference scores (not written by "
                             "fspo-score-reference); not replacing it. Choose another --output.")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fspo-score-reference", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--model", help="asset card name of the reference model")
    which.add_argument("--run-dir", type=Path, help="a training run's output directory: its last checkpoint")
    parser.add_argument("--input", type=Path, required=True, help="a prepared split (JSONL)")
    parser.add_argument("--output", type=Path, required=True, help="the JSONL to write (resumes OUTPUT.partial)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing OUTPUT of reference scores (never the input, nothing else)")
    parser.add_argument("--batch-size", type=int, default=8, help="pairs per forward (default: 8)")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32")
    parser.add_argument("--device", default=None, help="cpu, cuda, ... (default: CUDA when present)")
    parser.add_argument("--assets-dir", type=Path, default=None, help="extra fairseq2 card directory")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--chat-template", action="store_true",
                        help="encode with the model's chat template (as training with dataset.extras.chat_template)")
    parser.add_argument("--chat-template-kwargs", type=json.loads, default={}, metavar="JSON",
                        help='variables of the chat template, e.g. \'{"enable_thinking": false}\'')
    args = parser.parse_args(argv)

    def body() -> int:
        n = score_reference(args.model or "", args.input, args.output, batch_size=args.batch_size,
                            dtype=getattr(torch, args.dtype), device=args.device, assets_dir=args.assets_dir,
                            run_dir=args.run_dir, progress=not args.no_progress, chat_template=args.chat_template,
                            chat_template_kwargs=args.chat_template_kwargs, overwrite=args.overwrite)
        print(f"wrote {n} scored examples to {args.output}")
        return 0

    def describe(ex: BaseException) -> str:
        if not isinstance(ex, load_error_types()):
            return str(ex)
        text = describe_load_error(ex)
        hint = (" The model's or tokenizer's card is not known: pass --assets-dir with the directory of its card."
                if "not a known" in text or "cannot be found" in text else "")
        return f"{text}.{hint}"

    return run_command("fspo-score-reference", body, {(ValueError, OSError, OutputInUseError): 1,
                                                      load_error_types(): 1}, describe)


if __name__ == "__main__":
    raise SystemExit(main())
