"""Benchmark of one preference training step on long few-shot prompts: fairseq2's DPO unit versus ours.

    python benchmarks/shared_prefix.py [--sizes 1024x256,2048x256,4096x512] [--pairs 2] [--steps 2] [--warmup 1]
        [--arch 1b|3b | --model-dim 256 --layers 4 --heads 4 --kv-heads 4 --ffn 1024 --vocab 512] [--dtype float32]
        [--ckpt] [--compile] [--optim] [--variants builtin,paired,shared,shared+ref] [--against REV] [--profile]

For each (P, R) = (prompt tokens, tokens per response) it runs, each in a fresh child process (so that peak memory
is its own), forward + backward of a random llama (by default the small CPU shape: 4 layers, dim 256, vocab 512,
fp32; `--arch 1b` / `--arch 3b` are the Llama 3.2 shapes in bfloat16, for a GPU), on CUDA when there is one:

  builtin     fairseq2 0.4.6's `dpo` unit: chosen and rejected as separate sequences, live reference model
  paired      our unit, [prompt, response] rows, live reference
  shared      our unit, one [prompt, chosen, rejected] sequence per pair, live reference
  shared+ref  shared, reference log-probs precomputed in the data (no reference forward)

and prints the median s/step (wall) of `--steps` timed steps, CPU s/step (process time: on a shared virtual
machine the steadier figure), pairs/s, tokens/s (P + 2R data tokens per pair), peak memory (child RSS on CPU,
allocated on CUDA), each speed ratio against `builtin`, and shared over paired against the token bound
2(P+R)/(P+2R).

`--ckpt`: layerwise activation checkpointing; `--compile`: our variants with `criterion.config.compile_layers`
(norms, feed-forward blocks, projections and rotary compiled; the warm-up steps compile); `--optim`: each step
also updates the weights (AdamW, fused on CUDA). `--against REV` also runs our variants with the package as it was
at git revision REV (a temporary worktree on PYTHONPATH; revisions from before the stage packages work too) and
prints each speed ratio against it: today's code against a baseline in one run. `--profile` profiles one more
step of each variant and prints the split of its operator time (self time, CPU or CUDA): matmul, attention,
everything else.

On a GPU machine whose image cannot install fairseq2 0.4.6 (torch 2.11, no package index), ../shared/gpu's
run.sh provides the environment (fairseq2's pure-Python wheels, a stand-in for its native half); its own
fspo_gpu.py imports this package's module layout from before the stage packages, so measure today's code with
this script through it, with the settings of its table (median of 5 steps after 2, AdamW):

    cp benchmarks/shared_prefix.py .gpu/ && bash .gpu/run.sh shared_prefix.py --arch 1b --sizes 4096x512 \
        --pairs 4 --ckpt --optim --steps 5 --warmup 2 --profile [--compile]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

VARIANTS = ("builtin", "paired", "shared", "shared+ref")
ARCHS = {  # (model dim, layers, heads, key/value heads, feed-forward width, vocabulary): Llama 3.2's shapes
    "1b": (2048, 16, 32, 8, 8192, 128256),
    "3b": (3072, 28, 24, 8, 8192, 128256),
}
ROOT = Path(__file__).resolve().parents[1]

MATMUL_OPS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul", "aten::linear", "aten::_scaled_mm")
ATTENTION_MARKERS = ("scaled_dot_product", "flash", "attention", "cudnn_attention", "efficient_attention")


def classify(name: str) -> str:
    """matmul / attention / other for a profiler event name."""
    if name in MATMUL_OPS or "gemm" in name.lower() or name.startswith("aten::mm"):
        return "matmul"
    if any(marker in name.lower() for marker in ATTENTION_MARKERS):
        return "attention"
    return "other"


def profile_split(step: object, device_type: str) -> dict[str, float]:
    """Fractions of operator self time (CUDA kernels on a GPU, CPU operators otherwise) per class, of one step."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device_type == "cuda" else [])
    with profile(activities=activities) as prof:
        step()  # type: ignore[operator]
    totals = {"matmul": 0.0, "attention": 0.0, "other": 0.0}
    for event in prof.key_averages():
        if device_type == "cuda":
            value = float(getattr(event, "self_device_time_total", 0.0) or getattr(event, "self_cuda_time_total", 0.0))
        else:
            # Leaf operators only (aten::*), so that no time counts twice under its caller.
            value = float(event.self_cpu_time_total) if event.key.startswith("aten::") else 0.0
        totals[classify(event.key)] += value
    whole = sum(totals.values()) or 1.0
    return {k: v / whole for k, v in totals.items()}


