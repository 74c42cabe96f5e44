"""``fspo-export-hf``: a trained model as a Hugging Face directory that transformers and vLLM load as they are.

    fspo-export-hf RUN_DIR OUT_DIR [--step N] [--dtype bfloat16] [--max-shard-size 5GB]
    fspo-export-hf --card NAME [--assets-dir CARDS] OUT_DIR          (a model card instead of a run)

From a training run's output directory (its last checkpoint, or ``--step N``) or a model card, writes:

- ``config.json`` of the family's transformers class (llama -> ``LlamaForCausalLM``, mistral ->
  ``MistralForCausalLM``, qwen3 -> ``Qwen3ForCausalLM``): widths, heads, head dimension, rotary base and scaling, norm
  epsilon, context length, vocabulary and special ids, tied or untied embeddings as trained;
- the weights as safetensors, in Hugging Face's names and rotary layout (``model.safetensors``, or shards of at most
  ``--max-shard-size`` with ``model.safetensors.index.json``), in ``--dtype`` (default: the run's training dtype);
- the tokenizer files of the model the run started from (``tokenizer.json``, ``tokenizer_config.json`` with its
  chat template, ``chat_template.jinja`` and ``special_tokens_map.json`` where it has them) and
  ``generation_config.json`` (BOS, pad, and every end-of-turn id as ``eos_token_id``);
- ``README.md``: what it was trained from and how (criterion, loss, data set, shots, steps, learning rate).

A model whose tokenizer is not a Hugging Face one (the tiny byte-level models) is exported without tokenizer files,
and the command says so. Refused with one line: an unknown family, a run without a checkpoint, an output directory
that exists and is not empty (without ``--overwrite``, and never one this command did not write), an output inside
the source. The directory appears complete or not at all.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import torch
from torch import Tensor

from fspo_recipe.cli import run_command
from fspo_recipe.files import Terminated, atomic_directory
from fspo_recipe.lock import OutputInUseError, OutputLock
from fspo_recipe.models.hf_config import HF_DECODER_NAMES, HF_LAYER_NAMES, rotary_halves_from_pairs

EXPORT_MARK: Final = "fspo_export.json"
"""The file that says a directory was written by this command (``--overwrite`` replaces only such)."""

TOKENIZER_FILES: Final = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")

DTYPES: Final = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class ExportError(ValueError):
    """The source cannot be exported as asked; the message says why."""


# fairseq2 name -> Hugging Face name, per layer and outside the layers (llama, mistral and qwen3 share them).
_LAYER_NAMES: Final = {fs2: hf for hf, fs2 in HF_LAYER_NAMES.items()}
_TOP_NAMES: Final = {**{fs2: f"model.{hf}" for hf, fs2 in HF_DECODER_NAMES.items()},
                     "final_proj.weight": "lm_head.weight"}
_LAYER = re.compile(r"^decoder\.layers\.([0-9]+)\.(.+)$")


def hf_tensors(state: Mapping[str, Tensor], *, num_heads: int, num_kv_heads: int, tied: bool) -> dict[str, Tensor]:
    """fairseq2's state dict of a llama, mistral or qwen3 decoder -> Hugging Face's tensors: the names of
    transformers' classes, the q/k rows (and Qwen3's q/k norms) back in the rotate-half layout, no ``lm_head`` when
    the embeddings are tied. A tensor without a Hugging Face name raises :class:`ExportError` naming it."""
    out: dict[str, Tensor] = {}
    for name, tensor in state.items():
        if tied and name == "final_proj.weight":
            continue
        match = _LAYER.match(name)
        if match and match.group(2) in _LAYER_NAMES:
            part = match.group(2)
            if part in ("self_attn.q_proj.weight", "self_attn.k_proj.weight"):
                tensor = rotary_halves_from_pairs(tensor, num_heads if part.startswith("self_attn.q") else num_kv_heads)
            elif part.endswith(("q_proj.norm.weight", "k_proj.norm.weight")):
                tensor = rotary_halves_from_pairs(tensor, 1)
            out[f"model.layers.{match.group(1)}.{_LAYER_NAMES[part]}"] = tensor
        elif name in _TOP_NAMES:
            out[_TOP_NAMES[name]] = tensor
        else:
            raise ExportError(f"the model's tensor {name!r} has no Hugging Face name (a family or module this export "
                              "does not know).")
    return out


@dataclass
class Source:
    """What an export needs of a run or a card."""

    name: str
    """The model card it loads as."""

    family: str
    config: dict[str, Any]
    """The family's configuration fields (unstructured)."""

    state: dict[str, Tensor]
    tokenizer_dir: Path | None
    """The Hugging Face tokenizer directory of the model, if it has one."""

    dtype: torch.dtype
    provenance: dict[str, Any]
    read_from: list[Path]
    """The local directories the model was read from (its checkpoint's, its tokenizer's): no output goes inside."""


