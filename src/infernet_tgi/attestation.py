"""Attestations: the container's signature over (question, answer, model), checkable on-chain.

Use `Attester.from_env` once at startup (through `Settings`), and a `Notary` (created in the app's
lifespan) to sign each result. A proof is the hex (no `0x`) of

    abi.encode(bytes32 inputHash, bytes32 outputHash, bytes32 modelHash, bytes signature)

with `inputHash = keccak256(raw_input)`, `outputHash = keccak256(raw_output)`,
`modelHash = keccak256(bytes(model id))` and `signature` the 65-byte (r, s, v) EIP-712 signature of
`Attestation(bytes32 inputHash,bytes32 outputHash,bytes32 modelHash)` under the domain
`{name: "InfernetTGIAttestation", version: "1", chainId}` (no verifying contract: one signature is
checkable by any contract on that chain). `raw_input` / `raw_output` are the bytes a consumer receives:
the on-chain input as sent, or `abi.encode(string prompt)` for off-chain questions (a chat: its JSON),
and `abi.encode(string answer)`.

A signature says that the holder of the key vouches for (input, output, model). It does not prove the
model computed the answer. The key never leaves this module: not in a repr, an error, a log or metrics.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from coincurve import PrivateKey
from Crypto.Hash import keccak
from eth_abi.abi import encode
from pydantic import BaseModel

from .errors import ConfigError, UpstreamTimeoutError, UpstreamUnavailableError

KEY_VAR = "TGI_INF_ATTESTATION_KEY"
CHAIN_VAR = "TGI_INF_ATTESTATION_CHAIN_ID"
DOMAIN_NAME = "InfernetTGIAttestation"
DOMAIN_VERSION = "1"
ATTESTATION_TYPE = "Attestation(bytes32 inputHash,bytes32 outputHash,bytes32 modelHash)"
DOMAIN_TYPE = "EIP712Domain(string name,string version,uint256 chainId)"
_KEY_HEX = re.compile(r"(0x)?([0-9a-fA-F]{64})")
_INFO_TIMEOUT = 5.0  # seconds for the engine's info when the model id must be read from it
_MAX_KEY_FILE = 4096  # a key file is 64 hex digits and maybe a newline; anything far bigger is not one


def keccak256(data: bytes) -> bytes:
    """Ethereum's keccak-256 (not SHA3-256)."""
    return keccak.new(digest_bits=256, data=data).digest()


_DOMAIN_TYPEHASH = keccak256(DOMAIN_TYPE.encode())
_ATTESTATION_TYPEHASH = keccak256(ATTESTATION_TYPE.encode())


def domain_separator(chain_id: int) -> bytes:
    """The EIP-712 domain separator of attestations on `chain_id`."""
    return keccak256(
        encode(
            ["bytes32", "bytes32", "bytes32", "uint256"],
            [_DOMAIN_TYPEHASH, keccak256(DOMAIN_NAME.encode()), keccak256(DOMAIN_VERSION.encode()), chain_id],
        )
    )


def attestation_digest(chain_id: int, input_hash: bytes, output_hash: bytes, model_hash: bytes) -> bytes:
    """The 32-byte EIP-712 digest that is signed (what `LLMAttestation.digest` computes on-chain)."""
    return _digest(domain_separator(chain_id), input_hash, output_hash, model_hash)


def _digest(domain: bytes, input_hash: bytes, output_hash: bytes, model_hash: bytes) -> bytes:
    # abi.encode of four bytes32 is their concatenation; writing it out costs far less than eth-abi.
    struct_hash = keccak256(_ATTESTATION_TYPEHASH + input_hash + output_hash + model_hash)
    return keccak256(b"\x19\x01" + domain + struct_hash)


@dataclass(frozen=True)
class Attestation:
    """One signed statement; `proof()` is the bytes delivered as the Infernet `proof`."""

    input_hash: bytes
    output_hash: bytes
    model_hash: bytes
    signature: bytes

    def proof(self) -> bytes:
        """abi.encode(bytes32, bytes32, bytes32, bytes): three words, the offset of the bytes (0x80),
        their length (65), and the signature padded to 96 bytes. Written out because eth-abi's encoder
        costs more than the signature; the golden vector test holds it to eth-abi's bytes."""
        if len(self.signature) != 65:
            raise ValueError("an attestation signature is 65 bytes")
        return b"".join(
            (
                self.input_hash,
                self.output_hash,
                self.model_hash,
                (0x80).to_bytes(32, "big"),
                (65).to_bytes(32, "big"),
                self.signature,
                bytes(31),
            )
        )