class _FamilyFactory:
    """A factory of one family's FSPO model for one configuration (the benchmark's ``factory(config)`` shape)."""

    def __init__(self, family: object, config: object) -> None:
        self._family, self._config = family, config

    def create_model(self) -> object:
        return self._family.create_model(self._config)  # type: ignore[attr-defined]


def card_model(card: dict, max_seq_len: int, *, builtin: bool) -> tuple[object, object]:
    """(configuration, factory) of the model an asset card describes; random weights (speed and memory do not
    depend on them). ``builtin``: fairseq2's own factory of the family when fairseq2 has the family."""
    import functools

    from fairseq2.models.llama import LLaMAFactory
    from fairseq2.models.mistral import MistralFactory
    from fairseq2.utils.structured import structure

    from fspo_recipe.models.families import model_family

    family = model_family(card["model_family"])
    config = structure({**card["model_config"]["_set_"], "max_seq_len": max_seq_len}, family.config_kls)
    fairseq2s = {"llama": LLaMAFactory, "mistral": MistralFactory}.get(family.name)
    if builtin and fairseq2s is not None:
        return config, fairseq2s
    return config, functools.partial(_FamilyFactory, family)


def card_shape(card: dict) -> str:
    c = card["model_config"]["_set_"]
    return (f"{card['name']} ({card['model_family']}: {c['num_layers']} layers, dim {c['model_dim']}, "
            f"{c['num_attn_heads']} heads, {c['num_key_value_heads']} kv, vocab {c['vocab_info']['size']}; random "
            "weights)")


