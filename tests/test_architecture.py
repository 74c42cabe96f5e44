"""The structure issue 14 asked for: the packed-pairs interface instead of patches, scoped workarounds,
structured episodes, a registry of data sources."""

from __future__ import annotations

import json
import logging

import pytest
import torch

from conftest import REPO, make_batch, sample_examples
from fspo_recipe.criteria import get_criterion
from fspo_recipe.data.build import EpisodeOptions
from fspo_recipe.data.prepare import prepare

SAMPLES = REPO / "datasets" / "samples"


def stock_tiny(seed: int = 0):
    """The tiny llama as fairseq2 itself builds it (no packed-pairs interface)."""
    from fairseq2.models.llama import LLaMAConfig, LLaMAFactory
    from fairseq2.utils.structured import structure
    from fspo_recipe.models.tiny import TinyModelSpec, make_tiny_state_dict

    spec = TinyModelSpec()
    model = LLaMAFactory(structure(spec.model_config(), LLaMAConfig)).create_model()
    model.load_state_dict(make_tiny_state_dict(spec, seed))
    return model


# ---- the packed-pairs interface ---------------------------------------------------------------------------


def test_a_model_without_the_interface_trains_on_the_paired_path(tiny_model, gangs, caplog) -> None:
    """No TypeError: fairseq2's own llama gets the paired path (one logged line) with the same numbers."""
    from fspo_recipe.train.unit import FspoFinetuneUnit

    batch = make_batch(sample_examples(3))
    ours = FspoFinetuneUnit(tiny_model(seed=3), tiny_model(seed=4).eval(), get_criterion("ipo", beta=0.1), gangs)
    with caplog.at_level(logging.INFO, logger="fairseq2"):
        stock = FspoFinetuneUnit(stock_tiny(seed=3), stock_tiny(seed=4).eval(), get_criterion("ipo", beta=0.1), gangs)
    assert "does not implement the packed-pairs interface" in caplog.text
    a, b = ours.compute_logps(batch), stock.compute_logps(batch)
    for name in ("policy_chosen", "policy_rejected", "ref_chosen", "ref_rejected"):
        torch.testing.assert_close(getattr(b, name), getattr(a, name), rtol=1e-5, atol=1e-4)


def test_the_packed_classes_keep_fairseq2s_state_dict_and_ordinary_forward(tiny_model) -> None:
    from fspo_recipe.models.transformer import FspoDecoderModel, PackedMultiheadAttention

    ours, stock = tiny_model(seed=5), stock_tiny(seed=5)
    assert isinstance(ours, FspoDecoderModel) and type(stock) is not FspoDecoderModel
    assert list(ours.state_dict()) == list(stock.state_dict())
    assert sum(isinstance(m, PackedMultiheadAttention) for m in ours.modules()) == 2
    batch = make_batch(sample_examples(2)).chosen
    torch.testing.assert_close(ours(batch).logits, stock(batch).logits)  # fairseq2's forward, unchanged


def test_our_rotary_equals_fairseqs(tiny_model) -> None:
    from fairseq2.nn import RotaryEncoder
    from fspo_recipe.models.transformer import rotate

    encoder = RotaryEncoder(16, 64, theta=500_000.0)
    x = torch.randn(3, 20, 4, 16)  # [B, L, H, E]
    expected = encoder(x.transpose(1, 2), None).transpose(1, 2)  # fairseq2: positions 0..L-1, layout [B, H, L, E]
    positions = torch.arange(20).expand(3, 20)
    torch.testing.assert_close(rotate(x, encoder.freqs, positions), expected, rtol=1e-5, atol=1e-6)
    # At other positions: the rows of fairseq2's table at those positions (a shifted segment).
    shifted = torch.arange(7, 27).expand(3, 20)
    expected_shift = encoder(torch.cat([torch.zeros(3, 4, 7, 16), x.transpose(1, 2)], dim=2), None)[:, :, 7:]
    torch.testing.assert_close(rotate(x, encoder.freqs, shifted), expected_shift.transpose(1, 2), rtol=1e-5, atol=1e-6)
    # bf16: ours multiplies in bf16 (no float32 complex round trip), fairseq2 in float32; within bf16 rounding of a
    # few products, and ours stays bf16.
    x16 = (x * 4).bfloat16()
    ours16 = rotate(x16, encoder.freqs, positions)
    assert ours16.dtype == torch.bfloat16
    theirs16 = encoder(x16.transpose(1, 2), None).transpose(1, 2)
    assert theirs16.dtype == torch.bfloat16
    torch.testing.assert_close(ours16.float(), theirs16.float(), rtol=2e-2, atol=4e-2)
    assert float((ours16.float() - theirs16.float()).abs().mean()) < 1e-2


