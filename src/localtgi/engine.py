"""Continuous-batching generation: the scheduler between the HTTP layer and the model.

Use one `Engine` per loaded model. `submit` a tokenized prompt with its `SamplingParams` from the
event loop and iterate the returned `GenerationStream`: `TokenEvent`s, the last one carrying the
`FinishEvent`. All model work runs in one worker thread, which compiles the OpenVINO network
(`network.Network`), runs one prefill and one decode step (after which the network's weights file
is no longer read, and its pages are given back: `file_pages`) and then loops: admit waiting
requests (prompts that arrive together share prefill forwards, and each one's first token goes out
as its forward ends: `prefill`), drop cancelled and finished rows, then run one batched decode
step for every active row (`decode_batch.DecodeBatch`). Requests join and leave between steps; a
cancelled stream leaves at the next step. Each request samples from its own numpy generator
(`sampling.TokenChooser`) over the network's logits. By default a prompt's prefill and a decode
row's logits are bit-identical alone or in any batch, so a seeded request gives the same text
either way (with `exact`, up to float rounding). Events reach asyncio in one
`call_soon_threadsafe` per step (or per prefill forward) for all its rows, sent once the step's
rows are all sampled: the event loop then handles them while the next forward runs (OpenVINO lets
go of the GIL), not in turns with the sampling of the other rows. When idle the worker sleeps on a
condition variable.

If the worker itself dies (the network does not compile, or an error escapes a step's own
handling), the engine is dead for good: the failure is logged once, `failure` holds TGI's
generation error, every queued and running request fails with it at once, `submit` raises it, and
`/health` answers 503.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from localtgi import prefill as prefill_mod
from localtgi.decode_batch import DecodeBatch
from localtgi.detokenizer import Detokenizer
from localtgi.engine_types import (
    FinishEvent,
    FinishReason,
    GrammarSpec,
    PrefillToken,
    SamplingParams,
    TokenEvent,
    TopToken,
)
from localtgi.errors import GenerationError, IncompleteGenerationError, LocalTGIError
from localtgi.grammar import GrammarCompiler, GrammarMatcher
from localtgi.models import LoadedModel
from localtgi.network import Network
from localtgi.sampling import TokenChooser

log = logging.getLogger(__name__)
_CLOSED = object()  # queue sentinel: the consumer cancelled


class GenerationStream:
    """The tokens of one generation, in order; the last one has `finish` set.

    If the engine stops (or the model fails) first, `__anext__` raises IncompleteGenerationError
    (or GenerationError). After `cancel()` it raises StopAsyncIteration.
    """

    def __init__(self, wake: Callable[[], None]) -> None:
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        self._wake = wake
        self._finished = False
        self.cancelled = False  # read by the worker thread

    def __aiter__(self) -> GenerationStream:
        return self

    async def __anext__(self) -> TokenEvent:
        if self._finished or self.cancelled:
            raise StopAsyncIteration
        item = await self._queue.get()
        if item is _CLOSED:
            raise StopAsyncIteration
        if isinstance(item, BaseException):
            self._finished = True
            raise item
        assert isinstance(item, TokenEvent)
        if item.finish is not None:
            self._finished = True
        return item

    def cancel(self) -> None:
        """Stop generating; the sequence leaves the batch at the next step. Idempotent."""
        if self.cancelled:
            return
        self.cancelled = True
        self._queue.put_nowait(_CLOSED)
        self._wake()

    async def aclose(self) -> None:
        self.cancel()

    def _put(self, item: Any) -> None:
        if not self.cancelled:
            self._queue.put_nowait(item)


class _Sequence:
    def __init__(
        self,
        stream: GenerationStream,
        prompt: list[int],
        params: SamplingParams,
        chooser: TokenChooser,
        matcher: GrammarMatcher | None,
        detok: Detokenizer,
    ) -> None:
        self.stream = stream
        self.prompt = prompt
        self.params = params
        self.chooser = chooser
        self.matcher = matcher
        self.detok = detok
        self.generated = 0
        self.text = ""
        self.last_token = -1
        self.finished = False


class Engine:
    """Continuous-batching generation over one LoadedModel; model work runs in one worker thread."""

    def __init__(
        self,
        model: LoadedModel,
        *,
        max_batch_size: int = 16,
        threads: int = 1,
        exact: bool = False,
        open_network: Callable[[], Network] | None = None,
    ) -> None:
        """`exact`: decode steps in float32 too, not on int8 activations (`network.Network`).
        `open_network` compiles the network in the worker thread (default: `Network` over the
        model's network with `threads` and `exact`)."""
        self.loaded = model
        self._open_network = open_network or (
            lambda: Network(model.network, model.shape, threads=threads, exact=exact)
        )
        self.max_batch_size = max_batch_size
        self.vocab_size = model.shape.vocab_size
        self._special = model.tokenizer.special_ids | model.eos_token_ids
        self._cond = threading.Condition()
        self._waiting: deque[_Sequence] = deque()
        self._jobs: deque[tuple[Callable[[Network], Any], concurrent.futures.Future[Any]]] = deque()
        self._active: list[_Sequence] = []
        self._running = False
        self.failure: GenerationError | None = None  # set once when the worker dies
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._grammar: GrammarCompiler | None = None
        self.warm = False  # set by the worker once the network is compiled and has run
        self._settled: asyncio.Event | None = None
        self._outbox: list[tuple[GenerationStream, Any]] = []  # worker thread only; see _flush

    # ----- event-loop side -------------------------------------------------------------------

    async def start(self) -> None:
        """Start the worker thread, which compiles and warms up the network (`settled`), and
        meanwhile build the grammar compiler off the loop (about half a second for SmolLM2)."""
        if self._running:
            return
        self._loop = asyncio.get_running_loop()
        self._settled = asyncio.Event()
        self._running = True
        self._thread = threading.Thread(target=self._work, name="localtgi-engine", daemon=True)
        self._thread.start()
        lm = self.loaded
        try:
            self._grammar = await asyncio.to_thread(
                GrammarCompiler, lm.tokenizer, self.vocab_size, lm.eos_token_ids
            )
        except BaseException:
            await self.stop()
            raise

    async def settled(self) -> None:
        """Return once the worker has compiled and warmed up the network (`warm`), or has died
        (`failure`), or was stopped. Requests submitted before then wait in the queue."""
        if self._settled is not None:
            await self._settled.wait()

    async def stop(self) -> None:
        """Stop the worker; every unfinished stream then raises IncompleteGenerationError."""
        with self._cond:
            self._running = False
            self._cond.notify_all()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join)
            self._thread = None

    async def grammar_matcher(self, spec: GrammarSpec) -> GrammarMatcher:
        """Compile a request's grammar off the event loop, for `submit`: a large JSON schema takes
        about a second (8,000 properties: 1.3 s), and llguidance lets go of the GIL meanwhile.
        Raises GrammarError when the grammar does not compile."""
        grammar = self._grammar
        if grammar is None:
            raise GenerationError("the engine is not running")
        return await asyncio.to_thread(grammar.compile, spec)

    def submit(
        self, input_ids: Sequence[int], params: SamplingParams, matcher: GrammarMatcher | None = None
    ) -> GenerationStream:
        """Queue a generation. Non-blocking; call it from the event loop.

        A request with a grammar should bring its `matcher` from `grammar_matcher`; without one the
        grammar is compiled here, on the caller's thread, and a grammar that does not compile raises
        GrammarError before anything is queued.
        """
        if self._grammar is None:
            raise GenerationError("the engine is not running")
        if not input_ids:
            raise GenerationError("empty input")
        prompt = [int(i) for i in input_ids]
        if not all(0 <= i < self.vocab_size for i in prompt):
            raise GenerationError("input token id out of range")
        if matcher is None and params.grammar is not None:
            matcher = self._grammar.compile(params.grammar)
        stream = GenerationStream(self._wake)
        chooser = TokenChooser(params, prompt, self.vocab_size)
        seq = _Sequence(stream, prompt, params, chooser, matcher, Detokenizer(self.loaded.tokenizer, prompt))
        with self._cond:  # checked under the lock: the worker drains the queue when it stops
            if self.failure is not None:
                raise GenerationError(self.failure.message)
            if not self._running:
                raise GenerationError("the engine is not running")
            self._waiting.append(seq)
            self._cond.notify_all()
        return stream

    async def prefill(self, input_ids: Sequence[int]) -> list[PrefillToken]:
        """Prompt tokens with their log-probabilities (`decoder_input_details`), computed on the
        worker thread between steps."""
        ids = [int(i) for i in input_ids]
        logprobs = await self._run_job(lambda net: prefill_mod.prompt_logprobs(net, ids))
        tok = self.loaded.tokenizer
        return [
            PrefillToken(id=i, text=tok.decode([i]), logprob=lp)
            for i, lp in zip(ids, logprobs, strict=True)
        ]

    @property
    def active(self) -> int:
        """Sequences currently in the batch."""
        return len(self._active)

    @property
    def waiting(self) -> int:
        """Submitted, not yet in the batch."""
        with self._cond:  # the worker pops from this deque
            return sum(1 for s in self._waiting if not s.stream.cancelled)

    async def _run_job(self, fn: Callable[[Network], Any]) -> Any:
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        with self._cond:
            if self.failure is not None:
                raise GenerationError(self.failure.message)
            if not self._running:
                raise GenerationError("the engine is not running")
            self._jobs.append((fn, future))
            self._cond.notify_all()
        return await asyncio.wrap_future(future)

    def _wake(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def _deliver(self, stream: GenerationStream, item: Any) -> None:
        """Queue `item` for `stream`; it goes out with the others at the next `_flush`."""
        self._outbox.append((stream, item))

    def _flush(self) -> None:
        """Hand every queued item to the event loop in one callback, in the order queued. One
        wake-up per step instead of one per row: each wake-up is a write to the loop's self-pipe,
        and the loop thread then takes the GIL back and forth with the rows still being sampled."""
        items, self._outbox = self._outbox, []
        if items:
            self._call_on_loop(_put_all, items)

    def _call_on_loop(self, callback: Callable[..., None], *args: Any) -> None:
        """Run `callback(*args)` on the event loop, unless it has closed (the engine outlived it)."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(callback, *args)
            except RuntimeError:  # the loop closed between the check and the call
                pass

    # ----- worker side -----------------------------------------------------------------------

    def _work(self) -> None:
        try:
            net = self._open_network()
            # Every chat request starts with the template's opening (SmolLM2: a 24-token system
            # turn); prefilling it once cuts a typical chat prefill by more than half.
            ids = prefill_mod.chat_prefix_ids(self.loaded.tokenizer)
            prefix = prefill_mod.compute_prefix(net, ids) if len(ids) >= 4 else None
            batch = DecodeBatch(net)
            self._warm_up(net, batch, prefix)
            self.warm = True
            self._announce_settled()
            self._loop_until_stopped(net, batch, prefix)
        except BaseException as exc:  # noqa: BLE001 - the worker is gone; say so everywhere, once
            log.error("localtgi engine worker died: %s: %s", type(exc).__name__, exc, exc_info=exc)
            with self._cond:
                self.failure = GenerationError(f"the model worker stopped: {type(exc).__name__}: {exc}")
                self._running = False
        finally:
            self._shutdown()
            self._announce_settled()

    def _announce_settled(self) -> None:
        if self._settled is not None:
            self._call_on_loop(self._settled.set)

    def _warm_up(self, net: Network, batch: DecodeBatch, prefix: prefill_mod.Prefix | None) -> None:
        """One prefill and one decode step before the first request, so that OpenVINO has read the
        weights file for both kinds of forward; then its pages are given back (`Network.
        release_weights_file`), and the first request does not pay for preparing a decode step."""
        if prefix is None:
            _, cache = prefill_mod.prefill(net, [0])
        else:
            cache = prefix.cache
        batch.add([cache])
        batch.step([0])
        batch.clear()
        net.release_weights_file()

    def _loop_until_stopped(
        self, net: Network, batch: DecodeBatch, prefix: prefill_mod.Prefix | None
    ) -> None:
        while True:
            with self._cond:
                while self._running and not (self._waiting or self._jobs or self._active):
                    self._cond.wait()
                if not self._running:
                    break
                room = self.max_batch_size - len(self._active)
                admitted = [self._waiting.popleft() for _ in range(min(room, len(self._waiting)))]
                jobs = list(self._jobs)
                self._jobs.clear()
            for fn, future in jobs:
                self._run_one_job(net, fn, future)
            try:
                self._admit(net, batch, prefix, admitted)
                self._drop_finished(batch)
                if self._active:
                    self._decode_step(batch)
            except LocalTGIError as exc:
                self._fail_all(batch, exc)
            except Exception as exc:  # noqa: BLE001 - a failed step fails its rows, not the worker
                self._fail_all(batch, GenerationError(f"{type(exc).__name__}: {exc}"))
            finally:
                self._flush()

    def _run_one_job(
        self, net: Network, fn: Callable[[Network], Any], future: concurrent.futures.Future[Any]
    ) -> None:
        if not future.set_running_or_notify_cancel():
            return
        try:
            future.set_result(fn(net))
        except Exception as exc:  # noqa: BLE001 - handed to the awaiting coroutine
            future.set_exception(GenerationError(f"{type(exc).__name__}: {exc}"))

    def _admit(
        self, net: Network, batch: DecodeBatch, prefix: prefill_mod.Prefix | None, admitted: list[_Sequence]
    ) -> None:
        kvs: list[prefill_mod.RowCache] = []
        joined: list[_Sequence] = []
        live = [seq for seq in admitted if not seq.stream.cancelled]
        for group in prefill_mod.groups([seq.prompt for seq in live], prefix):
            seqs = [live[i] for i in group]
            try:
                results = prefill_mod.prefill_group(net, [seq.prompt for seq in seqs], prefix)
            except Exception as exc:  # noqa: BLE001 - only these requests fail
                for seq in seqs:
                    self._fail(seq, GenerationError(f"{type(exc).__name__}: {exc}"))
                continue
            for seq, (logits, kv) in zip(seqs, results, strict=True):
                if self._advance_or_fail(seq, logits):
                    kvs.append(kv)
                    joined.append(seq)
            self._flush()  # first tokens go out as each forward ends
        # Joined first: if merging fails, _fail_all reaches them too.
        self._active.extend(joined)
        batch.add(kvs)

    def _drop_finished(self, batch: DecodeBatch) -> None:
        alive = [not (s.finished or s.stream.cancelled) for s in self._active]
        if all(alive):
            return
        # Each hole takes the last row still alive: one row's cache moves, not everything after it.
        keep = [i for i, ok in enumerate(alive) if ok]
        n = len(keep)
        tail = [i for i in keep if i >= n]
        order = [i if i < n and alive[i] else tail.pop() for i in range(n)]
        batch.keep(order)
        self._active = [self._active[i] for i in order]

    def _decode_step(self, batch: DecodeBatch) -> None:
        logits = batch.step([s.last_token for s in self._active])
        for row, seq in enumerate(self._active):
            if not seq.stream.cancelled:
                self._advance_or_fail(seq, logits[row])
        self._flush()
        self._drop_finished(batch)

    def _advance_or_fail(self, seq: _Sequence, logits: npt.NDArray[np.float32]) -> bool:
        """`_advance`, failing only this sequence on error; True while it goes on."""
        try:
            self._advance(seq, logits)
        except LocalTGIError as exc:
            self._fail(seq, exc)
        except Exception as exc:  # noqa: BLE001 - a bad row must not take the batch down
            self._fail(seq, GenerationError(f"{type(exc).__name__}: {exc}"))
        return not seq.finished

    def _advance(self, seq: _Sequence, logits: npt.NDArray[np.float32]) -> None:
        """Choose, emit and account one token of `seq` from its next-token logits."""
        allowed = seq.matcher.allowed() if seq.matcher is not None else None
        if allowed is not None and not bool(allowed.any()):
            raise GenerationError("the grammar allows no further token")
        choice = seq.chooser.choose(logits, allowed)
        token = choice.token_id
        seq.chooser.accept(token)
        if seq.matcher is not None and token not in self.loaded.eos_token_ids:
            seq.matcher.consume(token)
        seq.generated += 1
        seq.last_token = token
        position = len(seq.prompt) + seq.generated
        out_of_room = (
            seq.generated >= seq.params.max_new_tokens or position >= self.loaded.max_position_embeddings
        )
        special = token in self._special
        tok = self.loaded.tokenizer
        reason: FinishReason | None = None
        if special:
            text = tok.decode([token])
            if token in self.loaded.eos_token_ids:
                reason = "eos_token"
        else:
            text = seq.detok.push(token, flush=out_of_room)
            if text and seq.params.stop:
                seq.text += text
                window = seq.text[-(len(text) + max(map(len, seq.params.stop))) :]
                if any(stop in window for stop in seq.params.stop):
                    reason = "stop_sequence"
            else:
                seq.text += text
        if reason is None and out_of_room:
            reason = "length"
        top = tuple(
            TopToken(id=i, text=tok.decode([i]), logprob=lp, special=i in self._special)
            for i, lp in choice.top
        )
        finish = None
        if reason is not None:
            seq.finished = True
            finish = FinishEvent(
                finish_reason=reason,
                generated_text=seq.text,
                generated_tokens=seq.generated,
                seed=seq.chooser.seed,
            )
        event = TokenEvent(
            index=seq.generated,
            id=token,
            text=text,
            logprob=choice.logprob,
            special=special,
            top_tokens=top,
            finish=finish,
        )
        self._deliver(seq.stream, event)

    def _fail(self, seq: _Sequence, exc: BaseException) -> None:
        seq.finished = True
        self._deliver(seq.stream, exc)

    def _fail_all(self, batch: DecodeBatch, exc: BaseException) -> None:
        for seq in self._active:
            if not seq.finished:
                self._fail(seq, type(exc)(str(exc)))
        self._active = []
        batch.clear()

    def _shutdown(self) -> None:
        """Fail everything still queued or running: with the worker's failure if it died, else as
        an incomplete generation (the engine was stopped)."""
        with self._cond:
            pending = list(self._waiting)
            self._waiting.clear()
            jobs = list(self._jobs)
            self._jobs.clear()
            failure = self.failure
        for seq in [*self._active, *pending]:
            if not seq.finished:
                error = failure or IncompleteGenerationError("Incomplete generation stream")
                self._fail(seq, type(error)(str(error)))
        self._active = []
        self._flush()
        for _fn, future in jobs:
            if future.set_running_or_notify_cancel():
                future.set_exception(failure or IncompleteGenerationError("the engine stopped"))


def _put_all(items: list[tuple[GenerationStream, Any]]) -> None:
    """On the event loop: one step's items to their streams."""
    for stream, item in items:
        stream._put(item)
