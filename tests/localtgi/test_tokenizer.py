"""localtgi's Tokenizer against transformers' own, token for token: SmolLM2 (read from the model cache
with no transformers) and the tiny model (wrapped from its transformers tokenizer)."""

from __future__ import annotations

import json
import pathlib
from typing import Any

import jinja2
import pytest
from transformers import AutoTokenizer

from localtgi.errors import ModelLoadError
from localtgi.models import build_tiny_torch, load_model, smollm2_cache
from localtgi.tokenizer import Tokenizer

TEXTS = [
    "",
    "Hello world",
    " leading space and trailing ",
    "Grüße, 日本語 🙂 {\"k\": [1, 2]} © €",
    "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n",
    "  two  spaces\n\n\ttab\r\n",
    "def f(x):\n    return x ** 2  # café\n",
    "word " * 50,
    "{{ 7 * 7 }} {% if true %}no{% endif %} <b>&amp;</b>",
]

CONVERSATIONS: list[list[dict[str, str]]] = [
    [{"role": "user", "content": "Hi"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
    [
        {"role": "system", "content": "You answer in JSON."},
        {"role": "user", "content": "Capital of France?"},
        {"role": "assistant", "content": '{"city": "Paris"}'},
        {"role": "user", "content": "And Japan? 日本"},
    ],
    [{"role": "user", "content": "{{ raise_exception('no') }} {% for x in y %}"}],  # data, not code
    [{"role": "user", "content": ""}],
]


@pytest.fixture(scope="module")
def smollm2() -> tuple[Tokenizer, Any]:
    ours = load_model("smollm2").tokenizer
    return ours, AutoTokenizer.from_pretrained(str(smollm2_cache()), local_files_only=True)


@pytest.fixture(scope="module")
def tiny() -> tuple[Tokenizer, Any]:
    return load_model("tiny").tokenizer, build_tiny_torch()[1]


def assert_same(ours: Tokenizer, ref: Any) -> None:
    assert isinstance(ours, Tokenizer)
    assert len(ours) == len(ref)
    assert (ours.bos_token_id, ours.eos_token_id, ours.pad_token_id) == (
        ref.bos_token_id, ref.eos_token_id, ref.pad_token_id)
    assert (ours.bos_token, ours.eos_token, ours.pad_token) == (ref.bos_token, ref.eos_token, ref.pad_token)
    named = {int(i) for i in ref.all_special_ids}
    added = {int(i) for i, t in ref.added_tokens_decoder.items() if t.special}
    assert ours.special_ids == named | added
    assert ours.chat_template == ref.chat_template
    for text in TEXTS:
        for special in (True, False):
            enc = ref(text, add_special_tokens=special, return_offsets_mapping=True)
            ids, offsets = ours.encode_with_offsets(text, add_special_tokens=special)
            assert ids == enc["input_ids"], text
            assert offsets == [tuple(o) for o in enc["offset_mapping"]], text
            assert ours.encode(text, add_special_tokens=special) == ids
        ids = ref.encode(text)
        assert ours.decode(ids) == ref.decode(ids)
        assert ours.decode(ids, skip_special_tokens=True) == ref.decode(ids, skip_special_tokens=True)
    sample = list(range(0, len(ref), max(1, len(ref) // 600)))
    assert [ours.decode([i]) for i in sample] == [ref.decode([i]) for i in sample]
    assert ours.convert_ids_to_tokens(sample) == ref.convert_ids_to_tokens(sample)
    assert ours.convert_tokens_to_ids("<|im_end|>") == ref.convert_tokens_to_ids("<|im_end|>")
    for conversation in CONVERSATIONS:
        for opened in (True, False):
            want = ref.apply_chat_template(conversation, add_generation_prompt=opened, tokenize=False)
            assert ours.apply_chat_template(conversation, add_generation_prompt=opened) == want
            want_ids = ref.apply_chat_template(
                conversation, add_generation_prompt=opened, tokenize=True, return_dict=False)
            got_ids = ours.apply_chat_template(conversation, add_generation_prompt=opened, tokenize=True)
            assert got_ids == list(want_ids)


def test_smollm2_matches_transformers_token_for_token(smollm2: tuple[Tokenizer, Any]) -> None:
    ours, ref = smollm2
    assert_same(ours, ref)
    # SmolLM2's template adds its default system turn unless the conversation has one.
    text = ours.apply_chat_template([{"role": "user", "content": "Hi"}], add_generation_prompt=True)
    assert text.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")


def test_tiny_matches_transformers_token_for_token(tiny: tuple[Tokenizer, Any]) -> None:
    assert_same(*tiny)


def test_saved_tokenizer_reads_back_here_and_in_transformers(
    tiny: tuple[Tokenizer, Any], tmp_path: pathlib.Path
) -> None:
    ours, _ = tiny
    ours.save_pretrained(tmp_path)
    assert_same(Tokenizer.from_directory(tmp_path), AutoTokenizer.from_pretrained(str(tmp_path)))
    assert_same(ours, AutoTokenizer.from_pretrained(str(tmp_path)))


TEMPLATE = (
    "{%- set ns = namespace(n=0) -%}\n"
    "{{ bos_token }}\n"
    "{% for m in messages %}\n"
    "  {% if m['role'] == 'tool' %}{{ raise_exception('no tools here') }}{% endif %}\n"
    "  {% if m['content'] == 'skip' %}{% continue %}{% endif %}\n"
    "  {% set ns.n = ns.n + 1 %}\n"
    "  {% generation %}{{ m['role'] | upper }}: {{ m | tojson }}{% endgeneration %}\n"
    "{% endfor %}\n"
    "{{ ns.n }} {{ eos_token }}{% if add_generation_prompt %}>{% endif %}"
)


def test_template_features_render_like_transformers() -> None:
    ref = build_tiny_torch()[1]
    ref.bos_token = "<|im_start|>"
    ours = Tokenizer.from_transformers(ref)
    ours.chat_template = TEMPLATE
    conversation = [
        {"role": "user", "content": "<b>&</b> \"quoted\" 日本"},
        {"role": "user", "content": "skip"},
        {"role": "assistant", "content": "ok"},
    ]
    for opened in (True, False):
        want = ref.apply_chat_template(
            conversation, chat_template=TEMPLATE, add_generation_prompt=opened, tokenize=False)
        assert ours.apply_chat_template(conversation, add_generation_prompt=opened) == want
    assert '"<b>&</b> \\"quoted\\" 日本"' in want  # tojson: no HTML escaping, no \u escapes
    with pytest.raises(jinja2.TemplateError, match="no tools here"):
        ours.apply_chat_template([{"role": "tool", "content": "x"}])
    ours.chat_template = "{{ messages.__class__.__mro__ }}"
    with pytest.raises(jinja2.exceptions.SecurityError):
        ours.apply_chat_template([{"role": "user", "content": "x"}])


def test_older_saves_are_read_like_transformers(tiny: tuple[Tokenizer, Any], tmp_path: pathlib.Path) -> None:
    """Template inside tokenizer_config.json, special tokens as AddedToken dicts in
    special_tokens_map.json (transformers 4's layout)."""
    ours, _ = tiny
    ours.backend_tokenizer.save(str(tmp_path / "tokenizer.json"))
    template = "{% for m in messages %}[{{ m['content'] }}]{% endfor %}{{ eos_token }}"
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": template}))
    (tmp_path / "special_tokens_map.json").write_text(json.dumps({
        "eos_token": {"content": "<|im_end|>", "lstrip": False, "normalized": False, "rstrip": False,
                      "single_word": False},
        "pad_token": "<|endoftext|>",
    }))
    read = Tokenizer.from_directory(tmp_path)
    ref = AutoTokenizer.from_pretrained(str(tmp_path))
    assert (read.eos_token_id, read.pad_token_id, read.bos_token_id) == (2, 0, None)
    assert read.apply_chat_template([{"role": "user", "content": "a"}]) == ref.apply_chat_template(
        [{"role": "user", "content": "a"}], tokenize=False) == "[a]<|im_end|>"


def test_unreadable_tokenizer_files_are_model_load_errors(tmp_path: pathlib.Path) -> None:
    with pytest.raises(ModelLoadError, match="tokenizer.json"):
        Tokenizer.from_directory(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match="tokenizer.json"):
        Tokenizer.from_directory(tmp_path)