def test_fspo_commands_load_packed_models_and_others_fairseqs(tmp_path) -> None:
    """Inside packed_model_families a llama card gives the FSPO classes; outside (other recipes) fairseq2's."""
    from fairseq2 import setup_fairseq2
    from fairseq2.context import get_runtime_context
    from fairseq2.gang import fake_gangs
    from fairseq2.models.decoder import DecoderModel
    from fairseq2.models.transformer_decoder import TransformerDecoderModel
    from fairseq2.recipes.common import load_reference_model

    from fspo_recipe.assets import add_card_directory
    from fspo_recipe.models.families import packed_model_families
    from fspo_recipe.models.tiny import write_tiny_assets
    from fspo_recipe.models.transformer import FspoDecoderModel

    setup_fairseq2()
    context = get_runtime_context()
    write_tiny_assets(tmp_path, seed=0, name="arch_tiny")
    add_card_directory(context, tmp_path)
    gangs = fake_gangs(torch.device("cpu"))

    def load():
        return load_reference_model(DecoderModel, context, "arch_tiny", gangs, torch.float32, mp=False)

    with packed_model_families(context):
        inside = load()
    outside = load()
    assert isinstance(inside, FspoDecoderModel)
    assert type(outside) is TransformerDecoderModel


def test_installing_the_plugin_patches_nothing() -> None:
    """Loading the extension leaves fairseq2 and torch as they are; FSPO training switches its workarounds on."""
    import torch.distributed as dist
    from fairseq2 import setup_fairseq2
    from fairseq2.gang import ProcessGroupGang
    from fairseq2.metrics.recorders import JsonlMetricRecorder

    from fspo_recipe import fairseq2_compat

    def current():
        return dist.init_process_group, ProcessGroupGang.barrier, ProcessGroupGang.all_gather

    before = current()
    setup_fairseq2()
    from fspo_recipe.extension import setup_fspo
    from fairseq2.context import get_runtime_context

    setup_fspo(get_runtime_context())
    assert current() == before
    recorder = JsonlMetricRecorder.record_metrics
    with fairseq2_compat.fspo_workarounds():
        assert all(a is not b for a, b in zip(current(), before))
        assert JsonlMetricRecorder.record_metrics is recorder  # resumed metrics are fixed in the files, not here
    assert current() == before


def test_other_criteria_get_fairseq2s_loader_untouched(monkeypatch) -> None:
    from fspo_recipe.train import recipe

    calls = []
    monkeypatch.setattr("fairseq2.recipes.lm.load_po_finetuner", lambda *a: calls.append(a) or "trainer")
    monkeypatch.setattr("fspo_recipe.fairseq2_compat.activate_fspo_workarounds", lambda: calls.append("workarounds"))
    assert recipe.load_preference_finetuner(object(), {"criterion": {"name": "dpo"}}, None) == "trainer"  # type: ignore[arg-type]
    assert calls == [(calls[0][0], {"criterion": {"name": "dpo"}}, None)]


# ---- structured episodes -------------------------------------------------------------------------------------


def test_prepared_examples_carry_their_parts(tmp_path) -> None:
    from fspo_recipe.data.episodes import PromptParts, prompt_parts

    prepare("elix", [str(SAMPLES / "elix")], tmp_path, options=EpisodeOptions(num_shots=3, rationale="generated"),
            log=False)
    lines = [json.loads(line) for line in (tmp_path / "elix" / "train.jsonl").read_text().splitlines()]
    for ex in lines[:20]:
        parts = PromptParts.from_record(ex["episode"])
        assert parts.render() == ex["src"] and len(parts.shots) == 3 and parts.rationale
        assert prompt_parts(ex) == parts
    # A file prepared before the field existed: its prompts are parsed back, to the same parts.
    old = {k: v for k, v in lines[0].items() if k != "episode"}
    assert prompt_parts(old) == PromptParts.from_record(lines[0]["episode"])


def test_an_edited_src_that_disagrees_with_its_episode_is_named(tmp_path) -> None:
    from fspo_recipe.data.jsonl import PreferenceDataError, read_preference_jsonl

    prepare("elix", [str(SAMPLES / "elix")], tmp_path, options=EpisodeOptions(num_shots=2), log=False)
    lines = (tmp_path / "elix" / "train.jsonl").read_text().splitlines()
    edited = json.loads(lines[1])
    edited["src"] = edited["src"].replace("# Task", "# Task (edited)")
    path = tmp_path / "edited.jsonl"
    path.write_text(lines[0] + "\n" + json.dumps(edited) + "\n")
    with pytest.raises(PreferenceDataError, match=r"edited.jsonl, line 2: field 'src' is not the prompt its 'episode'"):
        list(read_preference_jsonl(path))


