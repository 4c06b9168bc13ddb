"""Send an off-chain job or a stream job to an Infernet node's REST API and print the answer.

Usage:
    python scripts/node_jobs.py offchain --prompt "Is the sky blue?" [--node-url http://127.0.0.1:4000]
        [--container tgi_client_inference_service] [--parameters '{"max_new_tokens": 64}']
        [--timeout 60] [--no-wait]
    python scripts/node_jobs.py stream --prompt "Tell me a story" [...]

--node-url defaults to NODE_URL. Off-chain: POST /api/jobs, then poll GET /api/jobs?id= until the
job leaves "running". The node stores container errors as successes, so a result carrying a `code`
is reported (and exits 1) as the error it is. Stream: POST /api/jobs/stream; the first line is the
job id, the rest is text printed as it arrives.
"""

from __future__ import annotations

import argparse
import codecs
import json
import os
import sys
import time
from typing import Any, TextIO

import httpx

DEFAULT_CONTAINER = "tgi_client_inference_service"


class NodeJobError(Exception):
    """Raised when the node is unreachable, refuses the job, or the job fails."""


def job_request(container: str, prompt: str, parameters: dict[str, Any] | None) -> dict[str, Any]:
    """The node's off-chain job body for our container."""
    data: dict[str, Any] = {"text": prompt}
    if parameters:
        data["parameters"] = parameters
    return {"containers": [c.strip() for c in container.split(",")], "data": data}


def _refusal(resp: httpx.Response, url: str) -> NodeJobError:
    try:
        body = resp.json()
    except ValueError:
        body = resp.text
    if resp.status_code == 405 and isinstance(body, dict):
        return NodeJobError(f"node refused the job at {url}: {body.get('error')} {body.get('params')}")
    return NodeJobError(f"node answered HTTP {resp.status_code} at {url}: {body}")


def submit(client: httpx.Client, node_url: str, request: dict[str, Any]) -> str:
    """POST /api/jobs; returns the job id."""
    url = node_url.rstrip("/") + "/api/jobs"
    try:
        resp = client.post(url, json=request)
    except httpx.HTTPError as exc:
        raise NodeJobError(f"cannot reach the node at {url}: {type(exc).__name__}: {exc}") from exc
    if resp.status_code != 200:
        raise _refusal(resp, url)
    job_id = resp.json().get("id")
    if not isinstance(job_id, str):
        raise NodeJobError(f"node answered without a job id: {resp.text}")
    return job_id


def wait_result(client: httpx.Client, node_url: str, job_id: str, timeout: float) -> Any:
    """Poll until the job is done; returns the container output or raises NodeJobError."""
    url = node_url.rstrip("/") + "/api/jobs"
    deadline = time.monotonic() + timeout
    while True:
        try:
            resp = client.get(url, params={"id": job_id})
        except httpx.HTTPError as exc:
            raise NodeJobError(f"cannot reach the node at {url}: {exc}") from exc
        if resp.status_code != 200:
            raise _refusal(resp, url)
        jobs = resp.json()
        if not jobs:
            raise NodeJobError(
                f"node does not know job {job_id} (job ids are visible only to the submitting IP, "
                "and pending jobs expire after 15 minutes)"
            )
        job = jobs[0]
        if job["status"] == "failed":
            error = (job.get("result") or {}).get("error")
            raise NodeJobError(f"job {job_id} failed: {error!r} ('' is the node's 180 s timeout)")
        if job["status"] == "success":
            output = job["result"]["output"]
            if isinstance(output, dict) and "code" in output and output["code"] != "200":
                raise NodeJobError(
                    f"container error {output.get('code')} {output.get('name')}: "
                    f"{output.get('description')}"
                )
            return output
        if time.monotonic() >= deadline:
            raise NodeJobError(f"job {job_id} still running after {timeout:g} s")
        time.sleep(0.5)


def stream(
    client: httpx.Client, node_url: str, request: dict[str, Any], out: TextIO, timeout: float
) -> str:
    """POST /api/jobs/stream, write text to `out` as it arrives; returns the job id."""
    url = node_url.rstrip("/") + "/api/jobs/stream"
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    head = b""
    job_id: str | None = None
    try:
        with client.stream("POST", url, json=request, timeout=timeout) as resp:
            if resp.status_code != 200:
                resp.read()
                raise _refusal(resp, url)
            for chunk in resp.iter_bytes():
                if job_id is None:
                    # The id line and the first text can arrive in one chunk: split on the newline.
                    head += chunk
                    if b"\n" not in head:
                        continue
                    id_bytes, chunk = head.split(b"\n", 1)
                    job_id = id_bytes.decode().strip()
                out.write(decoder.decode(chunk))
                out.flush()
    except httpx.HTTPError as exc:
        raise NodeJobError(f"stream from {url} broke: {type(exc).__name__}: {exc}") from exc
    out.write(decoder.decode(b"", final=True))
    if job_id is None:
        raise NodeJobError(f"node closed the stream without a job id: {head!r}")
    return job_id


def stream_failure(client: httpx.Client, node_url: str, job_id: str) -> str | None:
    """The node's error for a failed stream job, or None (succeeded, still running, or unknown)."""
    try:
        resp = client.get(node_url.rstrip("/") + "/api/jobs", params={"id": job_id})
        jobs = resp.json() if resp.status_code == 200 else []
    except (httpx.HTTPError, ValueError):
        return None
    if jobs and jobs[0].get("status") == "failed":
        return str((jobs[0].get("result") or {}).get("error") or "no error message")
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("mode", choices=["offchain", "stream"])
    parser.add_argument("--node-url", default=os.environ.get("NODE_URL", "http://127.0.0.1:4000"))
    parser.add_argument("--container", default=DEFAULT_CONTAINER, help="container id(s), comma-joined")
    parser.add_argument("--prompt", required=True)
    parser.add_argument("--parameters", help="JSON object of TGI generation parameters")
    parser.add_argument("--timeout", type=float, default=60.0)
    parser.add_argument("--no-wait", action="store_true", help="offchain: print the id and exit")
    args = parser.parse_args(argv)
    try:
        parameters = json.loads(args.parameters) if args.parameters else None
        if parameters is not None and not isinstance(parameters, dict):
            raise NodeJobError("--parameters must be a JSON object")
    except (json.JSONDecodeError, NodeJobError) as exc:
        print(f"error: --parameters: {exc}", file=sys.stderr)
        return 2
    request = job_request(args.container, args.prompt, parameters)
    with httpx.Client(timeout=10.0) as client:
        try:
            if args.mode == "stream":
                job_id = stream(client, args.node_url, request, sys.stdout, args.timeout)
                # A container error reaches a stream caller only as an empty 200; the job record
                # says what happened.
                failure = stream_failure(client, args.node_url, job_id)
                if failure:
                    print(f"error: stream job {job_id} failed: {failure}", file=sys.stderr)
                    return 1
                print(f"\n[stream job {job_id} done]", file=sys.stderr)
                return 0
            job_id = submit(client, args.node_url, request)
            print(f"job {job_id} submitted to {args.node_url}", file=sys.stderr)
            if args.no_wait:
                print(job_id)
                return 0
            output = wait_result(client, args.node_url, job_id, args.timeout)
        except NodeJobError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1 if "container error" in str(exc) or "failed" in str(exc) else 2
    text = output.get("output") if isinstance(output, dict) else None
    print(text if isinstance(text, str) else json.dumps(output))
    return 0


if __name__ == "__main__":
    sys.exit(main())