def load_source(run_dir: Path | None, card: str | None, step: int | None, assets_dir: Path | None) -> Source:
    """The model of a run's checkpoint (``step`` or the last) or of a card, loaded by fairseq2 as the FSPO commands
    load it (its state dict as trained: one tensor for tied embeddings)."""
    import yaml
    from fairseq2 import setup_fairseq2
    from fairseq2.context import get_runtime_context
    from fairseq2.gang import fake_gangs
    from fairseq2.models import ModelHandler
    from fairseq2.models.decoder import DecoderModel
    from fairseq2.recipes.common import load_reference_model
    from fairseq2.utils.structured import unstructure

    from fspo_recipe.assets import add_card_directory, describe_load_error, load_error_types
    from fspo_recipe.models.families import packed_model_families
    from fspo_recipe.runs import RunDirError, checkpoint_steps, register_run
    from fspo_recipe.train.checkpoints import CheckpointCheckError

    setup_fairseq2()
    context = get_runtime_context()
    if assets_dir is not None:
        add_card_directory(context, assets_dir)
    provenance: dict[str, Any] = {}
    dtype = torch.float32
    if run_dir is not None:
        try:
            steps = checkpoint_steps(run_dir)
        except RunDirError as ex:
            raise ExportError(str(ex)) from None
        chosen = max(steps) if step is None else step
        if chosen not in steps:
            raise ExportError(f"{run_dir} has no checkpoint of step {chosen} (it has {steps}).")
        try:
            names = register_run(context, run_dir, "fspo_export")
        except (RunDirError, CheckpointCheckError) as ex:  # a damaged or unsafe model.pt is named in one line
            raise ExportError(str(ex)) from None
        name = names[chosen]
        try:
            recipe = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8")) or {}
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as ex:
            raise ExportError(f"{run_dir / 'config.yaml'} cannot be read as the run's configuration "
                              f"({_first_line(ex)}); is {run_dir} a training run's OUTPUT_DIR?") from None
        if not isinstance(recipe, dict):
            raise ExportError(f"{run_dir / 'config.yaml'} is not a mapping of the run's configuration.")
        provenance = run_provenance(recipe, run_dir, chosen, context)
        dtype = DTYPES.get(str(_set(recipe.get("trainer")).get("dtype", "float32")).removeprefix("torch."),
                           torch.float32)
    else:
        assert card is not None
        name = card
        provenance = {"model card": card}
    try:
        model_card = context.asset_store.retrieve_card(name)
    except Exception as ex:  # fairseq2's AssetCardNotFoundError and kin
        raise ExportError(f"no model card named {name!r} ({ex}); give the directory that holds it as --assets-dir "
                          "DIR.") from None
    family = model_card.field("model_family").as_(str)
    from fspo_recipe.models.families import FAMILIES

    if family not in FAMILIES or FAMILIES[family].hf_export is None:
        exportable = [n for n, f in FAMILIES.items() if f.hf_export is not None]
        raise ExportError(f"model family {family!r} of {name!r} has no Hugging Face export; exportable: "
                          f"{', '.join(exportable)}.")
    try:
        with packed_model_families(context):
            handler = context.get_registry(ModelHandler).get(family)
            config = unstructure(handler.load_config(model_card))
            model = load_reference_model(DecoderModel, context, name, fake_gangs(torch.device("cpu")), torch.float32,
                                         mp=False)
        tokenizer_dir = _tokenizer_dir(context, model_card)
    except load_error_types() as ex:  # a card the run names (its base model's, its tokenizer's) is not found
        raise ExportError(f"{name!r} cannot be loaded ({describe_load_error(ex)}); give the directory of the cards "
                          "it was trained with as --assets-dir DIR.") from None
    state = dict(model.state_dict())
    read_from = [p for p in (_checkpoint_dir(model_card), tokenizer_dir) if p is not None]
    base = provenance.get("base model")
    return Source(name=str(base or name), family=family, config=config, state=state, tokenizer_dir=tokenizer_dir,
                  dtype=dtype, provenance=provenance, read_from=read_from)


