"""GPU memory per device of an FSPO IPO step, computed (not measured) from the model's shapes and the presets.

    python benchmarks/memory_estimate.py [--arch qwen3_4b] [--prompt 7168] [--response 512] [--gpus 2,4,8]

Counts, per GPU, for FSDP (layer granularity, reshard after forward), trainer.dtype bfloat16 with static mixed
precision (fp32 master weights, bf16 compute), RMSprop without momentum, layer-wise activation checkpointing, one
pair per GPU in the shared-prefix layout (P + 2R tokens), logits at response positions only:

- fp32 master weights, fp32 gradients and RMSprop's fp32 ``square_avg``, each sharded over the GPUs;
- the bf16 copy of the widest gathered FSDP units (the embedding / tied output, two decoder layers in flight);
- the frozen reference model (bf16, replicated: fairseq2 0.4.6 does not shard it), unless reference log-probs are
  precomputed (``fspo-score-reference``);
- activations: the hidden state at every layer boundary, plus one layer recomputed in backward;
- the response logits (bf16), their float32 log-softmax and its gradient.

It leaves out the CUDA context and allocator fragmentation (typically 1-3 GB) and the data. Parameter counts come
from the model built on the meta device, so they are exact.
"""

from __future__ import annotations

import argparse

GIB = 2**30


def estimate(arch: str, prompt: int, response: int, gpus: int, reference: bool) -> dict[str, float]:
    import torch

    from fspo_recipe.models.qwen3 import Qwen3Factory, qwen3_architectures

    config = qwen3_architectures()[arch]
    with torch.device("meta"):
        model = Qwen3Factory(config).create_model()
    params = sum(p.numel() for p in model.parameters())
    embed = config.vocab_info.size * config.model_dim
    layer = (params - embed * (1 if config.tied_embeddings else 2)) / config.num_layers
    tokens = prompt + 2 * response
    inner = config.num_attn_heads * config.head_dim
    kv = config.num_key_value_heads * config.head_dim
    # One layer's saved tensors when recomputed for backward (bf16): norms' inputs and outputs, q, k, v, attention
    # output, the SwiGLU gate, up and product, and the residual sums.
    per_token_layer = 4 * config.model_dim + 2 * inner + 2 * kv + 3 * config.ffn_inner_dim
    parts = {
        "master weights (fp32, sharded)": 4 * params / gpus,
        "gradients (fp32, sharded)": 4 * params / gpus,
        "RMSprop state (fp32, sharded)": 4 * params / gpus,
        "gathered bf16 units (embedding, 2 layers)": 2 * (embed + 2 * layer),
        "reference model (bf16, replicated)": 2 * params if reference else 0.0,
        "layer-boundary activations (bf16)": 2 * tokens * config.model_dim * config.num_layers,
        "one layer recomputed (bf16)": 2 * tokens * per_token_layer,
        "response logits, log-softmax and its gradient": 2 * response * config.vocab_info.size * (2 + 4 + 4),
    }
    parts["total"] = sum(parts.values())
    parts["parameters"] = params
    return parts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="qwen3_4b")
    parser.add_argument("--prompt", type=int, default=7168, help="prompt tokens (default 7168: 8192 - 2 x 512)")
    parser.add_argument("--response", type=int, default=512, help="tokens per response (default 512)")
    parser.add_argument("--gpus", default="2,4,8", help="FSDP world sizes (default 2,4,8)")
    args = parser.parse_args()
    sizes = [int(g) for g in args.gpus.split(",")]
    base = estimate(args.arch, args.prompt, args.response, sizes[0], True)
    print(f"{args.arch}: {base['parameters'] / 1e9:.2f}B parameters; one pair of {args.prompt}+2x{args.response} "
          "tokens per GPU (shared prefix); GiB per GPU")
    print(f"{'':48}" + "".join(f"{g} GPUs ref{'':>3}{g} GPUs pre{'':>3}" for g in sizes))
    rows = {g: (estimate(args.arch, args.prompt, args.response, g, True),
                estimate(args.arch, args.prompt, args.response, g, False)) for g in sizes}
    for key in base:
        if key == "parameters":
            continue
        line = f"{key:<48}"
        for g in sizes:
            live, pre = rows[g]
            line += f"{live[key] / GIB:>10.1f}{pre[key] / GIB:>12.1f}   "
        print(line)
    print("(ref: live reference model; pre: reference log-probs precomputed with fspo-score-reference)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
