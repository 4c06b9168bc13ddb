"""A loopback stand-in for infernet-node 1.4.0's REST API, backed by the real container.

Use it where a test needs a node: scripts/node_jobs.py and scripts/delegated_subscription.py talk to
it exactly as to a node (docs/protocol.md §1.7). The node itself is a Docker image we cannot run here, so
this double reproduces the parts those scripts depend on:

* `POST /api/jobs` (off-chain): guardian check (405 for an unknown container), then the container is
  called with `{"source":1,"destination":1,"data":…,"requires_proof":…}` in the background and its
  JSON body stored as a success whatever the HTTP status, as the node does;
* `POST /api/jobs` (delegated): `{}` at once; in the background the container is called with
  `{"source":1,"destination":0,"data":…}`, its result encoded by node_codec and delivered through
  `deliverComputeDelegatee` from the node's account (errors are logged and not delivered);
* `GET /api/jobs?id=…`: `[{"id","status","result"}]`, unknown ids omitted;
* `POST /api/jobs/stream`: `"<id>\\n"` then the container's raw bytes, relayed as they arrive.
"""

from __future__ import annotations

import json
import threading
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

import httpx
from eth_abi import encode
from eth_account.signers.local import LocalAccount
from eth_utils import keccak
from node_codec import delivery_from_result
from web3 import Web3

import chain


@dataclass
class NodeChain:
    """What the double needs to deliver delegated subscriptions."""

    w3: Web3
    coordinator: Any
    account: LocalAccount


@dataclass
class NodeDouble:
    containers: dict[str, str]  # container id -> base URL
    node_chain: NodeChain | None = None
    jobs: dict[str, dict[str, Any]] = field(default_factory=dict)
    log: list[str] = field(default_factory=list)
    _server: ThreadingHTTPServer | None = None

    def start(self) -> str:
        handler = _handler(self)
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    # ------------------------------------------------------------------ job execution

    def run_offchain(self, job_id: str, container: str, data: Any, requires_proof: bool) -> None:
        body = {"source": 1, "destination": 1, "data": data, "requires_proof": requires_proof}
        try:
            resp = httpx.post(self.containers[container] + "/service_output", json=body, timeout=180)
            result = {"container": container, "output": resp.json()}
            self.jobs[job_id].update(status="success", result=result)
        except (httpx.HTTPError, ValueError) as exc:
            self.jobs[job_id].update(status="failed", result={"container": container, "error": str(exc)})

    def run_delegated(self, request: dict[str, Any]) -> None:
        try:
            self._deliver_delegated(request)
        except Exception as exc:  # noqa: BLE001 - the node logs and drops failed deliveries
            self.log.append(f"delegated job failed: {type(exc).__name__}: {exc}")

    def _deliver_delegated(self, request: dict[str, Any]) -> None:
        assert self.node_chain is not None
        sub, sig, data = request["subscription"], request["signature"], request["data"]
        ids = self._resolve(sub["containers"])
        body = {"source": 1, "destination": 0, "data": data, "requires_proof": False}
        resp = httpx.post(self.containers[ids[-1]] + "/service_output", json=body, timeout=180)
        delivery = delivery_from_result(resp.json())
        if delivery is None:
            self.log.append(f"Container execution errored: {resp.text}")
            return
        inp, out, proof = delivery
        w3 = self.node_chain.w3
        now = int(w3.eth.get_block("latest")["timestamp"])
        period = int(sub["period"])
        interval = 1 if period == 0 else (now - int(sub["active_at"])) // period + 1
        sub_tuple = (
            sub["owner"], sub["active_at"], period, sub["frequency"], sub["redundancy"],
            bytes.fromhex(sub["containers"][2:]), sub["lazy"], sub["verifier"],
            sub["payment_amount"], sub["payment_token"], sub["wallet"],
        )
        call = self.node_chain.coordinator.functions.deliverComputeDelegatee(
            sig["nonce"], sig["expiry"], sub_tuple, sig["v"], sig["r"].to_bytes(32, "big"),
            sig["s"].to_bytes(32, "big"), interval, inp, out, proof, self.node_chain.account.address,
        )
        chain.transact(w3, self.node_chain.account, call, "deliverComputeDelegatee")
        self.log.append("delegated subscription delivered")

    def _resolve(self, containers_hash: str) -> list[str]:
        for cid in self.containers:  # the node pre-hashes its configured ids (single ids suffice here)
            if "0x" + keccak(encode(["string"], [cid])).hex() == containers_hash:
                return [cid]
        raise LookupError(f"no configured container hashes to {containers_hash}")


