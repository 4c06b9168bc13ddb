"""What infernet-node 1.4.0 does with a container's on-chain result before `deliverCompute`.

Use `delivery_from_result` wherever a test plays the node: it returns the (input, output, proof) bytes
the node would send, or None when the node delivers nothing (docs/protocol.md §1.4):

1. a `code` key whose value is not the string "200" is a container error: nothing is delivered;
2. all five keys present: input = abi.encode(bytes,bytes)(raw_input, processed_input), output =
   abi.encode(bytes,bytes)(raw_output, processed_output), proof = bytes(proof); values are strict
   hex without 0x, and ""/None mean empty;
3. otherwise: empty input and proof, output = abi.encode(string) of the dict's Python repr.

Malformed hex raises `WedgedInterval`: on the real node that exception kills a fire-and-forget task
and the (subscription, interval) stays BLOCKED forever.
"""

from __future__ import annotations

from typing import Any

from eth_abi import encode

FIVE_KEYS = ("raw_input", "processed_input", "raw_output", "processed_output", "proof")


class WedgedInterval(Exception):
    """Raised when the node's serialization would throw (bad hex, non-dict output)."""


def _hex(value: Any, key: str) -> bytes:
    if value is None or value == "":
        return b""
    if not isinstance(value, str):
        raise WedgedInterval(f"{key} is {type(value).__name__}, not a hex string")
    try:
        return bytes.fromhex(value)  # rejects 0x, odd length and non-hex, like the node
    except ValueError as exc:
        raise WedgedInterval(f"{key} is not unprefixed even-length hex: {exc}") from exc


def delivery_from_result(result: Any) -> tuple[bytes, bytes, bytes] | None:
    """(input, output, proof) as the node delivers them, or None for a container error."""
    if not isinstance(result, dict):
        raise WedgedInterval(f"container output is {type(result).__name__}, not an object")
    if "code" in result and result["code"] != "200":
        return None
    if all(key in result for key in FIVE_KEYS):
        raw_in, proc_in, raw_out, proc_out, proof = (_hex(result[k], k) for k in FIVE_KEYS)
        return (
            encode(["bytes", "bytes"], [raw_in, proc_in]),
            encode(["bytes", "bytes"], [raw_out, proc_out]),
            proof,
        )
    return b"", encode(["string"], [repr(result)]), b""


def container_result(text: str, raw_input: str = "") -> dict[str, str]:
    """The five keys as the container returns them on-chain: raw_output = abi.encode(string text)."""
    return {
        "raw_input": raw_input,
        "processed_input": "",
        "raw_output": encode(["string"], [text]).hex(),
        "processed_output": "",
        "proof": "",
    }
