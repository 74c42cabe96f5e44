"""fspo_recipe/models/families.py: every registered family builds its tiny model with the packed interface through
its record alone, and what generic code reads of a record is consistent; Qwen3 checkpoints written before the q/k
norms moved into the projections still load."""

from __future__ import annotations

import pytest
import torch

from fairseq2.models.sequence import SequenceBatch
from fairseq2.nn.padding import PaddingMask

from fspo_recipe.models.families import FAMILIES, hf_families, model_family
from fspo_recipe.models.packing import PackedDecoder
from fspo_recipe.models.tiny import TinyModelSpec, make_tiny_state_dict
from fspo_recipe.scoring.logps import pair_logps


def _side(prompts: list[list[int]], responses: list[list[int]]) -> SequenceBatch:
    """[prompt + response] rows, padded, with the response tokens as the target mask."""
    rows = [p + r for p, r in zip(prompts, responses)]
    width = max(map(len, rows))
    seqs, mask = torch.zeros(len(rows), width, dtype=torch.int64), torch.zeros(len(rows), width, dtype=torch.bool)
    for i, (p, row) in enumerate(zip(prompts, rows)):
        seqs[i, : len(row)] = torch.tensor(row)
        mask[i, len(p) : len(row)] = True
    return SequenceBatch(seqs, PaddingMask(torch.tensor([len(r) for r in rows]), width), mask)


@pytest.mark.parametrize("name", FAMILIES)
def test_each_family_builds_its_tiny_model_and_packs_exactly(name) -> None:
    """Shared-prefix and paired log-probs agree for the tiny model of every family: a new family entered in
    FAMILIES is checked here without a test of its own for this."""
    spec = TinyModelSpec(family=name)
    model = spec.create_model().eval()
    model.load_state_dict(make_tiny_state_dict(spec, seed=3))
    assert isinstance(model, PackedDecoder)
    prompts = [[5, 6, 7, 8, 9, 10], [5, 6, 7]]
    chosen, rejected = _side(prompts, [[11, 12, 13], [20, 21]]), _side(prompts, [[14, 15], [22, 23, 24, 25]])
    with torch.no_grad():
        shared, shared_counts = pair_logps(model, chosen, rejected, shared_prefix=True)
        paired, paired_counts = pair_logps(model, chosen, rejected, shared_prefix=False)
    assert torch.equal(shared_counts, paired_counts)
    torch.testing.assert_close(shared, paired, rtol=1e-5, atol=1e-4)


def test_unknown_family_names_the_known_ones() -> None:
    with pytest.raises(ValueError, match="unknown model family 'gpt2'; known: llama, mistral, qwen3"):
        model_family("gpt2")
    with pytest.raises(ValueError, match="unknown model family"):
        TinyModelSpec(family="gpt2").model_config()


def test_a_shape_the_family_cannot_build_is_one_line_in_tiny_assets(tmp_path, capsys) -> None:
    from fspo_recipe.models.tiny import main

    with pytest.raises(SystemExit):
        main([str(tmp_path / "t"), "--family", "llama", "--model-dim", "66", "--num-heads", "4"])
    assert "--family llama: the number of heads (4) must divide the model width (66)" in capsys.readouterr().err
    assert not (tmp_path / "t").exists()
    # qwen3 heads have a width of their own: the same shape builds.
    from fspo_recipe.models.tiny import main as tiny_main

    assert tiny_main([str(tmp_path / "q"), "--family", "qwen3", "--model-dim", "66", "--num-heads", "4"]) == 0


def test_hugging_face_importers_are_complete() -> None:
    families = hf_families()
    assert set(families) == {"llama", "qwen3"}
    for model_type, family in families.items():
        assert family.hf_arch and family.hf_config is not None and family.hf_tensors is not None, model_type


def test_qwen3_checkpoints_with_the_old_norm_names_still_load() -> None:
    spec = TinyModelSpec(family="qwen3")
    state = make_tiny_state_dict(spec, seed=1)
    assert "decoder.layers.0.self_attn.q_proj.norm.weight" in state
    old = {k.replace("self_attn.q_proj.norm.", "self_attn.q_norm.").replace("self_attn.k_proj.norm.",
                                                                           "self_attn.k_norm."): v
           for k, v in state.items()}
    assert "decoder.layers.0.self_attn.k_norm.weight" in old
    old = {k: (v * 1.5 if k.endswith("_norm.weight") and "self_attn" in k else v) for k, v in old.items()}
    model = spec.create_model().eval()
    model.load_state_dict(old)  # strict: every old key found its place
    loaded = model.state_dict()
    torch.testing.assert_close(loaded["decoder.layers.1.self_attn.k_proj.norm.weight"],
                               old["decoder.layers.1.self_attn.k_norm.weight"])
    seqs = torch.randint(0, spec.vocab_size, (1, 12))
    with torch.no_grad():
        assert torch.isfinite(model(SequenceBatch(seqs, None)).logits).all()
