"""fspo_recipe/models/llama.py: FSPO's llama and mistral factories build fairseq2's models (same keys, shapes and
outputs), with the packed-pairs interface; mistral's sliding window is kept and bounds what is packed."""

from __future__ import annotations

import pytest
import torch

from fairseq2.data import VocabularyInfo
from fairseq2.models.llama import LLaMAConfig, LLaMAFactory
from fairseq2.models.mistral import MistralConfig, MistralFactory
from fairseq2.models.sequence import SequenceBatch

from fspo_recipe.models.llama import FspoLLaMAFactory, FspoMistralFactory
from fspo_recipe.models.packing import PackedDecoder

VOCAB = VocabularyInfo(size=97, unk_idx=None, bos_idx=0, eos_idx=1, pad_idx=2)
SHAPE = {"model_dim": 64, "max_seq_len": 128, "vocab_info": VOCAB, "num_layers": 2, "num_attn_heads": 4,
         "num_key_value_heads": 2, "ffn_inner_dim": 96}
FAMILIES = {
    "llama": (LLaMAConfig(**SHAPE, dropout_p=0.0), LLaMAFactory, FspoLLaMAFactory, None),
    "mistral": (MistralConfig(**SHAPE, attn_window_len=16, dropout_p=0.0), MistralFactory, FspoMistralFactory, 16),
}


@pytest.mark.parametrize("family", FAMILIES)
def test_the_factories_build_fairseq2s_model_with_the_packed_interface(family) -> None:
    config, theirs_factory, ours_factory, window = FAMILIES[family]
    torch.manual_seed(0)
    theirs = theirs_factory(config).create_model().eval()
    ours = ours_factory(config).create_model().eval()
    assert isinstance(ours, PackedDecoder) and not isinstance(theirs, PackedDecoder)
    assert ours.packed_max_len == window
    their_state = theirs.state_dict()
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in their_state.items()}
    ours.load_state_dict(their_state)
    # 40 tokens: beyond mistral's 16-token window, so its window mask must be the one applied.
    seqs = torch.randint(3, VOCAB.size, (2, 40))
    with torch.no_grad():
        expected = theirs(SequenceBatch(seqs, None)).logits
        got = ours(SequenceBatch(seqs, None)).logits
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    if window is not None:  # the window matters here: the same weights with full attention give other logits
        full = FspoLLaMAFactory(LLaMAConfig(**SHAPE, dropout_p=0.0, rope_theta=10_000.0, ffn_inner_dim_scale=1.0,
                                            ffn_inner_dim_to_multiple=1)).create_model().eval()
        full.load_state_dict(their_state)
        with torch.no_grad():
            logits = full(SequenceBatch(seqs, None)).logits
        torch.testing.assert_close(logits[:, :16], expected[:, :16], rtol=1e-5, atol=1e-5)  # within the window
        assert not torch.allclose(logits[:, 16:], expected[:, 16:], atol=1e-3)
