"""ABI at the chain boundary: golden vectors built by hand from the ABI spec, and round trips."""

from __future__ import annotations

import json

import pytest
from eth_abi.abi import decode, encode
from hypothesis import given
from hypothesis import strategies as st

from infernet_tgi.errors import InputDecodeError
from infernet_tgi.onchain import decode_input, encode_text

# encode(["string"], ["Is the sky blue during a clear day?"]) from the seed, written out word by word:
# head = offset 0x20; then length 35 (0x23); then the UTF-8 bytes right-padded to 64 bytes.
SEED_HEX = (
    "0000000000000000000000000000000000000000000000000000000000000020"
    "0000000000000000000000000000000000000000000000000000000000000023"
    "49732074686520736b7920626c756520647572696e67206120636c6561722064"
    "61793f0000000000000000000000000000000000000000000000000000000000"
)


def word(n: int) -> bytes:
    return n.to_bytes(32, "big")


def by_hand(text: str) -> str:
    data = text.encode()
    padded = data + b"\0" * (-len(data) % 32)
    return (word(32) + word(len(data)) + padded).hex()


def test_seed_golden_vector() -> None:
    assert by_hand("Is the sky blue during a clear day?") == SEED_HEX
    assert decode_input(SEED_HEX) == ("Is the sky blue during a clear day?", None)
    assert encode_text("Is the sky blue during a clear day?") == SEED_HEX


@pytest.mark.parametrize("text", ["", "héllo wörld", "日本語のプロンプト", "emoji 🚀🌍", "a" * 32, "b" * 33])
def test_multibyte_and_boundary_golden_vectors(text: str) -> None:
    assert encode_text(text) == by_hand(text)
    assert decode_input(by_hand(text)) == (text, None)


def test_two_strings_golden_vector() -> None:
    prompt, params = "hi", json.dumps({"max_new_tokens": 5})
    p, q = prompt.encode(), params.encode()
    tail_p = word(len(p)) + p + b"\0" * (-len(p) % 32)
    tail_q = word(len(q)) + q + b"\0" * (-len(q) % 32)
    raw = word(64) + word(64 + len(tail_p)) + tail_p + tail_q
    assert decode_input(raw.hex()) == ("hi", {"max_new_tokens": 5})
    assert decode_input(raw.hex().upper()) == ("hi", {"max_new_tokens": 5})


@given(st.text())
def test_round_trip_one_string(text: str) -> None:
    assert decode_input(encode_text(text)) == (text, None)
    assert decode(["string"], bytes.fromhex(encode_text(text))) == (text,)


@given(st.text(), st.dictionaries(st.text(), st.integers() | st.text() | st.booleans(), max_size=4))
def test_round_trip_with_parameters(text: str, params: dict[str, object]) -> None:
    raw = encode(["string", "string"], [text, json.dumps(params)]).hex()
    assert decode_input(raw) == (text, params)


@given(st.binary(max_size=200))
def test_arbitrary_bytes_never_crash(blob: bytes) -> None:
    try:
        prompt, _ = decode_input(blob.hex())
    except InputDecodeError:
        return
    assert encode_text(prompt) == blob.hex() or blob[:32] == word(64)


@pytest.mark.parametrize(
    "data,fragment",
    [
        ("", "empty"),
        ("0x" + SEED_HEX, "0x prefix"),
        (SEED_HEX[:-1], "odd number"),
        (SEED_HEX + "00" * 32, "canonical"),
        (SEED_HEX[:-64], "not a valid ABI"),
        (word(32).hex() + word(2**200).hex(), "not a valid ABI"),
        (word(32).hex() + word(2).hex() + (b"\xff\xfe" + b"\0" * 30).hex(), "not a valid ABI"),
        (word(32).hex() + word(1).hex() + (b"a" + b"\1" * 31).hex(), "not a valid ABI"),
        (encode(["string", "string"], ["a", "not json"]).hex(), "parametersJson is not JSON"),
        (encode(["string", "string"], ["a", "[1]"]).hex(), "must be a JSON object"),
        (word(7).hex(), "first word of 0x20 or 0x40"),
        ("ab" * 10, "first word"),
    ],
)
def test_invalid_inputs(data: str, fragment: str) -> None:
    with pytest.raises(InputDecodeError, match=None) as info:
        decode_input(data)
    assert fragment in str(info.value)


def test_empty_parameters_string_means_none_given() -> None:
    assert decode_input(encode(["string", "string"], ["a", ""]).hex()) == ("a", {})
