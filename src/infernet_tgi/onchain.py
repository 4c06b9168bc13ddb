"""ABI at the chain boundary: the consumer's input bytes in, the five-key result out.

Use `decode_input` on the `data` of a job whose source is on-chain, and `encode_text` for the
`raw_output` of any job whose destination is on-chain. eth-abi errors are translated here.

Accepted inputs are `abi.encode(string prompt)` and `abi.encode(string prompt, string parametersJson)`,
told apart by the first head word (0x20 or 0x40). The bytes must be the canonical encoding: decoding
then re-encoding must give them back, so trailing garbage or a wrong offset is an error, not a guess.
"""

from __future__ import annotations

import binascii
import json
import re
from typing import Any

from eth_abi.abi import decode, encode
from eth_abi.exceptions import DecodingError

from . import jsontext
from .errors import InputDecodeError
from .protocol import MAX_JSON_DEPTH

_HEX = re.compile(r"[0-9a-fA-F]*")
_ONE_STRING = 0x20
_TWO_STRINGS = 0x40


def decode_input(data: str, *, max_depth: int = MAX_JSON_DEPTH) -> tuple[str, dict[str, Any] | None]:
    """The prompt (and parameters object, if present) in on-chain `data`; the parametersJson may
    nest at most `max_depth` deep."""
    raw = _unhex(data)
    head = int.from_bytes(raw[:32], "big") if len(raw) >= 32 else None
    if head == _ONE_STRING:
        types = ["string"]
    elif head == _TWO_STRINGS:
        types = ["string", "string"]
    else:
        raise InputDecodeError(
            "on-chain input is not abi.encode(string) or abi.encode(string, string): "
            f"expected a first word of 0x20 or 0x40, got {raw[:32].hex() or 'nothing'}"
        )
    try:
        values = decode(types, raw)
    except (DecodingError, UnicodeDecodeError, OverflowError) as exc:
        raise InputDecodeError(f"on-chain input is not a valid ABI {_sig(types)}: {exc}") from exc
    if encode(types, list(values)) != raw:
        raise InputDecodeError(
            f"on-chain input is not the canonical ABI encoding of {_sig(types)} "
            "(extra bytes, or offsets/padding that abi.encode never produces)"
        )
    prompt = str(values[0])
    if len(values) == 1:
        return prompt, None
    return prompt, _parameters(str(values[1]), max_depth)


def encode_text(text: str) -> str:
    """Hex (no 0x) of `abi.encode(string text)`: the `raw_output` consumers decode."""
    return encode(["string"], [text]).hex()


def _unhex(data: str) -> bytes:
    if data == "":
        raise InputDecodeError(
            "on-chain input is empty: the consumer's getContainerInputs returned no bytes "
            "(expected abi.encode(string prompt))"
        )
    if data[:2] in ("0x", "0X"):
        raise InputDecodeError("on-chain input must be hex without a 0x prefix, as the node sends it")
    if not _HEX.fullmatch(data):
        bad = next(ch for ch in data if not _HEX.fullmatch(ch))
        raise InputDecodeError(f"on-chain input is not hex: unexpected character {bad!r}")
    if len(data) % 2:
        raise InputDecodeError(f"on-chain input has an odd number of hex digits ({len(data)})")
    try:
        return binascii.unhexlify(data)
    except binascii.Error as exc:  # unreachable after the checks above, kept as the boundary
        raise InputDecodeError(f"on-chain input is not hex: {exc}") from exc


def _parameters(text: str, max_depth: int) -> dict[str, Any]:
    try:
        value = jsontext.loads(text, max_depth=max_depth) if text.strip() else {}
    except json.JSONDecodeError as exc:
        raise InputDecodeError(f"on-chain parametersJson is not JSON: {exc}") from exc
    except ValueError as exc:  # too deep, a lone surrogate, an integer of 4,300+ digits
        raise InputDecodeError(f"on-chain parametersJson refused: {exc}") from exc
    if not isinstance(value, dict):
        raise InputDecodeError("on-chain parametersJson must be a JSON object")
    return value


def _sig(types: list[str]) -> str:
    return f"({','.join(types)})"
