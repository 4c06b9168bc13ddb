"""The model's tokenizer as localtgi serves with it: a `tokenizers.Tokenizer` plus chat template and
special tokens, without transformers.

Use `Tokenizer.from_directory` on a saved model (``tokenizer.json``, ``tokenizer_config.json``,
``special_tokens_map.json``, ``chat_template.jinja`` / ``chat_template.json``) and
`Tokenizer.from_transformers` when a transformers tokenizer is already at hand (the tiny model, a
directory loaded with ``from_pretrained``), so that one type serves every model. Encoding and
decoding are the Rust tokenizer's own; the chat template is rendered the way transformers renders
it (a sandboxed, immutable Jinja environment with ``trim_blocks`` / ``lstrip_blocks``,
``raise_exception``, a ``tojson`` that does not escape HTML, the special tokens and
``add_generation_prompt`` in the context), and the tests check both token for token against
transformers. Not supported: transformers' ``clean_up_tokenization_spaces`` (a WordPiece clean-up
that transformers itself skips for BPE tokenizers) and tokenizers that have no ``tokenizer.json``.

Why not transformers: importing its tokenizer stack costs about 200 MB of resident memory in the
serving process, for nothing this class does not do.
"""

from __future__ import annotations

import copy
import datetime
import json
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

import jinja2
import jinja2.ext
import jinja2.nodes
import jinja2.parser
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import AddedToken
from tokenizers import Tokenizer as RustTokenizer

from localtgi.errors import ModelLoadError
from localtgi.json_files import read_object

_NAMED_SPECIALS = ("bos_token", "eos_token", "unk_token", "pad_token", "sep_token", "cls_token", "mask_token")
Message = Mapping[str, Any]


