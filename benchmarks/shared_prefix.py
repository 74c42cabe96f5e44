"""Benchmark of one preference training step on long few-shot prompts: fairseq2's DPO unit versus ours.

    python benchmarks/shared_prefix.py [--sizes 1024x256,2048x256,4096x512] [--pairs 2] [--steps 2]

For each (P, R) = (prompt tokens, tokens per response) it runs, each in a fresh child process (so that peak memory
is its own), forward + backward of a small llama (4 layers, dim 256, vocab 512, fp32, CPU unless CUDA):

  builtin   fairseq2 0.4.6's `dpo` unit: chosen and rejected as separate sequences, live reference model
  paired    our unit, [prompt, response] rows, live reference
  shared    our unit, one [prompt, chosen, rejected] sequence per pair, live reference
  shared+ref  shared, reference log-probs precomputed in the data (no reference forward)

and prints pairs/s, tokens/s (P + 2R data tokens per pair), peak resident memory of the child, each speed ratio
against `builtin`, and the token bound 2(P+R)/(P+2R) of shared over paired.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

VARIANTS = ("builtin", "paired", "shared", "shared+ref")


def child(variant: str, prompt: int, response: int, pairs: int, steps: int) -> dict[str, float]:
    import torch

    from fairseq2.datasets.preference import PreferenceBatch
    from fairseq2.gang import fake_gangs
    from fairseq2.models.llama import LLaMAConfig, LLaMAFactory
    from fairseq2.models.sequence import SequenceBatch
    from fairseq2.recipes.lm._preference_finetune._dpo import DpoFinetuneUnit
    from fairseq2.utils.structured import structure

    from fspo_recipe.criteria import get_criterion
    from fspo_recipe.models.llama import FspoLLaMAFactory
    from fspo_recipe.models.tiny import TinyModelSpec
    from fspo_recipe.train.unit import FspoFinetuneUnit

    torch.manual_seed(0)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    spec = TinyModelSpec(model_dim=256, num_layers=4, num_attn_heads=4, num_key_value_heads=4, ffn_inner_dim=1024,
                         max_seq_len=prompt + 2 * response + 8)
    config = structure(spec.model_config(), LLaMAConfig)
    # fairseq2's unit gets fairseq2's model; ours the model FSPO's commands load (the packed-pairs subclasses).
    factory = LLaMAFactory if variant == "builtin" else FspoLLaMAFactory
    model = factory(config).create_model().to(device).train()
    reference = factory(config).create_model().to(device).eval().requires_grad_(False)
    gangs = fake_gangs(device)

    def side(prompt_ids: torch.Tensor, resp: torch.Tensor, scores: list[float | None]) -> SequenceBatch:
        seqs = torch.cat([prompt_ids, resp], dim=1).to(device)
        mask = torch.zeros_like(seqs, dtype=torch.bool)
        mask[:, prompt:] = True
        return SequenceBatch(seqs, None, mask, example={"id": list(range(pairs)), "reference_score_chosen": scores,
                                                         "reference_score_rejected": scores})

    prompt_ids = torch.randint(0, 256, (pairs, prompt))
    chosen = torch.randint(0, 256, (pairs, response))
    rejected = torch.randint(0, 256, (pairs, response))
    scores = [-float(response) * 5.0] * pairs if variant == "shared+ref" else [None] * pairs
    batch = PreferenceBatch(side(prompt_ids, chosen, scores), side(prompt_ids, rejected, scores), None, None)

    if variant == "builtin":
        unit = DpoFinetuneUnit(model, reference, gangs, beta=0.1, nll_scale=0.0)
    else:
        unit = FspoFinetuneUnit(model, None if variant == "shared+ref" else reference, get_criterion("dpo"), gangs,
                                shared_prefix=variant != "paired")

    def step() -> None:
        loss, n = unit(batch)
        (loss / n).backward()
        model.zero_grad(set_to_none=True)

    step()  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / steps
    peak = (torch.cuda.max_memory_allocated() if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    return {"seconds": seconds, "peak_bytes": float(peak), "device": device.type}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1024x256,2048x256,4096x512", help="PxR,... (default: the issue's three)")
    parser.add_argument("--pairs", type=int, default=2, help="pairs per step (default: 2)")
    parser.add_argument("--steps", type=int, default=2, help="timed steps after one warm-up (default: 2)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        variant, p, r = args.child.split(":")
        print(json.dumps(child(variant, int(p), int(r), args.pairs, args.steps)))
        return 0

    sizes = [tuple(int(x) for x in s.split("x")) for s in args.sizes.split(",")]
    header = f"{'P':>5} {'R':>4} {'variant':<11} {'s/step':>7} {'pairs/s':>8} {'tokens/s':>9} {'peak MB':>8} {'vs builtin':>10}"
    print(f"one training step, {args.pairs} pairs, 4-layer dim-256 llama, fp32; peak = child RSS on CPU, allocated on CUDA")
    print(header)
    for p, r in sizes:
        results = {}
        for variant in VARIANTS:
            proc = subprocess.run([sys.executable, __file__, "--child", f"{variant}:{p}:{r}", "--pairs", str(args.pairs),
                                   "--steps", str(args.steps)], capture_output=True, text=True)
            if proc.returncode != 0:
                print(proc.stderr[-2000:], file=sys.stderr)
                return 1
            results[variant] = json.loads(proc.stdout.strip().splitlines()[-1])
        base = results["builtin"]["seconds"]
        for variant, res in results.items():
            s = res["seconds"]
            print(f"{p:>5} {r:>4} {variant:<11} {s:>7.2f} {args.pairs / s:>8.2f} {args.pairs * (p + 2 * r) / s:>9.0f} "
                  f"{res['peak_bytes'] / 2**20:>8.0f} {base / s:>9.2f}x")
        bound = 2 * (p + r) / (p + 2 * r)
        print(f"{'':>11} shared/paired {results['paired']['seconds'] / results['shared']['seconds']:.2f}x "
              f"(token bound {bound:.2f}x); shared+ref/builtin {base / results['shared+ref']['seconds']:.2f}x; "
              f"peak shared/paired {results['shared']['peak_bytes'] / results['paired']['peak_bytes']:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