def test_the_reader_shortens_from_the_parts_even_when_src_would_not_parse(tmp_path) -> None:
    """A response containing the template's own headers makes `src` ambiguous to parse; the parts are not."""
    from fairseq2.data.text.tokenizers.llama import LLaMA3Tokenizer
    from fairseq2.datasets import StaticBatching
    from fairseq2.datasets.preference import PreferenceReadOptions
    from fairseq2.gang import FakeGang

    from fspo_recipe.data.episodes import PromptParts, Shot, parse_prompt, PromptParseError
    from fspo_recipe.models.tiny import write_tiny_assets
    from fspo_recipe.train.reader import FspoPreferenceDataset

    write_tiny_assets(tmp_path / "tok", seed=0)
    tokenizer = LLaMA3Tokenizer(tmp_path / "tok" / "tokenizer.model")
    shots = tuple(Shot(f"q{i}?", f"a\n\n# Example 7\ntricky {i}", f"b{i}") for i in range(3))
    parts = PromptParts(shots, "query?")
    src = parts.render()
    with pytest.raises(PromptParseError):
        parse_prompt(src)
    ex = {"id": "x", "src": src, "tgt_chosen": "c\n", "tgt_rejected": "r\n", "episode": parts.to_record()}
    path = tmp_path / "train.jsonl"
    path.write_text(json.dumps(ex) + "\n")
    limit = len(parts.render(2, newest=True).encode()) + 1 + 2 * 3  # bos + prompt; two targets of 2 bytes + eos
    dataset = FspoPreferenceDataset.from_path(path, "t")
    reader = dataset.create_reader(tokenizer, FakeGang(device=torch.device("cpu")), 1, limit,
                                   PreferenceReadOptions(batching=StaticBatching(1), example_shuffle_window=1,
                                                         batch_shuffle_window=1))
    batches = [b for group in reader for b in group]
    assert len(batches) == 1 and dataset.counter.shortened == 1 and dataset.counter.shots_dropped == 1


# ---- data sources -------------------------------------------------------------------------------------------------


def test_a_new_source_is_one_registered_spec_with_its_own_option(tmp_path) -> None:
    from fspo_recipe.data.prepare import main as prepare_main
    from fspo_recipe.data.sources import SOURCES, PreferenceRow, SourceOption, SourceSpec, accept_pair, register_source
    from fspo_recipe.data.sources.base import at_least

    def qa_rows(spec, data, ctx):
        out = []
        for i, (user, q, good, bad) in enumerate(zip(data["who"], data["q"], data["good"], data["bad"])):
            if len(good) < ctx.options["min_good_chars"]:
                ctx.report.skip("preferred answer too short (--min-good-chars)", f"{ctx.split}/{i}")
            elif accept_pair(ctx, f"{ctx.split}/{i}", q, good, bad):
                out.append(PreferenceRow(f"{ctx.split}/{i}", user, q, good, bad, f"I am {user}.", ""))
        return out

    option = SourceOption("--min-good-chars", at_least(0), 0, "skip pairs whose preferred answer is shorter")
    spec = SourceSpec("toy_qa", "nobody/toy-qa", {"who": "user", "q": "question", "good": "better", "bad": "worse"},
                      2, qa_rows, options=(option,))
    register_source(spec)
    try:
        rows = [{"who": f"u{i % 3}", "q": f"q{i}", "good": f"g{i}", "bad": f"b{i}"} for i in range(30)]
        (tmp_path / "in").mkdir()
        (tmp_path / "in" / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        summary = prepare("toy_qa", [str(tmp_path / "in")], tmp_path / "out", options=EpisodeOptions(num_shots=2),
                          log=False)
        assert summary["splits"]["train"]["users"] == 3 and summary["splits"]["train"]["episodes"] > 0
        assert summary["min_good_chars"] == 0 and not summary["rows_skipped"]
        # The option on the command line: nothing generic names it, the source declared it.
        assert prepare_main(["toy_qa", "--input", str(tmp_path / "in"), "--out", str(tmp_path / "out2"),
                             "--min-good-chars", "3", "--no-progress", "--quiet"]) == 0
        summary = json.loads((tmp_path / "out2" / "toy_qa" / "summary.json").read_text())
        assert summary["min_good_chars"] == 3
        assert summary["rows_skipped"] == {"preferred answer too short (--min-good-chars)": 10}  # g0 ... g9
        with pytest.raises(ValueError, match="toy_qa has no option min_score_ratio"):
            prepare("toy_qa", [str(tmp_path / "in")], tmp_path / "out3", options=EpisodeOptions(num_shots=2),
                    source_options={"min_score_ratio": 1.0})
        with pytest.raises(ValueError, match="already registered"):
            register_source(SourceSpec("toy_qa", "other/name", {}, 1, qa_rows))
    finally:
        SOURCES.pop("toy_qa")