class Attester:
    """A secp256k1 key and the chain id it signs for. Its repr shows the address, never the key."""

    __slots__ = ("_domain", "_key", "address", "chain_id")

    def __init__(self, secret: bytes, chain_id: int) -> None:
        try:
            key = PrivateKey(secret)
        except ValueError as exc:  # zero, or not below the curve order
            raise ConfigError(f"{KEY_VAR}: not a valid secp256k1 private key") from exc
        self._key = key
        self.chain_id = chain_id
        self._domain = domain_separator(chain_id)
        public = key.public_key.format(compressed=False)[1:]
        self.address = _checksum(keccak256(public)[12:])

    def __repr__(self) -> str:
        return f"Attester(address={self.address}, chain_id={self.chain_id})"

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Attester | None:
        """The attester the environment configures, None without a key; `ConfigError` names the
        variable when a value is malformed (the message never contains key material)."""
        raw_key = env.get(KEY_VAR, "").strip()
        raw_chain = env.get(CHAIN_VAR, "").strip()
        if not raw_key:
            if raw_chain:
                raise ConfigError(f"{CHAIN_VAR} is set but {KEY_VAR} is not: attestations need both")
            return None
        if not raw_chain:
            raise ConfigError(f"{CHAIN_VAR} is required with {KEY_VAR} (the chain that verifies proofs)")
        # int() alone would also take "1_0" or other scripts' digits, and fail on thousands of digits.
        if not raw_chain.isascii() or not raw_chain.isdigit() or len(raw_chain) > 78:
            raise ConfigError(f"{CHAIN_VAR}: expected a decimal chain id, got {raw_chain[:80]!r}")
        chain_id = int(raw_chain)
        if not 0 < chain_id < 2**256:
            raise ConfigError(f"{CHAIN_VAR}: must be a positive chain id below 2**256, got {chain_id}")
        return cls(_read_key(raw_key), chain_id)

    def attest(self, raw_input: bytes, raw_output: bytes, model_id: str) -> Attestation:
        """Sign (input, output, model). Cost: two keccaks over the bytes and one ECDSA signature
        (tens of microseconds), so it runs inline on the event loop."""
        input_hash, output_hash = keccak256(raw_input), keccak256(raw_output)
        model_hash = keccak256(model_id.encode())
        digest = _digest(self._domain, input_hash, output_hash, model_hash)
        # libsecp256k1 signs deterministically (RFC 6979) with low s; it returns r || s || recid.
        rsv = self._key.sign_recoverable(digest, hasher=None)
        signature = rsv[:64] + bytes([27 + rsv[64]])
        return Attestation(input_hash, output_hash, model_hash, signature)

    def describe(self) -> AttestationInfo:
        """What `GET /service-resources` publishes, so consumers can allow this attester."""
        return AttestationInfo(
            attester=self.address,
            chain_id=self.chain_id,
            eip712_domain={"name": DOMAIN_NAME, "version": DOMAIN_VERSION, "chainId": self.chain_id},
        )


class AttestationInfo(BaseModel):
    """`attestation` in `GET /service-resources`: who signs, for which chain, and in which format."""

    attester: str
    chain_id: int
    eip712_domain: dict[str, str | int]
    type: str = ATTESTATION_TYPE
    proof: str = "abi.encode(bytes32 inputHash, bytes32 outputHash, bytes32 modelHash, bytes signature)"


class Notary:
    """Signs results in a serving app: the attester plus the model id to name in each attestation.

    The model id is `TGI_INF_MODEL` when set, else the engine's own (`model_id` of its info), read
    at the first signed job and again once it is `ttl` seconds old, so a swapped model is named
    within a minute and no job pays for the look-up more than once a minute."""

    def __init__(
        self,
        attester: Attester,
        configured_model: str | None,
        engine_info: Callable[[], Awaitable[dict[str, Any]]],
        ttl: float = 60.0,
    ) -> None:
        self.attester = attester
        self._configured = configured_model
        self._engine_info = engine_info
        self._ttl = ttl
        self._model: str | None = None
        self._read_at = 0.0
        self._lock = asyncio.Lock()

    async def model_id(self) -> str:
        if self._configured:
            return self._configured
        async with self._lock:
            if self._model is None or time.monotonic() - self._read_at > self._ttl:
                try:
                    async with asyncio.timeout(_INFO_TIMEOUT):
                        info = await self._engine_info()
                except TimeoutError as exc:
                    raise UpstreamTimeoutError(
                        f"cannot sign the answer: no engine info within {_INFO_TIMEOUT:g} s "
                        "(set TGI_INF_MODEL to name the model without asking the engine)"
                    ) from exc
                model = info.get("model_id")
                if not isinstance(model, str) or not model:
                    raise UpstreamUnavailableError(
                        "cannot sign the answer: the engine's info names no model_id "
                        "(set TGI_INF_MODEL to the model the engine serves)"
                    )
                self._model, self._read_at = model, time.monotonic()
            return self._model

    async def proof(self, raw_input: bytes, raw_output: bytes) -> str:
        """The hex (no 0x) proof for a result, as the node delivers it."""
        attestation = self.attester.attest(raw_input, raw_output, await self.model_id())
        return attestation.proof().hex()


def _read_key(raw: str) -> bytes:
    if raw.startswith("@"):
        path = Path(raw[1:])
        try:
            with path.open("rb") as handle:
                content = handle.read(_MAX_KEY_FILE + 1)
        except OSError as exc:
            raise ConfigError(f"{KEY_VAR}: cannot read the key file {path}: {exc.strerror}") from exc
        if len(content) > _MAX_KEY_FILE:
            raise ConfigError(f"{KEY_VAR}: the key file {path} is too big to hold one hex key")
        try:
            raw = content.decode("ascii").strip()
        except UnicodeDecodeError:
            # Not chained: the decode error quotes a byte of the file, which may be key material.
            raise ConfigError(f"{KEY_VAR}: the key file {path} is not hex text") from None
        where = f"the key file {path}"
    else:
        where = "the value"
    match = _KEY_HEX.fullmatch(raw)
    if match is None:
        raise ConfigError(
            f"{KEY_VAR}: {where} must be 32 bytes as 64 hex digits (0x optional), or @/path/to/file; "
            f"got {len(raw)} characters"
        )
    return bytes.fromhex(match.group(2))


def _checksum(address: bytes) -> str:
    """EIP-55 mixed-case address."""
    plain = address.hex()
    digest = keccak256(plain.encode()).hex()
    return "0x" + "".join(
        c.upper() if int(d, 16) >= 8 else c for c, d in zip(plain, digest[:40], strict=True)
    )
