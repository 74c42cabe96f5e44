"""``fspo-generate``: answers of a model for held-out users' questions, outside fairseq2, for ``fspo-judge``.

    fspo-generate OUT --data elix_test --model EXPORT_DIR                       # transformers, local (CPU or GPU)
    fspo-generate OUT --data elix_test --backend openai --base-url http://localhost:8000/v1 --model NAME
                                                                                # vllm serve EXPORT_DIR, SGLang, ...

Each prompt is the one ``preference_eval``'s generation builds: the example's FSPO prompt with its shots (or its
first ``--shots k``), as it is or, with ``--chat-template`` (``preference_eval``'s ``chat_template=true``: use the
setting the model was trained with), as the user turn of the model's chat template, for the queries
``--max-examples`` picks in turn from each user. The openai backend sends a chat template's prompt to the chat
endpoint (the server renders the template) and a plain prompt to the completions endpoint. OUT/generations.jsonl has ``preference_eval``'s fields (``id``, ``user``, ``question``,
``response``, ``generated``, ``system``, ...), so ``fspo-judge`` reads both; OUT/generation.json records the backend,
the model, the sampling settings and the counts. Answers are appended as they arrive: a killed run started again
with the same command sends only the prompts not yet answered (other settings are refused: a new OUT).

Backends: ``transformers`` (``--model``: a Hugging Face directory such as ``fspo-export-hf``'s; batched, left
padding, stopping at the ids of its ``generation_config.json``) and ``openai`` (any OpenAI-compatible server,
through the client ``fspo-judge`` uses: concurrency, timeouts, retries with backoff). Greedy by default;
``--temperature``/``--top-p``/``--seed`` sample.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from fspo_recipe.cli import run_command
from fspo_recipe.eval.config import EvalError
from fspo_recipe.eval.generation import answer_record, generation_prompts, length_batches, spread_over_users
from fspo_recipe.files import atomic_file, complete_lines
from fspo_recipe.lock import OutputInUseError, OutputLock
from fspo_recipe.openai_client import (ClientInputError, ClientSettings, OpenAIClient, Reply, ServerRefusedError,
                                       api_key_from_env)
from fspo_recipe.progress import ProgressBar


@dataclass(frozen=True)
class Sampling:
    greedy: bool = True
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 256
    seed: int = 0


@dataclass(frozen=True)
class Prompt:
    example: Mapping[str, Any]
    text: str
    question: str
    shots: int | None


def load_prompts(data: str, assets_dir: Path | None, shots: int | None, max_examples: int | None) -> list[Prompt]:
    """The queries to answer: a prepared split (file or card), spread over users as ``preference_eval`` does."""
    from fspo_recipe.eval.data import dataset_file, read_examples

    path = Path(data)
    if not path.is_file():
        from fairseq2 import setup_fairseq2
        from fairseq2.context import get_runtime_context

        from fspo_recipe.assets import add_card_directory

        setup_fairseq2()
        context = get_runtime_context()
        if assets_dir is not None:
            add_card_directory(context, assets_dir)
        path = dataset_file(context, data)
    examples = spread_over_users(read_examples(path, None), max_examples)
    texts, questions, counts = generation_prompts(examples, shots)
    return [Prompt(e, t, q, k) for e, t, q, k in zip(examples, texts, questions, counts)]


class TransformersBackend:
    """Local generation with transformers' ``generate`` on a Hugging Face directory."""

    def __init__(self, model_dir: Path, *, chat_template: bool, device: str | None, dtype: str, batch_size: int
                 ) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if not (model_dir / "config.json").is_file():
            raise EvalError(f"--model {model_dir}: no config.json (expected a Hugging Face directory, such as "
                            "fspo-export-hf writes).")
        if not (model_dir / "tokenizer.json").is_file():
            raise EvalError(f"--model {model_dir}: no tokenizer.json (an export of a model whose tokenizer is not a "
                            "Hugging Face one); copy the base model's tokenizer files into it.")
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        if chat_template and not self.tokenizer.chat_template:
            raise EvalError(f"--model {model_dir}: its tokenizer has no chat template; leave out --chat-template.")
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, dtype)).to(self.device)
        self.model.eval()
        self.chat_template = chat_template
        self.batch_size = batch_size
        config = self.model.generation_config
        ends = config.eos_token_id if isinstance(config.eos_token_id, list) else [config.eos_token_id]
        self.stop = [i for i in ends if i is not None]
        if not self.stop:
            raise EvalError(f"--model {model_dir}: no eos_token_id in its generation_config.json; it cannot stop.")
        self.pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.stop[0]

    def ids(self, text: str) -> list[int]:
        if self.chat_template:
            return list(self.tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=True,
                                                           add_generation_prompt=True, return_dict=True)["input_ids"])
        return list(self.tokenizer(text)["input_ids"])

    def generate(self, prompts: Sequence[Prompt], sampling: Sampling,
                 done: Callable[[int, str, int, bool | None], None]) -> None:
        import torch

        torch.manual_seed(sampling.seed)
        encoded = [self.ids(p.text) for p in prompts]
        context = getattr(self.model.config, "max_position_embeddings", None)
        if context:  # before any work: such a prompt would run for minutes and answer nonsense
            long = [(p.example["id"], len(e)) for p, e in zip(prompts, encoded)
                    if len(e) + sampling.max_new_tokens > context]
            if long:
                raise EvalError(
                    f"{len(long)} prompt(s) with their {sampling.max_new_tokens} new tokens exceed the model's context "
                    f"of {context} tokens (e.g. {long[0][0]!r}: {long[0][1]} prompt tokens); give fewer shots (--shots "
                    "K) or fewer --max-new-tokens.")
        for rows in length_batches([len(e) for e in encoded], self.batch_size):
            batch = [encoded[i] for i in rows]
            width = max(map(len, batch))
            seqs = torch.tensor([[self.pad] * (width - len(b)) + b for b in batch], device=self.device)
            mask = torch.tensor([[0] * (width - len(b)) + [1] * len(b) for b in batch], device=self.device)
            options: dict[str, Any] = {"do_sample": False} if sampling.greedy else {
                "do_sample": True, "temperature": sampling.temperature, "top_p": sampling.top_p, "top_k": 0}
            with torch.no_grad():
                out = self.model.generate(input_ids=seqs, attention_mask=mask, max_new_tokens=sampling.max_new_tokens,
                                          eos_token_id=self.stop, pad_token_id=self.pad, **options)
            for i, row in zip(rows, out[:, width:].tolist()):
                end = next((j for j, t in enumerate(row) if t in self.stop), None)
                ids = row[:end]
                done(i, self.tokenizer.decode(ids, skip_special_tokens=True), len(ids), end is not None)


