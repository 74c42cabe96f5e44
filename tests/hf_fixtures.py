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