def _handler(node: NodeDouble) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"  # the stream body ends when the connection closes

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
            return

        def _json(self, status: int, payload: Any) -> None:
            raw = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

        def _body(self) -> Any:
            length = int(self.headers.get("Content-Length", 0))
            return json.loads(self.rfile.read(length) or b"null")

        def _guardian(self, req: Any) -> str | None:
            containers = req.get("containers") if isinstance(req, dict) else None
            if not containers:
                self._json(500, {"error": "Internal server error: no containers"})
                return None
            for cid in containers:
                if cid not in node.containers:
                    self._json(405, {"error": "Container not supported", "params": {"container": cid}})
                    return None
            if not isinstance(req.get("data"), dict):
                self._json(500, {"error": "Internal server error: data must be an object"})
                return None
            return str(containers[0])

        def do_GET(self) -> None:  # noqa: N802 - stdlib naming
            url = urlparse(self.path)
            if url.path != "/api/jobs":
                self._json(404, {"error": "not found"})
                return
            ids = parse_qs(url.query).get("id", [])
            self._json(200, [dict(node.jobs[i]) for i in ids if i in node.jobs])

        def do_POST(self) -> None:  # noqa: N802 - stdlib naming
            req = self._body()
            if self.path == "/api/jobs" and isinstance(req, dict) and "subscription" in req:
                if node.node_chain is None:
                    self._json(500, {"error": "Object of type MessageType is not JSON serializable"})
                    return
                threading.Thread(target=node.run_delegated, args=(req,), daemon=True).start()
                self._json(200, {})
                return
            container = self._guardian(req)
            if container is None:
                return
            job_id = str(uuid.uuid4())
            if self.path == "/api/jobs":
                node.jobs[job_id] = {"id": job_id, "status": "running", "result": None}
                args = (job_id, container, req["data"], bool(req.get("requires_proof", False)))
                threading.Thread(target=node.run_offchain, args=args, daemon=True).start()
                self._json(200, {"id": job_id})
            elif self.path == "/api/jobs/stream":
                self._stream(job_id, container, req["data"])
            else:
                self._json(404, {"error": "not found"})

        def _stream(self, job_id: str, container: str, data: Any) -> None:
            body = {"source": 1, "destination": 2, "data": data}
            url = node.containers[container] + "/service_output"
            node.jobs[job_id] = {"id": job_id, "status": "running", "result": None}
            self.send_response(200)
            self.end_headers()
            self.wfile.write(f"{job_id}\n".encode())
            self.wfile.flush()
            received = b""
            with httpx.stream("POST", url, json=body, timeout=60) as resp:
                if resp.status_code // 100 != 2:
                    # The caller gets only the id line; the job is failed with aiohttp's wording.
                    error = f"{resp.status_code}, message='{resp.reason_phrase}', url='{url}'"
                    node.jobs[job_id].update(
                        status="failed", result={"container": container, "error": error}
                    )
                    return
                for chunk in resp.iter_raw():
                    received += chunk
                    self.wfile.write(chunk)
                    self.wfile.flush()
            output = {"output": received.decode("utf-8", errors="replace")}
            node.jobs[job_id].update(status="success", result={"container": container, "output": output})

    return Handler
