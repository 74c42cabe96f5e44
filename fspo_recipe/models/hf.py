"""``fspo-hf-card``: the asset card of a local Hugging Face model directory, written only when the directory is one
this plugin represents exactly (its config.json translated to the family's fairseq2 configuration, every tensor
checked against it). Tokenizers and chat templates: :mod:`fspo_recipe.models.hf_tokenizer`; hub repositories:
:mod:`fspo_recipe.models.hub`.

    fspo-hf-card ~/models/Qwen3-4B --name qwen3_4b_local --out cards/
    fairseq2 lm preference_finetune runs/sft --preset fspo_sft \\
        --config common.assets.extra_path=cards model.name=qwen3_4b_local ...

A Hugging Face directory holds ``config.json``, ``*.safetensors`` (one file, or shards with
``model.safetensors.index.json``), ``tokenizer.json`` and ``tokenizer_config.json`` (special tokens, chat template).
fairseq2 reads the safetensors files itself; the family's converter maps the tensor names (and fails on a missing or
unused tensor). Pickled checkpoints (``*.bin``, ``*.pt``) are refused.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final

from fspo_recipe.cli import run_command
from fspo_recipe.files import atomic_file
from fspo_recipe.models.families import hf_families
from fspo_recipe.models.hf_tokenizer import HF_TOKENIZER_FAMILY, HfImportError, HfTokenizer, read_json


_DTYPE_BYTES: Final = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
                       "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}


def safetensors_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """The tensors (name -> shape) of a safetensors file, read from its header; a file cut short (or with bytes
    after its last tensor, or a tensor whose bytes do not match its shape) is refused naming it."""
    size = path.stat().st_size
    with path.open("rb") as fp:
        head = fp.read(8)
        length = int.from_bytes(head, "little") if len(head) == 8 else -1
        if length < 2 or 8 + length > size:
            raise HfImportError(f"{path}: not a complete safetensors file (its header is cut short: {size} bytes).")
        try:
            header = json.loads(fp.read(length))
        except ValueError as ex:
            raise HfImportError(f"{path}: the safetensors header is not JSON ({ex}).") from None
    if not isinstance(header, dict):
        raise HfImportError(f"{path}: the safetensors header is not a JSON object.")
    shapes: dict[str, tuple[int, ...]] = {}
    end = 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            shape, (start, stop), dtype = tuple(int(d) for d in info["shape"]), info["data_offsets"], info["dtype"]
        except (KeyError, TypeError, ValueError):
            raise HfImportError(f"{path}: the header entry of '{name}' has no shape, dtype and data_offsets.") from None
        count = 1
        for d in shape:
            count *= d
        if dtype in _DTYPE_BYTES and stop - start != count * _DTYPE_BYTES[dtype]:
            raise HfImportError(f"{path}: tensor '{name}' {list(shape)} {dtype} should take "
                                f"{count * _DTYPE_BYTES[dtype]} bytes, its offsets give {stop - start}.")
        shapes[name], end = shape, max(end, int(stop))
    if 8 + length + end != size:
        what = "cut short" if 8 + length + end > size else "longer than its tensors"
        raise HfImportError(f"{path}: the file is {what} ({size} bytes; its header describes {8 + length + end}): "
                            "download it again.")
    return shapes


def check_tensors(directory: Path, files: Sequence[Path], expected: Mapping[str, tuple[int, ...]], *,
                  tied: bool) -> None:
    """Every tensor of the safetensors ``files`` has the name and shape the model configuration implies, and none
    is missing (``lm_head.weight`` may be when the embeddings are tied): what fairseq2 would otherwise report as
    several tracebacks when the card is loaded."""
    found: dict[str, tuple[int, ...]] = {}
    for path in files:
        for name, shape in safetensors_shapes(path).items():
            if name in found:
                raise HfImportError(f"{path}: tensor '{name}' is also in another shard of {directory}.")
            found[name] = shape
    wrong = [f"{n} is {list(found[n])}, config.json implies {list(shape)}" for n, shape in expected.items()
             if n in found and found[n] != shape]
    missing = [n for n in expected if n not in found and not (tied and n == "lm_head.weight")]
    unused = [n for n in found if n not in expected]
    for problems, what in ((wrong, "tensors disagree with config.json"), (missing, "tensors are missing"),
                           (unused, "tensors have no place in the model config.json describes")):
        if problems:
            shown = "; ".join(problems[:3]) + (f"; and {len(problems) - 3} more" if len(problems) > 3 else "")
            raise HfImportError(f"{directory}: {len(problems)} {what}: {shown}.")


def check_weights(directory: Path) -> list[Path]:
    """The safetensors files of ``directory``; every shard its index names must exist. Pickles are refused."""
    files = sorted(directory.glob("*.safetensors"))
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        weight_map = read_json(index).get("weight_map")
        if not isinstance(weight_map, dict):
            raise HfImportError(f"{index}: field 'weight_map' is missing.")
        missing = sorted({str(f) for f in weight_map.values()} - {f.name for f in files})
        if missing:
            raise HfImportError(f"{index} names shard(s) that are not in {directory}: {', '.join(missing)}.")
    if not files:
        pickles = [p.name for p in directory.iterdir() if p.suffix in (".bin", ".pt", ".pth")]
        hint = f" ({', '.join(pickles)} are pickles, which this plugin does not load)" if pickles else ""
        raise HfImportError(f"{directory} has no *.safetensors file{hint}; convert the weights to safetensors.")
    return files


def hf_card(directory: Path, name: str) -> dict[str, Any]:
    """The asset card (as a dict) of the Hugging Face model directory ``directory``; see :func:`main`."""
    directory = directory.expanduser().resolve()
    if not directory.is_dir():
        raise HfImportError(f"{directory} is not a directory (expected a Hugging Face model directory).")
    where = directory / "config.json"
    config = read_json(where)
    families, model_type = hf_families(), config.get("model_type")
    family = families.get(model_type) if isinstance(model_type, str) else None
    if family is None:
        raise HfImportError(f"{where}: model_type {model_type!r} is not supported; supported: "
                            f"{', '.join(families)} (architectures {config.get('architectures')}).")
    files = check_weights(directory)
    if not (directory / "tokenizer_config.json").is_file():
        raise HfImportError(f"{directory / 'tokenizer_config.json'} does not exist: the special tokens and the chat "
                            "template of the model are unknown without it.")
    tokenizer = HfTokenizer(directory)
    assert family.hf_config is not None and family.hf_tensors is not None  # hf_families() has only such
    model_config = family.hf_config(config, where, tokenizer)
    check_tensors(directory, files, family.hf_tensors(model_config),
                  tied=bool(config.get("tie_word_embeddings", False)))
    top = max(tokenizer.tokenizer.get_vocab().values())
    if top >= model_config["vocab_info"]["size"]:
        raise HfImportError(f"{directory / 'tokenizer.json'}: token id {top} does not fit the embedding of "
                            f"{model_config['vocab_info']['size']} rows (config.json vocab_size): another model's "
                            "tokenizer?")
    return {"name": name, "model_family": family.name, "model_arch": family.hf_arch,
            "model_config": {"_set_": model_config},
            "checkpoint": str(directory), "tokenizer": str(directory), "tokenizer_family": HF_TOKENIZER_FAMILY}


def write_hf_card(directory: Path, name: str, out: Path) -> Path:
    """Write ``out/NAME.yaml`` for the Hugging Face directory ``directory``; return its path."""
    import yaml

    card = hf_card(directory, name)
    if out.exists() and not out.is_dir():
        raise HfImportError(f"--out {out} is a file, not a directory.")
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.yaml"
    with atomic_file(path) as fp:
        fp.write(f"# Written by `fspo-hf-card {directory}`: the model, its weights and its tokenizer.\n")
        fp.write(yaml.safe_dump(card, sort_keys=False))
    return path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fspo-hf-card", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("hf_dir", type=Path, help="a Hugging Face model directory (config.json, *.safetensors, "
                        "tokenizer.json)")
    parser.add_argument("--name", required=True, help="the asset name to give the model (model.name=NAME)")
    parser.add_argument("--out", type=Path, required=True, help="the card directory to write NAME.yaml into")
    args = parser.parse_args(argv)
    def body() -> int:
        path = write_hf_card(args.hf_dir, args.name, args.out)
        print(f"wrote {path}: use --config common.assets.extra_path={args.out} model.name={args.name}")
        return 0

    return run_command("fspo-hf-card", body, {(HfImportError, OSError): 1})


if __name__ == "__main__":
    raise SystemExit(main())
