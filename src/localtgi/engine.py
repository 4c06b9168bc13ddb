"""Continuous-batching generation: the scheduler between the HTTP layer and the model.

Use one `Engine` per loaded model. `submit` a tokenized prompt with its `SamplingParams` from the
event loop and iterate the returned `GenerationStream`: `TokenEvent`s, then exactly one
`FinishEvent`. All model work runs in one worker thread (linear layers on prepacked oneDNN weights,
`batch.PackedLinears`), which loops: admit waiting requests (those that arrived together are
prefilled together and emit their first token at once), drop cancelled and finished rows, then run
one batched decode step for every active row (`batch.DecodeBatch`). Requests join and leave between
steps; a cancelled stream leaves at the next step. Each request samples from its own
`torch.Generator` (`sampling.TokenChooser`), so a seeded request gives the same text alone or in a
batch (up to float rounding of batched kernels). Events reach asyncio via `call_soon_threadsafe`.
When idle the worker sleeps on a condition variable.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import torch

from localtgi import batch as kvbatch
from localtgi.detokenizer import Detokenizer
from localtgi.engine_types import (
    FinishEvent,
    FinishReason,
    PrefillToken,
    SamplingParams,
    TokenEvent,
    TopToken,
)
from localtgi.errors import GenerationError, IncompleteGenerationError, LocalTGIError
from localtgi.grammar import GrammarCompiler, GrammarMatcher
from localtgi.models import LoadedModel
from localtgi.sampling import TokenChooser

_CLOSED = object()  # queue sentinel: the consumer cancelled
_PREFILL_TOKENS = 1024  # rows x padded length of one batched prefill


class GenerationStream:
    """The events of one generation, in order: `TokenEvent`s then exactly one `FinishEvent`.

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

    async def __anext__(self) -> TokenEvent | FinishEvent:
        if self._finished or self.cancelled:
            raise StopAsyncIteration
        item = await self._queue.get()
        if item is _CLOSED:
            raise StopAsyncIteration
        if isinstance(item, BaseException):
            self._finished = True
            raise item
        if isinstance(item, FinishEvent):
            self._finished = True
        return item  # type: ignore[no-any-return]

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

    def __init__(self, model: LoadedModel, *, max_batch_size: int = 16, threads: int = 1) -> None:
        self.loaded = model
        self.max_batch_size = max_batch_size
        self.threads = threads
        head: Any = model.model.get_output_embeddings()  # type: ignore[no-untyped-call]
        self.vocab_size = int(head.weight.shape[0])
        tok = model.tokenizer
        self._special = frozenset(int(i) for i in tok.all_special_ids) | model.eos_token_ids
        self._special |= frozenset(
            int(i) for i, t in tok.added_tokens_decoder.items() if getattr(t, "special", False)
        )
        self._cond = threading.Condition()
        self._waiting: deque[_Sequence] = deque()
        self._jobs: deque[tuple[Callable[[], Any], concurrent.futures.Future[Any]]] = deque()
        self._active: list[_Sequence] = []
        self._batch = kvbatch.DecodeBatch()
        self._running = False
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._grammar: GrammarCompiler | None = None
        self._prefix: kvbatch.Prefix | None = None

    # ----- event-loop side -------------------------------------------------------------------

    async def start(self) -> None:
        """Start the worker thread (and build the grammar compiler off the loop)."""
        if self._running:
            return
        self._loop = asyncio.get_running_loop()
        lm = self.loaded
        self._grammar = await asyncio.to_thread(
            GrammarCompiler, lm.tokenizer, self.vocab_size, lm.eos_token_ids
        )
        self._prefix = await asyncio.to_thread(self._chat_prefix)
        self._running = True
        self._thread = threading.Thread(target=self._work, name="localtgi-engine", daemon=True)
        self._thread.start()

    async def stop(self) -> None:
        """Stop the worker; every unfinished stream then raises IncompleteGenerationError."""
        with self._cond:
            self._running = False
            self._cond.notify_all()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join)
            self._thread = None

    def submit(self, input_ids: Sequence[int], params: SamplingParams) -> GenerationStream:
        """Queue a generation. Non-blocking; call it from the event loop.

        A grammar that does not compile raises GrammarError here, before anything is queued.
        """
        if not self._running or self._grammar is None:
            raise GenerationError("the engine is not running")
        if not input_ids:
            raise GenerationError("empty input")
        prompt = [int(i) for i in input_ids]
        matcher = self._grammar.compile(params.grammar) if params.grammar is not None else None
        stream = GenerationStream(self._wake)
        chooser = TokenChooser(params, prompt, self.vocab_size)
        seq = _Sequence(stream, prompt, params, chooser, matcher, Detokenizer(self.loaded.tokenizer, prompt))
        with self._cond:
            self._waiting.append(seq)
            self._cond.notify_all()
        return stream

    async def prefill(self, input_ids: Sequence[int]) -> list[PrefillToken]:
        """Prompt tokens with their log-probabilities (`decoder_input_details`), computed on the
        worker thread between steps."""
        ids = [int(i) for i in input_ids]
        logprobs = await self._run_job(lambda: kvbatch.prompt_logprobs(self.loaded.model, ids))
        tok = self.loaded.tokenizer
        return [
            PrefillToken(id=i, text=str(tok.decode([i])), logprob=lp)
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

    def _chat_prefix(self) -> kvbatch.Prefix | None:
        # Every chat request starts with the template's opening (SmolLM2: a 24-token system turn);
        # prefilling it once cuts a typical chat prefill by more than half.
        ids = kvbatch.chat_prefix_ids(self.loaded.tokenizer)
        if len(ids) < 4:
            return None
        torch.set_num_threads(self.threads)
        with torch.inference_mode():
            return kvbatch.compute_prefix(self.loaded.model, ids)

    async def _run_job(self, fn: Callable[[], Any]) -> Any:
        if not self._running:
            raise GenerationError("the engine is not running")
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        with self._cond:
            self._jobs.append((fn, future))
            self._cond.notify_all()
        return await asyncio.wrap_future(future)

    def _wake(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def _deliver(self, stream: GenerationStream, item: Any) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(stream._put, item)
            except RuntimeError:  # the loop closed between the check and the call
                pass

    # ----- worker side -----------------------------------------------------------------------

    def _work(self) -> None:
        torch.set_num_threads(self.threads)
        packed = kvbatch.PackedLinears(self.loaded.model)
        try:
            self._loop_until_stopped()
        finally:
            packed.close()
            self._shutdown()

    def _loop_until_stopped(self) -> None:
        with torch.inference_mode():
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
                    self._run_one_job(fn, future)
                try:
                    self._admit(admitted)
                    self._drop_finished()
                    if self._active:
                        self._decode_step()
                except LocalTGIError as exc:
                    self._fail_all(exc)
                except Exception as exc:  # noqa: BLE001 - a model failure must not kill the worker
                    self._fail_all(GenerationError(f"{type(exc).__name__}: {exc}"))

    def _run_one_job(self, fn: Callable[[], Any], future: concurrent.futures.Future[Any]) -> None:
        if not future.set_running_or_notify_cancel():
            return
        try:
            future.set_result(fn())
        except Exception as exc:  # noqa: BLE001 - handed to the awaiting coroutine
            future.set_exception(GenerationError(f"{type(exc).__name__}: {exc}"))

    def _admit(self, admitted: list[_Sequence]) -> None:
        kvs: list[kvbatch.KV] = []
        joined: list[_Sequence] = []
        for group in self._prefill_groups([s for s in admitted if not s.stream.cancelled]):
            try:
                results = kvbatch.prefill_many(
                    self.loaded.model, [s.prompt for s in group], self._prefix
                )
            except Exception as exc:  # noqa: BLE001 - only these requests fail
                for seq in group:
                    self._fail(seq, GenerationError(f"{type(exc).__name__}: {exc}"))
                continue
            for seq, (logits, kv) in zip(group, results, strict=True):
                if self._advance_or_fail(seq, logits):
                    kvs.append(kv)
                    joined.append(seq)
        # Joined first: if merging fails, _fail_all reaches them too.
        self._active.extend(joined)
        self._batch.add(kvs)

    def _prefill_groups(self, seqs: list[_Sequence]) -> list[list[_Sequence]]:
        """Requests that arrive together are prefilled together (one forward is much cheaper than
        several on CPU), in groups of similar length within a padded-token budget."""
        groups: list[list[_Sequence]] = []
        for seq in sorted(seqs, key=lambda s: len(s.prompt)):
            group = groups[-1] if groups else None
            if group and (len(group) + 1) * len(seq.prompt) <= _PREFILL_TOKENS:
                group.append(seq)
            else:
                groups.append([seq])
        return groups

    def _drop_finished(self) -> None:
        keep = [i for i, s in enumerate(self._active) if not (s.finished or s.stream.cancelled)]
        if len(keep) != len(self._active):
            self._batch.keep(keep)
            self._active = [self._active[i] for i in keep]

    def _decode_step(self) -> None:
        logits = self._batch.step(self.loaded.model, [s.last_token for s in self._active])
        for row, seq in enumerate(self._active):
            if not seq.stream.cancelled:
                self._advance_or_fail(seq, logits[row])
        self._drop_finished()

    def _advance_or_fail(self, seq: _Sequence, logits: torch.Tensor) -> bool:
        """`_advance`, failing only this sequence on error; True while it goes on."""
        try:
            self._advance(seq, logits)
        except LocalTGIError as exc:
            self._fail(seq, exc)
        except Exception as exc:  # noqa: BLE001 - a bad row must not take the batch down
            self._fail(seq, GenerationError(f"{type(exc).__name__}: {exc}"))
        return not seq.finished

    def _advance(self, seq: _Sequence, logits: torch.Tensor) -> None:
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
            text = str(tok.decode([token]))
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
            TopToken(id=i, text=str(tok.decode([i])), logprob=lp, special=i in self._special)
            for i, lp in choice.top
        )
        event = TokenEvent(
            index=seq.generated,
            id=token,
            text=text,
            logprob=choice.logprob,
            special=special,
            top_tokens=top,
        )
        self._deliver(seq.stream, event)
        if reason is not None:
            seq.finished = True
            finish = FinishEvent(
                finish_reason=reason,
                generated_text=seq.text,
                generated_tokens=seq.generated,
                seed=seq.chooser.seed,
            )
            self._deliver(seq.stream, finish)

    def _fail(self, seq: _Sequence, exc: BaseException) -> None:
        seq.finished = True
        self._deliver(seq.stream, exc)

    def _fail_all(self, exc: BaseException) -> None:
        for seq in self._active:
            if not seq.finished:
                self._fail(seq, type(exc)(str(exc)))
        self._active = []
        self._batch.clear()

    def _shutdown(self) -> None:
        with self._cond:
            pending = list(self._waiting)
            self._waiting.clear()
            jobs = list(self._jobs)
            self._jobs.clear()
        for seq in [*self._active, *pending]:
            if not seq.finished:
                self._fail(seq, IncompleteGenerationError("Incomplete generation stream"))
        self._active = []
        self._batch.clear()
        for _fn, future in jobs:
            if future.set_running_or_notify_cancel():
                future.set_exception(IncompleteGenerationError("the engine stopped"))