class OpenAIBackend:
    """Generation by an OpenAI-compatible server, through the client ``fspo-judge`` uses."""

    def __init__(self, settings: ClientSettings, api_key: str, model: str, *, chat_template: bool) -> None:
        self.client = OpenAIClient(settings, api_key)
        self.model = model
        self.api = "chat" if chat_template else "completions"

    def body(self, prompt: Prompt, sampling: Sampling) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self.model, "max_tokens": sampling.max_new_tokens, "seed": sampling.seed,
                                "temperature": 0.0 if sampling.greedy else sampling.temperature}
        if not sampling.greedy:
            body["top_p"] = sampling.top_p
        if self.api == "chat":
            body["messages"] = [{"role": "user", "content": prompt.text}]
        else:
            body["prompt"] = prompt.text
        return body

    def generate(self, prompts: Sequence[Prompt], sampling: Sampling,
                 done: Callable[[int, str, int, bool | None], None]) -> None:
        failed: list[str] = []

        def finished(index: int, reply: Reply) -> None:
            if reply.error is not None or reply.text is None:
                failed.append(f"{prompts[index].example['id']}: {reply.error}")
                return
            done(index, reply.text, -1, None)  # whether the server stopped early is not known here

        self.client.run_all([(self.api, self.body(p, sampling)) for p in prompts], finished)  # type: ignore[misc]
        if failed:
            raise EvalError(f"{len(failed)} prompt(s) got no answer (e.g. {failed[0]}); the answered ones are "
                            "saved: run the same command again to send the rest.")


def settings_record(args: argparse.Namespace, sampling: Sampling, chat_template: bool) -> dict[str, Any]:
    """What the answers depend on; a resume with anything else is refused. For the transformers backend that
    includes the model directory's files (name, size, modification time): an export written again at the same path
    is another model."""
    record = {"backend": args.backend, "model": str(args.model), "base_url": args.base_url, "data": args.data,
              "shots": args.shots, "max_examples": args.max_examples, "chat_template": chat_template,
              "system": args.system, "sampling": asdict(sampling), "dtype": args.dtype}
    if args.backend == "transformers":
        record["model_files"] = model_files(Path(args.model))
    return record


