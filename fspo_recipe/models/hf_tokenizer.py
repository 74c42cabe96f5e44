"""Hugging Face tokenizers (``tokenizer.json`` through the ``tokenizers`` library) as fairseq2 text tokenizers, with
the special tokens and chat template of ``tokenizer_config.json``; the ``hf_tokenizer`` family."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import torch
from torch import Tensor

from fairseq2.assets import AssetCard, AssetCardError
from fairseq2.data import VocabularyInfo
from fairseq2.data.text.tokenizers import AbstractTextTokenizer, TextTokenDecoder, TextTokenEncoder
from fairseq2.data.text.tokenizers import TextTokenizerHandler
from fairseq2.typing import Device

from fspo_recipe.models.hub import HUB_SCHEME, card_text, hub_snapshot

HF_TOKENIZER_FAMILY: Final = "hf_tokenizer"


class HfImportError(ValueError):
    """A Hugging Face directory this plugin cannot represent exactly; the message names the file and the field."""


def _token_text(value: object) -> str | None:
    """A special token of tokenizer_config.json: a string, or an object with its ``content``."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


class HfTokenizer(AbstractTextTokenizer):
    """A Hugging Face ``tokenizer.json`` through the ``tokenizers`` library, as a fairseq2 text tokenizer.

    Encoder modes: ``prompt`` adds what the tokenizer's own post-processor adds (llama 3: ``<|begin_of_text|>``;
    Qwen3: nothing), ``prompt_response`` adds no prefix and appends the end-of-sequence token, ``default`` does both,
    ``as_is`` neither (for chat-template text, which carries its own special tokens).
    """

    def __init__(self, path: Path) -> None:
        from tokenizers import Tokenizer

        directory = path if path.is_dir() else path.parent
        file = path if path.is_file() else path / "tokenizer.json"
        if not file.is_file():
            raise HfImportError(f"{file} does not exist: a Hugging Face tokenizer needs its tokenizer.json.")
        try:
            self._tokenizer = Tokenizer.from_file(str(file))
        except Exception as ex:  # noqa: BLE001 (the tokenizers library raises its own exception types)
            raise HfImportError(f"{file} is not a tokenizers file ({ex}).") from None
        config = read_json(directory / "tokenizer_config.json", required=False)
        model_config = read_json(directory / "config.json", required=False)

        def token_id(name: str) -> int | None:
            text = _token_text(config.get(f"{name}_token"))
            if text is not None and (idx := self._tokenizer.token_to_id(text)) is not None:
                return int(idx)
            value = model_config.get(f"{name}_token_id")
            value = value[0] if isinstance(value, list) and value else value
            return int(value) if isinstance(value, int) else None

        eos = token_id("eos")
        pad = token_id("pad")
        vocab_info = VocabularyInfo(self._tokenizer.get_vocab_size(with_added_tokens=True), unk_idx=token_id("unk"),
                                    bos_idx=token_id("bos"), eos_idx=eos, pad_idx=pad if pad is not None else eos)
        super().__init__(vocab_info)
        self.special_tokens = {t.content for t in self._tokenizer.get_added_tokens_decoder().values() if t.special}
        template = config.get("chat_template")
        if template is None and (directory / "chat_template.jinja").is_file():  # transformers 5 saves it apart
            template = (directory / "chat_template.jinja").read_text(encoding="utf-8")
        if isinstance(template, list):  # several named templates: the default one
            template = next((t.get("template") for t in template if t.get("name") == "default"), None)
        self.chat_template: ChatTemplate | None = None
        if isinstance(template, str):
            strings = {k: _token_text(config.get(k)) or "" for k in ("bos_token", "eos_token", "unk_token", "pad_token")}
            self.chat_template = ChatTemplate(template, strings, self.special_tokens)

    def create_encoder(self, *, task: str | None = None, lang: str | None = None, mode: str | None = None,
                       device: Device | None = None, pin_memory: bool = False) -> TextTokenEncoder:
        mode = mode or "default"
        if mode not in ("default", "prompt", "prompt_response", "as_is"):
            raise ValueError(f"Unknown encoding mode '{mode}'; expected default, prompt, prompt_response or as_is.")
        eos = [self.vocab_info.eos_idx] if mode in ("default", "prompt_response") and self.vocab_info.eos_idx is not None else []
        return HfEncoder(self._tokenizer, mode in ("default", "prompt"), eos, device)

    def create_raw_encoder(self, *, device: Device | None = None, pin_memory: bool = False) -> TextTokenEncoder:
        return HfEncoder(self._tokenizer, False, [], device)

    def create_decoder(self) -> TextTokenDecoder:
        return HfDecoder(self._tokenizer)

    @property
    def tokenizer(self) -> Any:
        """The ``tokenizers.Tokenizer``."""
        return self._tokenizer