def _first_line(ex: BaseException) -> str:
    lines = str(ex).strip().splitlines()
    return lines[0] if lines else type(ex).__name__


def _checkpoint_dir(card: Any) -> Path | None:
    """The local directory of ``card``'s checkpoint (the file's directory for a file); None for a remote one."""
    from urllib.parse import unquote, urlparse

    try:
        uri = urlparse(card.field("checkpoint").as_uri())
    except Exception:  # noqa: BLE001 (a card without a local checkpoint has nothing an output could be inside)
        return None
    if uri.scheme != "file":
        return None
    path = Path(unquote(uri.path))
    return path if path.is_dir() else path.parent


def _set(section: object) -> dict[str, Any]:
    """A section of a run's config.yaml (fairseq2 writes the dataclass fields under ``_set_``)."""
    if not isinstance(section, dict):
        return {}
    return {**{k: v for k, v in section.items() if k != "_set_"}, **(section.get("_set_") or {})}


def _tokenizer_dir(context: Any, card: Any) -> Path | None:
    """The Hugging Face tokenizer directory of ``card`` (or of the card its ``tokenizer_ref`` names, as a run's
    checkpoint card does); None when the model's tokenizer is another kind."""
    from fspo_recipe.models.hf_tokenizer import HF_TOKENIZER_FAMILY

    for _ in range(8):  # a chain of references, not a loop
        metadata = card.metadata
        if "tokenizer_ref" in metadata:
            card = context.asset_store.retrieve_card(str(metadata["tokenizer_ref"]))
            continue
        if metadata.get("tokenizer_family") != HF_TOKENIZER_FAMILY or "tokenizer" not in metadata:
            return None
        path = context.asset_download_manager.download_tokenizer(card.field("tokenizer").as_uri(), card.name)
        return path if (path / "tokenizer.json").is_file() else None
    return None


def run_provenance(recipe: Mapping[str, Any], run_dir: Path, step: int, context: Any) -> dict[str, Any]:
    """What a run was trained from and how, from its config.yaml (and its data set's first example: the shots)."""
    model, dataset, criterion = _set(recipe.get("model")), _set(recipe.get("dataset")), _set(recipe.get("criterion"))
    optimizer = _set(_set(recipe.get("optimizer")).get("config"))
    loss_config = _set(criterion.get("config"))
    out: dict[str, Any] = {"run": str(run_dir.resolve()), "step": step, "base model": model.get("name"),
                           "criterion": criterion.get("name"), "loss": loss_config.get("loss"),
                           "data set": dataset.get("name") or dataset.get("path"), "learning rate": optimizer.get("lr"),
                           "batch size": dataset.get("batch_size")}
    shots = _dataset_shots(context, dataset.get("name"))
    if shots is not None:
        out["shots"] = shots
    return {k: v for k, v in out.items() if v is not None}


def _dataset_shots(context: Any, name: object) -> int | None:
    """``num_shots`` of the first example of a prepared data set card (None when it cannot be read)."""
    from fspo_recipe.eval.data import dataset_file

    if not isinstance(name, str):
        return None
    try:
        with dataset_file(context, name).open(encoding="utf-8") as fp:
            return int(json.loads(fp.readline())["num_shots"])
    except Exception:  # noqa: BLE001 (provenance is best effort: a data set moved since training is no reason to refuse)
        return None


def parse_size(text: str) -> int:
    """``5GB``, ``500MB``, ``1000000`` -> bytes (powers of 1000, as transformers' ``max_shard_size``)."""
    match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([KMG]?B?)\s*", text.upper())
    if not match:
        raise argparse.ArgumentTypeError(f"expected a size such as 5GB, 500MB or a number of bytes, got {text!r}")
    unit = {"": 1, "B": 1, "K": 10**3, "KB": 10**3, "M": 10**6, "MB": 10**6, "G": 10**9, "GB": 10**9}[match.group(2)]
    size = int(float(match.group(1)) * unit)
    if size < 1:  # 0 would put every tensor in a file of its own
        raise argparse.ArgumentTypeError(f"expected a size of at least 1 byte, got {text!r}")
    return size


def shard(tensors: Mapping[str, Tensor], max_bytes: int) -> list[dict[str, Tensor]]:
    """Tensors in order, in shards of at most ``max_bytes`` (a larger tensor gets a shard alone)."""
    shards: list[dict[str, Tensor]] = [{}]
    size = 0
    for name, tensor in tensors.items():
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and size + nbytes > max_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = tensor
        size += nbytes
    return shards