class Tokenizer:
    """Encode, decode and chat-template rendering for one model; thread-safe for these calls."""

    def __init__(
        self,
        backend: RustTokenizer,
        *,
        chat_template: str | None = None,
        special_tokens: Mapping[str, str] | None = None,
    ) -> None:
        """`backend` becomes this tokenizer's own (padding and truncation are turned off on it: pass
        a copy of one that is used elsewhere); `special_tokens` maps names such as ``eos_token`` to
        the token's text."""
        self._backend = backend
        self._backend.no_padding()
        self._backend.no_truncation()
        self._chat_template = chat_template or None
        self._compiled: jinja2.Template | None = None
        self.special_tokens: dict[str, str] = {
            k: v for k, v in (special_tokens or {}).items() if isinstance(v, str)
        }
        for name, token in self.special_tokens.items():
            if self._backend.token_to_id(token) is None:
                raise ModelLoadError(f"special token {name}={token!r} is not in the vocabulary")
        specials = {self._id(t) for t in self.special_tokens.values()}
        specials |= {i for i, t in self._backend.get_added_tokens_decoder().items() if t.special}
        self.special_ids = frozenset(specials)

    # ----- construction ------------------------------------------------------------------------

    @classmethod
    def from_directory(cls, directory: str | pathlib.Path) -> Tokenizer:
        """Read a tokenizer saved by transformers (or `save_pretrained`) from `directory`."""
        root = pathlib.Path(directory)
        try:
            backend = RustTokenizer.from_file(str(root / "tokenizer.json"))
        except Exception as exc:  # noqa: BLE001 - the Rust error types are not public
            raise ModelLoadError(f"cannot read {root / 'tokenizer.json'}: {exc}") from exc
        config = read_object(root / "tokenizer_config.json") or {}
        specials = {
            name: text
            for source in (config, read_object(root / "special_tokens_map.json") or {})
            for name, value in source.items()
            if name in _NAMED_SPECIALS and (text := _token_text(value)) is not None
        }
        _add_declared_tokens(backend, config.get("added_tokens_decoder"))
        return cls(backend, chat_template=_chat_template(root, config), special_tokens=specials)

    @classmethod
    def from_transformers(cls, hf_tokenizer: Any) -> Tokenizer:
        """Wrap a transformers fast tokenizer: its Rust backend, chat template and special tokens."""
        specials = {
            name: value
            for name, value in dict(hf_tokenizer.special_tokens_map).items()
            if name in _NAMED_SPECIALS and isinstance(value, str)
        }
        template = hf_tokenizer.chat_template if isinstance(hf_tokenizer.chat_template, str) else None
        # A copy (about 20 MB for a 49k vocabulary): the transformers tokenizer keeps its own settings.
        backend = copy.copy(hf_tokenizer.backend_tokenizer)
        return cls(backend, chat_template=template, special_tokens=specials)

    def save_pretrained(self, directory: str | pathlib.Path) -> None:
        """Write ``tokenizer.json``, ``tokenizer_config.json`` and ``chat_template.jinja`` (readable by
        `from_directory` and by transformers' ``AutoTokenizer``)."""
        root = pathlib.Path(directory)
        root.mkdir(parents=True, exist_ok=True)
        self._backend.save(str(root / "tokenizer.json"))
        config = {"tokenizer_class": "TokenizersBackend", **self.special_tokens}
        (root / "tokenizer_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
        if self.chat_template is not None:
            (root / "chat_template.jinja").write_text(self.chat_template, encoding="utf-8")

    # ----- vocabulary --------------------------------------------------------------------------

    @property
    def backend_tokenizer(self) -> RustTokenizer:
        """The Rust tokenizer (for `tokenizers.decoders.DecodeStream`); do not reconfigure it."""
        return self._backend

    def __len__(self) -> int:
        return int(self._backend.get_vocab_size(with_added_tokens=True))

    def to_json(self) -> str:
        """The tokenizer as ``tokenizer.json`` text (what llguidance builds its own from)."""
        return str(self._backend.to_str())

    def convert_tokens_to_ids(self, token: str) -> int | None:
        found = self._backend.token_to_id(token)
        return None if found is None else int(found)

    def convert_ids_to_tokens(self, ids: Sequence[int]) -> list[str | None]:
        return [self._backend.id_to_token(int(i)) for i in ids]

    def _special(self, name: str) -> str | None:
        return self.special_tokens.get(name)

    def _id(self, token: str | None) -> int:
        found = self._backend.token_to_id(token) if token is not None else None
        if found is None:
            raise ModelLoadError(f"token {token!r} is not in the vocabulary")
        return int(found)

    @property
    def eos_token(self) -> str | None:
        return self._special("eos_token")

    @property
    def bos_token(self) -> str | None:
        return self._special("bos_token")

    @property
    def pad_token(self) -> str | None:
        return self._special("pad_token")

    @property
    def eos_token_id(self) -> int | None:
        return self.convert_tokens_to_ids(self.eos_token) if self.eos_token else None

    @property
    def bos_token_id(self) -> int | None:
        return self.convert_tokens_to_ids(self.bos_token) if self.bos_token else None

    @property
    def pad_token_id(self) -> int | None:
        return self.convert_tokens_to_ids(self.pad_token) if self.pad_token else None

    # ----- text --------------------------------------------------------------------------------

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids of `text`; `add_special_tokens` applies the tokenizer's post-processor (BOS...)."""
        return list(self._backend.encode(text, add_special_tokens=add_special_tokens).ids)

    def encode_with_offsets(
        self, text: str, add_special_tokens: bool = True
    ) -> tuple[list[int], list[tuple[int, int]]]:
        """Token ids with each token's (start, stop) character span in `text`."""
        enc = self._backend.encode(text, add_special_tokens=add_special_tokens)
        return list(enc.ids), [(int(a), int(b)) for a, b in enc.offsets]

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        return str(self._backend.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens))

    # ----- chat --------------------------------------------------------------------------------

    @property
    def chat_template(self) -> str | None:
        """The Jinja chat template (None: the model has none)."""
        return self._chat_template

    @chat_template.setter
    def chat_template(self, template: str | None) -> None:
        self._chat_template = template or None
        self._compiled = None

    def apply_chat_template(
        self,
        conversation: Sequence[Message],
        *,
        add_generation_prompt: bool = False,
        tokenize: bool = False,
    ) -> Any:
        """The prompt the model's chat template makes of `conversation` (or its token ids when
        `tokenize`, encoded without special tokens as transformers does). Template errors are
        `jinja2.TemplateError`s; the messages are plain data, they cannot reach Python objects."""
        if self.chat_template is None:
            raise jinja2.TemplateError("this tokenizer has no chat template")
        messages = [{str(k): _plain(v) for k, v in m.items()} for m in conversation]
        if self._compiled is None:
            self._compiled = _compile(self.chat_template)
        text = self._compiled.render(
            messages=messages,
            tools=None,
            documents=None,
            add_generation_prompt=add_generation_prompt,
            **self.special_tokens,
        )
        return self.encode(text, add_special_tokens=False) if tokenize else text


