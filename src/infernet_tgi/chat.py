"""Chat templates: a chat job's `messages` turned into one prompt, for upstreams without a chat route.

Use `ChatTemplate.load(spec)` once at startup (`TGI_INF_CHAT_TEMPLATE`): `spec` is a built-in name
(`chatml`, `llama3`, `llama2`, `mistral`, `zephyr`), a Jinja2 chat template in Hugging Face's format
(as in a model's `tokenizer_config.json`), or `@/path/to/template.jinja`. Templates are rendered in
Jinja2's immutable sandbox with `messages`, `add_generation_prompt=True`, `bos_token` and `eos_token`,
as transformers' `apply_chat_template` does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jinja2 import Template, TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from .errors import ConfigError, UnsupportedRequestError

_CHATML = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
_LLAMA3 = (
    "{{ bos_token }}{% for m in messages %}{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>\n\n'"
    " + m['content'] | trim + '<|eot_id|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
_LLAMA2 = (
    "{% if messages[0]['role'] == 'system' %}{% set system = '<<SYS>>\n' + messages[0]['content'] + "
    "'\n<</SYS>>\n\n' %}{% set messages = messages[1:] %}{% else %}{% set system = '' %}{% endif %}"
    "{% for m in messages %}{% if m['role'] == 'user' %}{{ bos_token + '[INST] ' + (system if loop.first "
    "else '') + m['content'] | trim + ' [/INST]' }}{% elif m['role'] == 'assistant' %}"
    "{{ ' ' + m['content'] | trim + ' ' + eos_token }}{% endif %}{% endfor %}"
)
_MISTRAL = (
    "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}{{ '[INST] ' + m['content'] + "
    "' [/INST]' }}{% elif m['role'] == 'assistant' %}{{ m['content'] + eos_token }}{% endif %}{% endfor %}"
)
_ZEPHYR = (
    "{% for m in messages %}{{ '<|' + m['role'] + '|>\n' + m['content'] + eos_token + '\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)

# name -> (template, bos_token, eos_token)
BUILTIN: dict[str, tuple[str, str, str]] = {
    "chatml": (_CHATML, "", "<|im_end|>"),
    "llama3": (_LLAMA3, "<|begin_of_text|>", "<|eot_id|>"),
    "llama2": (_LLAMA2, "<s>", "</s>"),
    "mistral": (_MISTRAL, "<s>", "</s>"),
    "zephyr": (_ZEPHYR, "", "</s>"),
}


@dataclass(frozen=True)
class ChatTemplate:
    """A compiled chat template; `render` gives the prompt that opens the assistant's turn."""

    source: str
    bos_token: str = ""
    eos_token: str = ""
    name: str = "custom"
    _compiled: Template | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)

        def raise_exception(message: str) -> None:
            raise TemplateError(message)

        env.globals["raise_exception"] = raise_exception
        try:
            compiled = env.from_string(self.source)
        except TemplateError as exc:
            raise ConfigError(f"chat template ({self.name}) does not compile: {exc}") from exc
        object.__setattr__(self, "_compiled", compiled)  # frozen: compiled once, here

    @classmethod
    def load(cls, spec: str, *, setting: str = "TGI_INF_CHAT_TEMPLATE") -> ChatTemplate:
        """From a built-in name, a Jinja2 template, or `@path`; `ConfigError` if unusable."""
        spec = spec.strip()
        if spec in BUILTIN:
            source, bos, eos = BUILTIN[spec]
            template = cls(source, bos, eos, spec)
        else:
            if spec.startswith("@"):
                try:
                    spec = Path(spec[1:]).read_text(encoding="utf-8")
                except OSError as exc:
                    raise ConfigError(f"{setting}: cannot read {spec[1:]!r}: {exc.strerror}") from exc
            if "{{" not in spec and "{%" not in spec:
                raise ConfigError(
                    f"{setting}: expected one of {sorted(BUILTIN)}, a Jinja2 chat template or "
                    f"@/path/to/template, got {spec[:40]!r}"
                )
            try:
                template = cls(spec)
            except ConfigError as exc:
                raise ConfigError(f"{setting}: {exc}") from exc
        try:
            template.render([{"role": "user", "content": "probe"}])
        except UnsupportedRequestError as exc:
            raise ConfigError(f"{setting}: {exc}") from exc
        return template

    def render(self, messages: Sequence[dict[str, Any]]) -> str:
        """The prompt for `messages`; a template error (e.g. a role it refuses) is a 422, the job's
        error (rendered here, before any upstream call)."""
        assert self._compiled is not None
        try:
            return self._compiled.render(
                messages=list(messages),
                add_generation_prompt=True,
                bos_token=self.bos_token,
                eos_token=self.eos_token,
            )
        except TemplateError as exc:
            raise UnsupportedRequestError(f"chat template ({self.name}) failed: {exc}") from exc