def child(variant: str, prompt: int, response: int, args: argparse.Namespace) -> dict[str, object]:
    import torch

    from fairseq2.datasets.preference import PreferenceBatch
    from fairseq2.gang import fake_gangs
    from fairseq2.models.llama import LLaMAConfig, LLaMAFactory
    from fairseq2.models.sequence import SequenceBatch
    from fairseq2.nn.checkpointing import use_layerwise_activation_checkpointing
    from fairseq2.recipes.lm._preference_finetune._dpo import DpoFinetuneUnit
    from fairseq2.utils.structured import structure

    import fspo_recipe
    from fspo_recipe.criteria import get_criterion

    # Asked of the imported package's files, not by trying imports: the editable install's finder would serve a
    # missing module from the checkout instead of the baseline.
    if (Path(fspo_recipe.__file__).parent / "train").is_dir():
        from fspo_recipe.models.llama import FspoLLaMAFactory
        from fspo_recipe.train.unit import FspoFinetuneUnit
    else:  # a baseline from before the stage packages (7567a99): its unit took fairseq2's own model
        from fspo_recipe.unit import FspoFinetuneUnit  # type: ignore[no-redef]

        FspoLLaMAFactory = LLaMAFactory  # type: ignore[misc]

    torch.manual_seed(0)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = getattr(torch, args.dtype)
    config = structure({
        "model_dim": args.model_dim, "max_seq_len": prompt + 2 * response + 8, "num_layers": args.layers,
        "num_attn_heads": args.heads, "num_key_value_heads": args.kv_heads,
        "ffn_inner_dim": args.ffn or 4 * args.model_dim, "ffn_inner_dim_scale": 1.0, "ffn_inner_dim_multiplier": 1.0,
        "ffn_inner_dim_to_multiple": 1, "dropout_p": 0.0,
        "vocab_info": {"size": args.vocab, "unk_idx": None, "bos_idx": 1, "eos_idx": 2, "pad_idx": 0},
    }, LLaMAConfig)
    # fairseq2's unit gets fairseq2's model; ours the model FSPO's commands load (the packed-pairs subclasses).
    factory = LLaMAFactory if variant == "builtin" else FspoLLaMAFactory
    if args.card:  # the shape of an asset card, any family (fairseq2's own model for `builtin` where it has one)
        config, factory = card_model(args.card_data, prompt + 2 * response + 8, builtin=variant == "builtin")
    # Built as fairseq2's model handler builds a model: under its dtype as the default (the rotary tables ask for
    # float32 themselves) and where it runs (a 1B model takes seconds on a GPU, a minute on the host).
    default_dtype = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with device:
            model = factory(config).create_model().train()
            reference = factory(config).create_model().eval().requires_grad_(False)
    finally:
        torch.set_default_dtype(default_dtype)
    if args.ckpt:
        use_layerwise_activation_checkpointing(model)
    compiled = 0
    if args.compile and variant != "builtin":
        from fspo_recipe.models.transformer import compile_layer_blocks

        compiled = compile_layer_blocks(model) + compile_layer_blocks(reference)
    gangs = fake_gangs(device)

    def side(prompt_ids: torch.Tensor, resp: torch.Tensor, scores: list[float | None]) -> SequenceBatch:
        seqs = torch.cat([prompt_ids, resp], dim=1).to(device)
        mask = torch.zeros_like(seqs, dtype=torch.bool)
        mask[:, prompt:] = True
        return SequenceBatch(seqs, None, mask, example={"id": list(range(args.pairs)),
                                                         "reference_score_chosen": scores,
                                                         "reference_score_rejected": scores})

    low, high = 3, min(args.vocab, 50_000)
    prompt_ids = torch.randint(low, high, (args.pairs, prompt))
    chosen = torch.randint(low, high, (args.pairs, response))
    rejected = torch.randint(low, high, (args.pairs, response))
    scores = [-float(response) * 5.0] * args.pairs if variant == "shared+ref" else [None] * args.pairs
    batch = PreferenceBatch(side(prompt_ids, chosen, scores), side(prompt_ids, rejected, scores), None, None)

    if variant == "builtin":
        unit = DpoFinetuneUnit(model, reference, gangs, beta=0.1, nll_scale=0.0)
    else:
        unit = FspoFinetuneUnit(model, None if variant == "shared+ref" else reference, get_criterion("dpo"), gangs,
                                shared_prefix=variant != "paired")

    optimizer = None
    if args.optim:  # as a training step: AdamW (fused on CUDA), as ../shared/gpu times it
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6, fused=device.type == "cuda")

    def step() -> None:
        loss, n = unit(batch)
        (loss / n).backward()
        if optimizer is not None:
            optimizer.step()
        model.zero_grad(set_to_none=True)

    for _ in range(args.warmup):  # warm-up (and compilation)
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times, cpu_times = [], []
    for _ in range(args.steps):
        start, cpu_start = time.perf_counter(), time.process_time()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
        cpu_times.append(time.process_time() - cpu_start)
    seconds, cpu_seconds = statistics.median(times), statistics.median(cpu_times)
    peak = (torch.cuda.max_memory_allocated() if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    result: dict[str, object] = {"seconds": seconds, "cpu_seconds": cpu_seconds, "peak_bytes": float(peak),
                                 "device": device.type,
                                 "package": str(Path(fspo_recipe.__file__).parent), "compiled": compiled}
    if args.profile:
        result["profile"] = profile_split(step, device.type)
    return result


def worktree(rev: str) -> Path:
    """A temporary checkout of ``rev`` (git worktree, detached), removed at exit."""
    import atexit
    import shutil

    path = Path(tempfile.mkdtemp(prefix="fspo_baseline_")) / "tree"
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(path), rev], check=True)

    def remove() -> None:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(path)], check=False)
        shutil.rmtree(path.parent, ignore_errors=True)

    atexit.register(remove)
    return path