def _compile(template: str) -> jinja2.Template:
    """The template in transformers' environment: sandboxed and immutable (a template cannot reach
    Python objects or change its data), blocks trimmed, its helper functions and filters."""
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[_GenerationTag, jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env.from_string(template)


class _GenerationTag(jinja2.ext.Extension):
    """``{% generation %}...{% endgeneration %}`` (marks assistant text for training masks in
    transformers): rendered as its body."""

    tags = {"generation"}  # noqa: RUF012 - jinja's own class attribute

    def parse(self, parser: jinja2.parser.Parser) -> list[jinja2.nodes.Node]:
        next(parser.stream)
        return list(parser.parse_statements(("name:endgeneration",), drop_needle=True))


def _raise_exception(message: str) -> None:
    raise jinja2.TemplateError(message)


def _tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    # Jinja's own tojson escapes HTML characters, which would change the prompt.
    return json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


def _strftime_now(fmt: str) -> str:
    return datetime.datetime.now().strftime(fmt)


def _plain(value: Any) -> Any:
    """Only JSON data reaches the template (message fields come from requests)."""
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return f"<{type(value).__name__}>"


def _token_text(value: Any) -> str | None:
    """A special token as saved: its text, or an AddedToken dict with `content`."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return str(value["content"])
    return None


def _add_declared_tokens(backend: RustTokenizer, declared: Any) -> None:
    """Tokens declared in tokenizer_config.json's ``added_tokens_decoder`` but missing from
    tokenizer.json (older transformers saves) are added, at the id they were declared with."""
    if not isinstance(declared, dict):
        return
    for key, entry in sorted(declared.items(), key=lambda kv: int(kv[0])):
        text = _token_text(entry)
        if text is None or backend.token_to_id(text) is not None:
            continue
        token = AddedToken(
            text,
            single_word=bool(entry.get("single_word", False)),
            lstrip=bool(entry.get("lstrip", False)),
            rstrip=bool(entry.get("rstrip", False)),
            normalized=bool(entry.get("normalized", False)),
            special=bool(entry.get("special", False)),
        )
        backend.add_tokens([token])
        if backend.token_to_id(text) != int(key):
            raise ModelLoadError(f"added token {text!r} does not get its declared id {key}")


def _chat_template(root: pathlib.Path, config: Mapping[str, Any]) -> str | None:
    """The chat template, where transformers looks for it: chat_template.jinja, chat_template.json,
    then tokenizer_config.json (a string, or named templates of which "default" is used)."""
    jinja_file = root / "chat_template.jinja"
    if jinja_file.is_file():
        return jinja_file.read_text(encoding="utf-8")
    saved = read_object(root / "chat_template.json") or {}
    for value in (saved.get("chat_template"), config.get("chat_template")):
        if isinstance(value, str):
            return value
        if isinstance(value, list):
            named = {t.get("name"): t.get("template") for t in value if isinstance(t, dict)}
            if isinstance(named.get("default"), str):
                return str(named["default"])
    return None