class HfEncoder(TextTokenEncoder):
    def __init__(self, tokenizer: Any, special: bool, suffix: list[int], device: Device | None) -> None:
        self._tokenizer, self._special, self._suffix, self._device = tokenizer, special, suffix, device

    def __call__(self, text: str) -> Tensor:
        ids = self._tokenizer.encode(text, add_special_tokens=self._special).ids + self._suffix
        return torch.tensor(ids, dtype=torch.int64, device=self._device)

    def encode_as_tokens(self, text: str) -> list[str]:
        return list(self._tokenizer.encode(text, add_special_tokens=self._special).tokens)

    @property
    def prefix_indices(self) -> Tensor | None:
        return None

    @property
    def suffix_indices(self) -> Tensor | None:
        return torch.tensor(self._suffix, dtype=torch.int64, device=self._device) if self._suffix else None


class HfDecoder(TextTokenDecoder):
    def __init__(self, tokenizer: Any) -> None:
        self._tokenizer = tokenizer

    def __call__(self, token_indices: Tensor) -> str:
        return str(self._tokenizer.decode(token_indices.tolist(), skip_special_tokens=False))

    def decode_from_tokens(self, tokens: Sequence[str]) -> str:
        return self(torch.tensor([self._tokenizer.token_to_id(t) for t in tokens]))


class HfTokenizerHandler(TextTokenizerHandler):
    """The ``hf_tokenizer`` family: a card's ``tokenizer`` is a Hugging Face directory (or its tokenizer.json), or a
    hub repository ``hf://ORG/NAME``."""

    def __init__(self, asset_download_manager: Any) -> None:
        self._downloads = asset_download_manager

    def load(self, card: AssetCard) -> HfTokenizer:
        uri = card_text(card, "tokenizer")
        if uri is None:
            raise AssetCardError(card.name, f"The '{card.name}' asset card has no 'tokenizer' field.")
        if uri.startswith(HUB_SCHEME):
            path = hub_snapshot(uri, ["tokenizer.json", "tokenizer_config.json", "config.json"])
        else:
            path = self._downloads.download_tokenizer(card.field("tokenizer").as_uri(), card.name)
        return HfTokenizer(path)

    @property
    def family(self) -> str:
        return HF_TOKENIZER_FAMILY


class ChatTemplate:
    """A model's chat template (the Jinja text of its tokenizer_config.json), rendered as transformers renders it, so
    the FSPO prompt becomes the user turn and a response the assistant turn.

    :meth:`render_pair` returns (prompt text ending with the assistant header, response text ending with the
    template's end-of-turn token: the first special token after the response). The two concatenate to the rendered
    conversation, so their token ids are those of transformers' ``apply_chat_template``.
    """

    def __init__(self, template: str, token_strings: Mapping[str, str], special_tokens: set[str]) -> None:
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        def raise_exception(message: str) -> None:
            raise HfImportError(f"chat template: {message}")

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.globals["raise_exception"] = raise_exception
        env.filters["tojson"] = lambda x, indent=None, **kw: json.dumps(x, ensure_ascii=False, indent=indent)
        self._template = env.from_string(template)
        self._strings = dict(token_strings)
        self._special = sorted(special_tokens, key=len, reverse=True)

    def render(self, messages: list[dict[str, str]], *, add_generation_prompt: bool, **kwargs: Any) -> str:
        return str(self._template.render(messages=messages, add_generation_prompt=add_generation_prompt,
                                         **self._strings, **kwargs))

    @staticmethod
    def _messages(prompt: str | list[dict[str, str]]) -> list[dict[str, str]]:
        return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)

    def render_prompt(self, prompt: str | list[dict[str, str]], **kwargs: Any) -> str:
        """The user turn (or the conversation so far, a message list ending with a user turn) and the assistant
        header: what a model continues when it generates its answer."""
        return self.render(self._messages(prompt), add_generation_prompt=True, **kwargs)

    def render_pair(self, prompt: str | list[dict[str, str]], response: str, **kwargs: Any) -> tuple[str, str]:
        head = self.render_prompt(prompt, **kwargs)
        full = self.render([*self._messages(prompt), {"role": "assistant", "content": response}],
                           add_generation_prompt=False, **kwargs)
        if not full.startswith(head):
            raise HfImportError(
                "the chat template renders the assistant turn differently from its generation prompt, so the "
                "response cannot be split off (Qwen3 thinking models: pass chat_template_kwargs {enable_thinking: "
                "false})."
            )
        rest = full[len(head) :]
        start = rest.find(response.strip())
        if start < 0:
            raise HfImportError("the chat template does not reproduce the response text.")
        after = start + len(response.strip())
        ends = [(rest.find(tok, after), tok) for tok in self._special if rest.find(tok, after) >= 0]
        if not ends:
            raise HfImportError("the chat template writes no special end-of-turn token after the response.")
        at, token = min(ends)
        return head, rest[: at + len(token)]

    def end_of_turn(self, **kwargs: Any) -> str:
        """The special token that closes the assistant's turn (``<|im_end|>``, ``<|eot_id|>``): generation stops
        there."""
        _, turn = self.render_pair("Hi.", "Hello.", **kwargs)
        return next(tok for tok in self._special if turn.endswith(tok))


def read_json(path: Path, *, required: bool = True) -> dict[str, Any]:
    if not path.is_file():
        if required:
            raise HfImportError(f"{path} does not exist.")
        return {}
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as ex:
        raise HfImportError(f"{path} cannot be read as JSON ({ex}).") from None
    if not isinstance(value, dict):
        raise HfImportError(f"{path} is not a JSON object.")
    return value