def run_child(variant: str, p: int, r: int, argv: list[str], pythonpath: Path | None) -> dict[str, object] | None:
    env = dict(os.environ)
    if pythonpath is not None:
        env["PYTHONPATH"] = f"{pythonpath}{os.pathsep}{env.get('PYTHONPATH', '')}"
    proc = subprocess.run([sys.executable, __file__, "--child", f"{variant}:{p}:{r}", *argv], capture_output=True,
                          text=True, env=env)
    if proc.returncode != 0:
        tail = proc.stderr[-1500:]
        if "out of memory" in tail.lower():
            return None
        print(tail, file=sys.stderr)
        raise SystemExit(f"benchmark child {variant} {p}x{r} failed")
    return json.loads(proc.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1024x256,2048x256,4096x512", help="PxR,... (default: the issue's three)")
    parser.add_argument("--pairs", type=int, default=2, help="pairs per step (default: 2)")
    parser.add_argument("--steps", type=int, default=2, help="timed steps; the median is reported (default: 2)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps before them (default: 1)")
    parser.add_argument("--arch", default=None, choices=sorted(ARCHS),
                        help="a Llama 3.2 shape (random weights, bfloat16 unless --dtype) instead of the flags below")
    parser.add_argument("--card", default=None, metavar="CARD.yaml",
                        help="the shape of an asset card (e.g. written by fspo-gguf-card or fspo-hf-card), any family "
                        "(random weights) instead of --arch and the flags below")
    parser.add_argument("--model-dim", type=int, default=256, help="model width (default: 256)")
    parser.add_argument("--layers", type=int, default=4, help="decoder layers (default: 4)")
    parser.add_argument("--heads", type=int, default=4, help="attention heads (default: 4)")
    parser.add_argument("--kv-heads", type=int, default=None, help="key/value heads (default: --heads)")
    parser.add_argument("--ffn", type=int, default=None, help="feed-forward inner width (default: 4 x model dim)")
    parser.add_argument("--vocab", type=int, default=512, help="vocabulary size (default: 512)")
    parser.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"],
                        help="weights' dtype (default: float32; bfloat16 with --arch)")
    parser.add_argument("--optim", action="store_true",
                        help="each step also updates the weights (AdamW, fused on CUDA), as ../shared/gpu times it")
    parser.add_argument("--ckpt", action="store_true", help="layerwise activation checkpointing")
    parser.add_argument("--compile", action="store_true", help="our variants with compiled layer blocks")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"subset of {','.join(VARIANTS)}")
    parser.add_argument("--against", default=None, metavar="REV",
                        help="also run our variants with the package at git revision REV; print ratios against it")
    parser.add_argument("--profile", action="store_true", help="print the matmul / attention / other time split")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.arch:
        args.model_dim, args.layers, args.heads, args.kv_heads, args.ffn, args.vocab = ARCHS[args.arch]
    args.card_data = None
    if args.card:  # read once; token ids are drawn from the card's vocabulary
        import yaml

        args.card_data = yaml.safe_load(Path(args.card).read_text())
        args.vocab = args.card_data["model_config"]["_set_"]["vocab_info"]["size"]
    args.dtype = args.dtype or ("bfloat16" if args.arch else "float32")
    args.kv_heads = args.kv_heads or args.heads

    if args.child:
        variant, p, r = args.child.split(":")
        print(json.dumps(child(variant, int(p), int(r), args)))
        return 0

    variants = [v for v in args.variants.split(",") if v]
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        parser.error(f"unknown variants {unknown}; known: {', '.join(VARIANTS)}")
    argv, skip = [], False
    for a in sys.argv[1:]:  # the children's arguments: ours without --against REV
        if not skip and not a.startswith("--against"):
            argv.append(a)
        skip = a == "--against"
    baseline = worktree(args.against) if args.against else None
    sizes = [tuple(int(x) for x in s.split("x")) for s in args.sizes.split(",")]
    model = (card_shape(args.card_data) if args.card else
             f"{args.layers}-layer dim-{args.model_dim} llama ({args.heads} heads, {args.kv_heads} kv, vocab {args.vocab})")
    if args.card and args.against:
        parser.error("--card and --against do not go together (a baseline revision may not read cards)")
    shape = (f"{model}, {args.dtype}{', activation checkpointing' if args.ckpt else ''}"
             f"{', compiled layer blocks' if args.compile else ''}")
    print(f"one training step, {args.pairs} pairs, {shape}; peak = child RSS on CPU, allocated on CUDA")
    head = (f"{'P':>5} {'R':>4} {'variant':<11} {'s/step':>7} {'cpu s':>7} {'pairs/s':>8} {'tokens/s':>9} {'peak MB':>8} "
            f"{'vs builtin':>10}")
    if baseline is not None:
        head += f" {'vs ' + args.against[:10]:>14}"
    if args.profile:
        head += "   matmul/attention/other"
    print(head)
    for p, r in sizes:
        results: dict[str, dict[str, object] | None] = {}
        before: dict[str, dict[str, object] | None] = {}
        for variant in variants:
            if baseline is not None and variant != "builtin":  # baseline first, then today's: the same conditions
                before[variant] = run_child(variant, p, r, [a for a in argv if a != "--compile"], baseline)
            results[variant] = run_child(variant, p, r, argv, None)
        base = results.get("builtin")
        for variant, res in results.items():
            if res is None:
                print(f"{p:>5} {r:>4} {variant:<11} out of memory")
                continue
            s = float(res["seconds"])  # type: ignore[arg-type]
            line = (f"{p:>5} {r:>4} {variant:<11} {s:>7.2f} {float(res['cpu_seconds']):>7.2f} "  # type: ignore[arg-type]
                    f"{args.pairs / s:>8.2f} {args.pairs * (p + 2 * r) / s:>9.0f} "
                    f"{float(res['peak_bytes']) / 2**20:>8.0f} "  # type: ignore[arg-type]
                    f"{(float(base['seconds']) / s if base else float('nan')):>9.2f}x")  # type: ignore[arg-type]
            if baseline is not None:
                old = before.get(variant)
                line += f" {float(old['seconds']) / s:>13.2f}x" if old else f" {'':>14}"  # type: ignore[arg-type]
            if args.profile and "profile" in res:
                split = res["profile"]
                line += "   " + "/".join(f"{100 * split[k]:.0f}%" for k in ("matmul", "attention", "other"))  # type: ignore[index]
            print(line)
            if baseline is not None and before.get(variant):
                old = before[variant]
                if variant == next(v for v in variants if before.get(v)) and (p, r) == sizes[0]:
                    print(f"{'':>11} (baseline: {args.against}, package {old['package']})")
                print(f"{'':>11} {'(baseline)':<11} {float(old['seconds']):>7.2f} "  # type: ignore[index, arg-type]
                      f"{float(old.get('cpu_seconds', float('nan'))):>7.2f}"  # type: ignore[union-attr, arg-type]
                      + (f"{'':>38}   " + "/".join(f"{100 * old['profile'][k]:.0f}%"  # type: ignore[index]
                                                for k in ("matmul", "attention", "other"))
                         if args.profile and "profile" in old else ""))  # type: ignore[operator]
        if results.get("paired") and results.get("shared"):
            bound = 2 * (p + r) / (p + 2 * r)
            paired, shared = results["paired"], results["shared"]
            print(f"{'':>11} shared/paired {float(paired['seconds']) / float(shared['seconds']):.2f}x "  # type: ignore[index, arg-type]
                  f"(token bound {bound:.2f}x); peak shared/paired "
                  f"{float(shared['peak_bytes']) / float(paired['peak_bytes']):.2f}")  # type: ignore[index, arg-type]
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