def generation_config(config: Mapping[str, Any], tokenizer_dir: Path | None) -> dict[str, Any]:
    """generation_config.json: BOS, pad, and as ``eos_token_id`` the model's EOS and the tokenizer's end-of-turn
    token (``eos_token`` of tokenizer_config.json) where they differ."""
    vocab = config["vocab_info"]
    ends = [vocab.get("eos_idx")]
    if tokenizer_dir is not None:
        from fspo_recipe.models.hf_tokenizer import HfTokenizer

        tokenizer = HfTokenizer(tokenizer_dir)
        ends.append(tokenizer.vocab_info.eos_idx)
    ends = [e for i, e in enumerate(ends) if e is not None and e not in ends[:i]]
    return {"bos_token_id": vocab.get("bos_idx"), "eos_token_id": ends[0] if len(ends) == 1 else ends,
            "pad_token_id": vocab.get("pad_idx"), "do_sample": False}


def model_card_text(source: Source, family_name: str, tokenizer: bool) -> str:
    lines = [f"# {source.name}, exported by fspo-export-hf", "",
             f"A {family_name} model trained with fspo-fairseq2 (few-shot preference optimization), in Hugging "
             "Face's format.", ""]
    lines += [f"- {key}: {value}" for key, value in source.provenance.items()]
    if not tokenizer:
        lines += ["", "No tokenizer files: the model's tokenizer is not a Hugging Face one (use the tokenizer of the "
                  "model the run started from)."]
    return "\n".join(lines) + "\n"


def export(source: Source, out: Path, *, dtype: torch.dtype | None, max_shard_bytes: int) -> list[str]:
    """Write the export of ``source`` into ``out`` (replaced as a whole); return the names of the files written."""
    from safetensors.torch import save_file

    from fspo_recipe.models.families import FAMILIES

    family = FAMILIES[source.family]
    assert family.hf_export is not None
    config = source.config
    tied = bool(config.get("tied_embeddings"))
    if tied and "final_proj.weight" in source.state and not torch.equal(source.state["final_proj.weight"],
                                                                          source.state["decoder_frontend.embed.weight"]):
        raise ExportError("the configuration says tied embeddings but the output projection differs from the "
                          "embedding.")
    dtype = dtype or source.dtype
    tensors = {k: v.detach().to(dtype).contiguous()
               for k, v in hf_tensors(source.state, num_heads=config["num_attn_heads"],
                                      num_kv_heads=config["num_key_value_heads"], tied=tied).items()}
    hf_config = family.hf_export(config, {k: tuple(v.shape) for k, v in tensors.items()})
    hf_config["torch_dtype"] = str(dtype).removeprefix("torch.")
    written = []
    with atomic_directory(out) as tmp:
        shards = shard(tensors, max_shard_bytes)
        if len(shards) == 1:
            save_file(shards[0], str(tmp / "model.safetensors"), metadata={"format": "pt"})
            written.append("model.safetensors")
        else:
            weight_map, total = {}, sum(t.numel() * t.element_size() for t in tensors.values())
            for i, part in enumerate(shards, 1):
                file = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
                save_file(part, str(tmp / file), metadata={"format": "pt"})
                weight_map |= {k: file for k in part}
                written.append(file)
            (tmp / "model.safetensors.index.json").write_text(
                json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2) + "\n")
            written.append("model.safetensors.index.json")
        (tmp / "config.json").write_text(json.dumps(hf_config, indent=2) + "\n")
        (tmp / "generation_config.json").write_text(
            json.dumps(generation_config(config, source.tokenizer_dir), indent=2) + "\n")
        written += ["config.json", "generation_config.json"]
        if source.tokenizer_dir is not None:
            for name in TOKENIZER_FILES:
                if (source.tokenizer_dir / name).is_file():
                    shutil.copyfile(source.tokenizer_dir / name, tmp / name)
                    written.append(name)
        (tmp / "README.md").write_text(model_card_text(source, family.hf_architecture or family.name,
                                                       source.tokenizer_dir is not None))
        written += ["README.md", EXPORT_MARK]
        (tmp / EXPORT_MARK).write_text(json.dumps({"written_by": "fspo-export-hf", **source.provenance,
                                                   "files": written}, indent=1, default=str) + "\n")
    return written