def model_files(directory: Path) -> dict[str, list[int]]:
    """{file name: [size, modification time in ns]} of the files of a model directory (weights, config, tokenizer)."""
    if not directory.is_dir():
        return {}
    return {p.name: [p.stat().st_size, p.stat().st_mtime_ns] for p in sorted(directory.iterdir()) if p.is_file()}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fspo-generate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path, help="output directory (generations.jsonl, generation.json)")
    parser.add_argument("--data", required=True, help="a prepared split: a JSONL file or a data set card name")
    parser.add_argument("--assets-dir", type=Path, help="extra fairseq2 card directory (for a card name)")
    parser.add_argument("--backend", choices=("transformers", "openai"), default="transformers")
    parser.add_argument("--model", required=True,
                        help="transformers: a Hugging Face directory; openai: the model's name on the server")
    parser.add_argument("--system", help="the name in each record's system field (default: the model's name)")
    parser.add_argument("--shots", type=int, help="render each prompt with its first k shots (default: as the data)")
    parser.add_argument("--max-examples", type=int, help="queries to answer, taken in turn from each user "
                        "(default: all)")
    parser.add_argument("--chat-template", action="store_true",
                        help="the prompt as the user turn of the model's chat template (as preference_eval's "
                        "chat_template=true; use what the model was trained with)")
    sampling = parser.add_argument_group("sampling (greedy unless --temperature is given)")
    sampling.add_argument("--max-new-tokens", type=int, default=256)
    sampling.add_argument("--temperature", type=float, help="sample at this temperature instead of greedy decoding")
    sampling.add_argument("--top-p", type=float, default=1.0)
    sampling.add_argument("--seed", type=int, default=0)
    local = parser.add_argument_group("transformers backend")
    local.add_argument("--device", help="cpu, cuda, ... (default: CUDA when present)")
    local.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32")
    local.add_argument("--batch-size", type=int, default=8)
    server = parser.add_argument_group("openai backend")
    server.add_argument("--base-url", help="the server's /v1 address, e.g. http://localhost:8000/v1")
    server.add_argument("--api-key-env", default="OPENAI_API_KEY", help="environment variable of the API key")
    server.add_argument("--concurrency", type=int, default=8)
    server.add_argument("--timeout", type=float, default=120.0, help="seconds per request")
    server.add_argument("--max-retries", type=int, default=6)
    server.add_argument("--backoff", type=float, default=1.0, help="first retry wait in seconds, doubling")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    for name in ("max_new_tokens", "batch_size", "concurrency"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.shots is not None and args.shots < 0:
        parser.error("--shots must be >= 0")
    plan = Sampling(greedy=args.temperature is None, temperature=args.temperature or 1.0, top_p=args.top_p,
                    max_new_tokens=args.max_new_tokens, seed=args.seed)
    chat_template = args.chat_template
    system = args.system or Path(str(args.model)).name

    def body() -> int:
        out: Path = args.out
        if out.exists() and not out.is_dir():
            raise EvalError(f"{out} is a file, not a directory.")
        with OutputLock(out, "fspo-generate"):
            record = settings_record(args, plan, chat_template)
            meta, answers = out / "generation.json", out / "generations.jsonl"
            if meta.is_file():
                before = json.loads(meta.read_text(encoding="utf-8")).get("settings")
                if before != record:
                    changed = sorted(k for k in record if (before or {}).get(k) != record[k])
                    what = ("another model at the same path (its files changed)" if changed == ["model_files"]
                            else f"other settings ({', '.join(changed)})")
                    raise EvalError(f"{out} holds answers made with {what}; give another output directory, or "
                                    "remove it to start over.")
            elif answers.exists():
                raise EvalError(f"{answers} exists without its generation.json: not written by fspo-generate; "
                                "give another output directory.")
            prompts = load_prompts(args.data, args.assets_dir, args.shots, args.max_examples)
            done_ids = {json.loads(line)["id"] for line in complete_lines(answers)}
            todo = [p for p in prompts if p.example["id"] not in done_ids]
            if args.backend == "transformers":
                backend: Any = TransformersBackend(Path(args.model), chat_template=chat_template, device=args.device,
                                                   dtype=args.dtype, batch_size=args.batch_size)
            else:
                settings = ClientSettings(args.base_url, args.concurrency, args.timeout, args.max_retries, 0,
                                          args.backoff)
                backend = OpenAIBackend(settings, api_key_from_env(args.api_key_env, args.base_url), args.model,
                                        chat_template=chat_template)
            # The settings go in before the first answer: a later start of the same command resumes, another refuses.
            with atomic_file(meta) as fp:
                fp.write(json.dumps({"settings": record, "prompts": len(prompts)}, indent=1) + "\n")
            started, tokens = time.time(), 0
            with answers.open("a", encoding="utf-8") as fp, \
                    ProgressBar(not args.no_progress, f"answering ({system})", len(todo)) as tick:
                def write(index: int, text: str, count: int, ended: bool | None) -> None:
                    nonlocal tokens
                    p = todo[index]
                    rec = answer_record(p.example, question=p.question, shots=p.shots, system=system,
                                        prompt=p.text, generated=text, tokens=count if count >= 0 else None,
                                        ended=ended)
                    fp.write(json.dumps(rec, ensure_ascii=False) + "\n")
                    fp.flush()
                    tokens += max(count, 0)
                    tick(1)

                backend.generate(todo, plan, write)
            seconds = time.time() - started
            usage = backend.client.usage if isinstance(backend, OpenAIBackend) else None
            if usage is not None:
                tokens = usage.completion_tokens
            summary = {"settings": record, "prompts": len(prompts), "answered_before": len(prompts) - len(todo),
                       "answered_now": len(todo), "new_tokens": tokens, "seconds": round(seconds, 2),
                       **({"usage": asdict(usage)} if usage is not None else {})}
            with atomic_file(meta) as fp:
                fp.write(json.dumps(summary, indent=1) + "\n")
        rate = f", {len(todo) / seconds:.2f} answers/s" if todo and seconds > 0 else ""
        print(f"wrote {answers}: {len(todo)} new answer(s), {len(prompts) - len(todo)} from before, {tokens} new "
              f"tokens{rate}")
        return 0

    return run_command("fspo-generate", body, {(EvalError, ClientInputError, OSError): 2,
                                               (ServerRefusedError, OutputInUseError): 1})


if __name__ == "__main__":
    raise SystemExit(main())


