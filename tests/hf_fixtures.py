"""Tiny random Hugging Face model directories made with `transformers` and `tokenizers`, offline: a byte-level BPE
tokenizer trained on a few sentences (with the family's special tokens and chat template) and a random Qwen3 or
Llama model of a few thousand parameters, saved as safetensors."""

from __future__ import annotations

import json
from pathlib import Path

QWEN_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' "
    "+ '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
LLAMA_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{{ '<|start_header_id|>' + message['role'] + "
    "'<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}{% endfor %}{% if add_generation_prompt "
    "%}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)
CORPUS = [
    "# Example 1\n## Question \nWhat is rain?\n## Preferred Response \nRain is water.\n",
    "## Dispreferred Response \nRAIN IS WET!\n\n# Task\nGiven the examples above, generate a preferred response.",
    "The user is a child. Simple words help. An expert wants detail, numbers and precise terms.",
    "the quick brown fox jumps over the lazy dog 0123456789 !?.,;:'\"()[]{}<>-_=+*/\\|@#$%^&~`",
]
SPECIAL = {
    "qwen3": ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
    "llama": ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
}
VOCAB = 512


def write_tokenizer(out: Path, family: str) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=SPECIAL[family],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(CORPUS * 20, trainer)
    if family == "llama":
        tok.post_processor = processors.TemplateProcessing(
            single="<|begin_of_text|> $A", special_tokens=[("<|begin_of_text|>", tok.token_to_id("<|begin_of_text|>"))])
    tok.save(str(out / "tokenizer.json"))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": 4096}
    if family == "qwen3":
        config |= {"bos_token": None, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>",
                   "chat_template": QWEN_TEMPLATE}
    else:
        config |= {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>", "chat_template": LLAMA_TEMPLATE}
    (out / "tokenizer_config.json").write_text(json.dumps(config))


def write_hf_model(out: Path, family: str, *, seed: int = 0, tied: bool = True, shards: bool = False,
                   layers: int = 2) -> Path:
    """A tiny random model of ``family`` (qwen3 or llama) saved as a Hugging Face directory under ``out``."""
    import torch
    from tokenizers import Tokenizer

    out.mkdir(parents=True, exist_ok=True)
    write_tokenizer(out, family)
    tok = Tokenizer.from_file(str(out / "tokenizer.json"))
    torch.manual_seed(seed)
    if family == "qwen3":
        from transformers import Qwen3Config, Qwen3ForCausalLM

        config = Qwen3Config(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=layers,
                             num_attention_heads=4, num_key_value_heads=2, head_dim=32, max_position_embeddings=4096,
                             rope_theta=1_000_000.0, rms_norm_eps=1e-6, tie_word_embeddings=tied,
                             bos_token_id=tok.token_to_id("<|endoftext|>"), eos_token_id=tok.token_to_id("<|im_end|>"),
                             pad_token_id=tok.token_to_id("<|endoftext|>"))
        model = Qwen3ForCausalLM(config)
    else:
        from transformers import LlamaConfig, LlamaForCausalLM

        config = LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=layers,
                             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                             rope_theta=500_000.0, rms_norm_eps=1e-5, tie_word_embeddings=tied,
                             rope_scaling={"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                                           "high_freq_factor": 4.0, "original_max_position_embeddings": 64},
                             bos_token_id=tok.token_to_id("<|begin_of_text|>"), eos_token_id=tok.token_to_id("<|eot_id|>"))
        model = LlamaForCausalLM(config)
    with torch.no_grad():  # transformers initializes the norms to ones: make them random too, so they are tested
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1.0 + 0.3 * torch.randn_like(p))
    model.save_pretrained(out, safe_serialization=True, max_shard_size="60KB" if shards else "10GB")
    return out


def write_gguf(hf_dir: Path, path: Path, family: str, *, quantize: tuple[str, ...] = ()) -> Path:
    """The Hugging Face directory ``hf_dir`` as llama.cpp's converter writes it into a GGUF file: llama.cpp's tensor
    names, llama q/k rows permuted into the rotary pair layout, the tokenizer as byte-level BPE tokens, types and
    merges, the chat template; rotary scaling is left out. Tensors whose GGUF name ends with one of ``quantize``
    are stored as Q8_0."""
    import gguf
    import numpy as np
    from safetensors.numpy import load_file

    config = json.loads((hf_dir / "config.json").read_text())
    tok_json = json.loads((hf_dir / "tokenizer.json").read_text())
    tok_config = json.loads((hf_dir / "tokenizer_config.json").read_text())
    tensors: dict[str, np.ndarray] = {}
    for f in sorted(hf_dir.glob("*.safetensors")):
        tensors |= load_file(f)
    heads, kv = config["num_attention_heads"], config["num_key_value_heads"]
    head_dim = config.get("head_dim") or config["hidden_size"] // heads
    names = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
             "lm_head.weight": "output.weight"}
    layer = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm", "self_attn.q_proj": "attn_q",
             "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
             "self_attn.q_norm": "attn_q_norm", "self_attn.k_norm": "attn_k_norm", "mlp.gate_proj": "ffn_gate",
             "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}
    writer = gguf.GGUFWriter(str(path), family)
    arch = family
    writer.add_uint32(f"{arch}.block_count", config["num_hidden_layers"])
    writer.add_uint32(f"{arch}.context_length", config["max_position_embeddings"])
    writer.add_uint32(f"{arch}.embedding_length", config["hidden_size"])
    writer.add_uint32(f"{arch}.feed_forward_length", config["intermediate_size"])
    writer.add_uint32(f"{arch}.attention.head_count", heads)
    writer.add_uint32(f"{arch}.attention.head_count_kv", kv)
    writer.add_float32(f"{arch}.rope.freq_base", config.get("rope_theta") or config["rope_parameters"]["rope_theta"])
    writer.add_float32(f"{arch}.attention.layer_norm_rms_epsilon", config["rms_norm_eps"])
    writer.add_uint32(f"{arch}.vocab_size", config["vocab_size"])
    if family == "qwen3":
        writer.add_uint32(f"{arch}.attention.key_length", head_dim)
        writer.add_uint32(f"{arch}.attention.value_length", head_dim)
    vocab = {**tok_json["model"]["vocab"], **{t["content"]: t["id"] for t in tok_json["added_tokens"]}}
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv_: kv_[1])]
    special = {t["content"] for t in tok_json["added_tokens"] if t["special"]}
    writer.add_string("tokenizer.ggml.model", "gpt2")
    writer.add_string("tokenizer.ggml.pre", "default")
    writer.add_array("tokenizer.ggml.tokens", tokens)
    writer.add_array("tokenizer.ggml.token_type", [3 if t in special else 1 for t in tokens])
    writer.add_array("tokenizer.ggml.merges", [m if isinstance(m, str) else " ".join(m)
                                               for m in tok_json["model"]["merges"]])
    for key, name in (("bos", "bos_token"), ("eos", "eos_token"), ("padding", "pad_token")):
        if isinstance(tok_config.get(name), str):
            writer.add_uint32(f"tokenizer.ggml.{key}_token_id", vocab[tok_config[name]])
    writer.add_bool("tokenizer.ggml.add_bos_token", family == "llama")
    writer.add_string("tokenizer.chat_template", tok_config["chat_template"])

    def pairs(w: np.ndarray, n: int) -> np.ndarray:  # llama.cpp's LlamaModel.permute
        return w.reshape(n, 2, w.shape[0] // n // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)

    for name, w in tensors.items():
        if name.startswith("model.layers."):
            _, _, i, *rest = name.split(".")
            gguf_name = f"blk.{i}.{layer['.'.join(rest[:-1])]}.weight"
        else:
            gguf_name = names[name]
        w = w.astype(np.float32)
        if family == "llama" and gguf_name.endswith(("attn_q.weight", "attn_k.weight")):
            w = pairs(w, heads if "attn_q" in gguf_name else kv)
        if gguf_name.endswith(quantize):
            q = gguf.quants.quantize(w, gguf.GGMLQuantizationType.Q8_0)
            writer.add_tensor(gguf_name, q, raw_shape=q.shape, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        else:
            writer.add_tensor(gguf_name, w)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