def check_output(out: Path, sources: Sequence[Path], overwrite: bool) -> None:
    """Refuse an output inside a source, a non-empty directory without ``overwrite``, and with it one this command
    did not write."""
    resolved = out.expanduser().resolve()
    for source in sources:
        src = source.expanduser().resolve()
        if resolved == src or src in resolved.parents:
            raise ExportError(f"the output {out} is inside the source {source}; choose a directory outside it.")
        if resolved in src.parents:
            raise ExportError(f"the source {source} is inside the output {out}, which an export replaces as a whole; "
                              "choose an output directory outside it.")
    if resolved.exists() and not resolved.is_dir():
        raise ExportError(f"the output {out} is a file, not a directory.")
    if resolved.is_dir() and any(resolved.iterdir()):
        if not overwrite:
            raise ExportError(f"the output {out} exists and is not empty; pass --overwrite to replace an export.")
        if not (resolved / EXPORT_MARK).is_file():
            raise ExportError(f"the output {out} was not written by fspo-export-hf (no {EXPORT_MARK}); not replacing "
                              "it.")
        foreign = sorted(p.name for p in resolved.iterdir() if p.name not in _export_files(resolved))
        if foreign:
            raise ExportError(f"the output {out} holds {', '.join(foreign[:3])}{' ...' if len(foreign) > 3 else ''}, "
                              "which fspo-export-hf did not write; move it away or choose another output directory.")


def _export_files(directory: Path) -> set[str]:
    """The names an earlier export wrote into ``directory`` (its mark's list; an export of a version before the list:
    every name an export writes)."""
    try:
        files = json.loads((directory / EXPORT_MARK).read_text(encoding="utf-8")).get("files")
    except (OSError, ValueError, AttributeError):
        files = None
    if isinstance(files, list):
        return {str(f) for f in files} | {EXPORT_MARK}
    return {p.name for p in directory.iterdir() if p.name in (*TOKENIZER_FILES, "config.json", "generation_config.json",
            "README.md", "model.safetensors", "model.safetensors.index.json", EXPORT_MARK)
            or (p.name.startswith("model-") and p.name.endswith(".safetensors"))}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fspo-export-hf", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", type=Path, nargs="+", metavar="[RUN_DIR] OUT_DIR",
                        help="a training run's output directory and the directory to write (with --card: OUT_DIR only)")
    parser.add_argument("--card", help="export the model of this card instead of a run")
    parser.add_argument("--assets-dir", type=Path, help="extra fairseq2 card directory (for --card)")
    parser.add_argument("--step", type=int, help="the checkpoint step of the run (default: its last)")
    parser.add_argument("--dtype", choices=list(DTYPES), help="weights' dtype (default: the run's training dtype; "
                        "float32 for a card)")
    parser.add_argument("--max-shard-size", type=parse_size, default=parse_size("5GB"),
                        help="largest safetensors file before the weights are sharded (default: 5GB)")
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier export in OUT_DIR")
    args = parser.parse_args(argv)
    if args.card is None and len(args.paths) != 2:
        parser.error("give RUN_DIR OUT_DIR, or --card NAME OUT_DIR")
    if args.card is not None and len(args.paths) != 1:
        parser.error("with --card give only OUT_DIR")
    if args.card is not None and args.step is not None:
        parser.error("--step goes with a run directory, not --card")
    run_dir, out = (None, args.paths[0]) if args.card else (args.paths[0], args.paths[1])

    def body() -> int:
        check_output(out, [p for p in (run_dir, args.assets_dir) if p is not None], args.overwrite)
        lock = OutputLock(out, "fspo-export-hf", directory=False).acquire()  # beside: the directory is replaced
        try:
            source = load_source(run_dir, args.card, args.step, args.assets_dir)
            check_output(out, source.read_from, args.overwrite)
            written = export(source, out, dtype=DTYPES.get(args.dtype) if args.dtype else None,
                             max_shard_bytes=args.max_shard_size)
        finally:
            lock.release()
        params = sum(t.numel() for n, t in source.state.items()
                     if not (n == "final_proj.weight" and source.config.get("tied_embeddings")))
        print(f"wrote {out}: {len(written)} files, {params / 1e6:.1f}M parameters"
              + ("" if source.tokenizer_dir else "; no tokenizer files (the model's tokenizer is not a Hugging Face "
                 "one)"))
        return 0

    return run_command("fspo-export-hf", body, {(ExportError, OutputInUseError, OSError): 1, Terminated: 143})


if __name__ == "__main__":
    raise SystemExit(main())


