"""The persistent conversation with a local Qwen2-Audio: past audio is never encoded again, past tokens never
read again.

Embedding it in your own program::

    from voiceassist.config import Config
    from voiceassist.backend import UserTurn
    from voiceassist.model.loading import load_session

    session = load_session(Config())                       # or a Config with model.name = "tiny"
    result = session.reply(UserTurn(audios=(audio_16k,)), on_text=print)
    result = session.reply(UserTurn(text="And in French?"), on_text=print)
    session.reset()

See ``docs/python-api.md`` for the whole API.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from voiceassist import conversation
from voiceassist.backend import ReplyResult, UserTurn
from voiceassist.config import GenerationConfig
from voiceassist.model import budget, encoder, features
from voiceassist.model.chunking import SAMPLE_RATE
from voiceassist.model.decoding import (
    IncrementalDetokenizer,
    Sampler,
    resolve_sampling,
    sampling_defaults,
    spoken_prefix_ids,
)
from voiceassist.model.kvcache import KVCache
from voiceassist.model.prompt import PromptBuilder, UserMessage
from voiceassist.model.turns import backend_error, check_turn, same_turn

# The chat's structural tokens: never sampled into a reply (the next turn's prompt would no longer be the
# conversation the template describes). <|im_end|> and <|endoftext|> end a reply instead.
STRUCTURAL_TOKENS = ("<|im_start|>", "<|AUDIO|>", "<|audio_bos|>", "<|audio_eos|>")
END_TOKENS = ("<|im_end|>", "<|endoftext|>")


@dataclass(frozen=True)
class TurnRecord:
    """One turn of the conversation as the session holds it."""

    message: UserMessage  # what the chat template sees: number of audios and the typed text
    audio_s: tuple[float, ...]  # each audio's duration, s
    audio_embeds: tuple[torch.Tensor, ...] = field(repr=False)  # [N_i, hidden] per audio: never encoded again
    prompt_ids: tuple[int, ...]  # ids this turn adds before its reply (the previous reply's closing included)
    reply_ids: tuple[int, ...] = ()  # the reply without its closing token
    reply_text: str = ""
    interrupted: bool = False  # cancelled, or cut back to what was spoken


@dataclass
class _Snapshot:
    """The state a failed (or rolled-back speculative) turn returns to."""

    turns: list[TurnRecord]
    cache_mark: tuple[Any, int]
    dropped_total: int
    sampler_state: torch.Tensor


@dataclass
class _Prefilled:
    """A turn added and prefilled, its reply decoded so far (normal path, or a pending speculation, whose
    reply may already be partly decoded by :meth:`Session.speculate_reply`; :meth:`Session.reply` goes on
    from exactly this state, so the reply is the one a non-speculative run gives)."""

    turn: UserTurn
    audios: list[np.ndarray]
    logits: torch.Tensor  # for the reply's next token
    prompt_ids: list[int]
    dropped: int
    max_new: int
    snap: _Snapshot
    detok: IncrementalDetokenizer | None = None  # None until the first token
    reply: list[int] = field(default_factory=list)  # reply ids sampled so far (without the closing token)
    pieces: list[str] = field(default_factory=list)  # text handed out so far, in order
    kept_logits: list[torch.Tensor] = field(default_factory=list)  # masked logits per step (keep_logits)
    done: bool = False  # the closing token was sampled, or max_new reached
    decode_s: float = 0.0  # wall time between consecutive sampled tokens, summed, s
    steps_timed: int = 0  # how many of those gaps decode_s holds
    seen: torch.Tensor | None = None  # [vocab] ids the repetition penalty applies to (None: no penalty)
    seen_ready: bool = False  # ``seen`` was computed (at the first decoded token)


class Session:
    """A multi-turn Qwen2-Audio conversation that owns its token ids and KV cache.

    Invariant (tested): the ids it holds (:attr:`ids`) are exactly what ``processor.apply_chat_template`` gives
    for the whole conversation — system prompt, audios numbered across the conversation, ``<|im_end|>`` between
    turns, each reply's ids as generated (re-tokenising reply text would not give the same ids) — and the KV
    cache holds the model's keys and values for a prefix of them. So a turn prefills only its own tokens (its
    audio encoded once), and its greedy reply equals a from-scratch run over the whole conversation.

    - A failed turn (exception, out of memory, a callback raising) leaves the conversation exactly as before;
      it raises :class:`~voiceassist.errors.BackendError`.
    - ``cancel`` ends decoding within one token; the partial reply stays, closed like any reply.
    - Before a turn would overflow ``context_limit``, the oldest whole turns are dropped (the system prompt
      stays) and the cache is rebuilt from the kept token ids and audio embeddings: no audio is encoded again.
    - :meth:`speculate` prefills a turn ahead of time (during the segmenter's hang-over); the next
      :meth:`reply` with an equal turn starts decoding at once, any other call rolls it back first. The
      reply is the same either way (the same chunked prefill runs).
    - One caller at a time (the app's model worker); methods take a lock, so other threads may read figures.
    """

    def __init__(
        self,
        model: Any,
        processor: Any,
        *,
        generation: GenerationConfig | None = None,
        context_limit: int = 8192,
        trimmed_encoder: bool = True,
        description: str = "",
        shipped_sampling: dict[str, Any] | None = None,
        compile: bool = False,
        on_note: Callable[[str], None] | None = None,
    ) -> None:
        self.model = model
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.generation = generation or GenerationConfig()
        max_positions = getattr(model.config.get_text_config(), "max_position_embeddings", context_limit)
        self.context_limit = min(context_limit, max_positions)
        self.trimmed_encoder = trimmed_encoder
        self.keep_logits = False  # tests/diagnostics: keep each reply's masked logits in last_logits
        self.last_logits: list[torch.Tensor] = []
        self.last_speculated = False  # whether the last reply used a speculative prefill
        # CPU time of the calling thread from reply() to the first token, s: the work, without the waiting a
        # shared machine adds to ttft_s (benchmarks; with one torch thread it is the whole compute).
        self.last_cpu_ttft_s = 0.0
        self._builder = PromptBuilder(self.tokenizer, processor.chat_template)
        self._embed = model.get_input_embeddings()
        self.description = description or f"{type(model).__name__} · {self.device} · {str(self.dtype)[6:]}"
        tok = self.tokenizer.convert_tokens_to_ids
        self._end_ids = {tok(t) for t in END_TOKENS}
        # Sampling as the model ships it (generation_config.json), the configured values over it.
        shipped = sampling_defaults(model) if shipped_sampling is None else shipped_sampling
        self.sampling = resolve_sampling(self.generation, shipped)
        self._vocab = int(self._embed.weight.shape[0])
        self._sampler = Sampler(
            self.sampling,
            self.generation.seed,
            [tok(t) for t in STRUCTURAL_TOKENS],
            self.device,
            vocab_limit=len(self.tokenizer),  # the embedding may be padded beyond the tokenizer (7B: 156032)
        )
        self._kv = KVCache(
            model,
            self._builder.audio_token_id,
            static_len=self.context_limit if compile else None,
            on_note=on_note,
        )
        self._lock = threading.RLock()
        self._turns: list[TurnRecord] = []
        self._dropped_total = 0
        self._cap_warned = False  # the reply's cap said (once per session)
        self._snap: _Snapshot | None = None  # during a turn: the state to go back to if it fails
        self._spec: _Prefilled | None = None  # a speculative prefill waiting for its reply
        self._cpu0 = 0.0  # thread_time() when the current reply() began

    # ---- figures -----------------------------------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        return self._embed.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self._embed.weight.dtype

    @property
    def system_prompt(self) -> str:
        """The system message: the configured prompt plus the reply-language hint, if any."""
        return conversation.system_prompt(self.generation.system_prompt, self.generation.language)

    @property
    def turns(self) -> tuple[TurnRecord, ...]:
        """The turns kept in the context, oldest first (a pending speculation's turn is not one yet)."""
        turns, spec = self._turns, self._spec  # no lock: a reader in another thread must not wait for a reply
        return tuple(turns[:-1] if spec else turns)

    @property
    def ids(self) -> tuple[int, ...]:
        """Every token id of the conversation held, in order (see the class invariant)."""
        return tuple(i for t in self.turns for i in (*t.prompt_ids, *t.reply_ids))

    @property
    def context_tokens(self) -> int:
        return sum(len(t.prompt_ids) + len(t.reply_ids) for t in self.turns)

    @property
    def dropped_turns(self) -> int:
        """Turns dropped so far to fit the context budget (since the last reset)."""
        return self._dropped_total

    @property
    def speculating(self) -> bool:
        """A speculative prefill is waiting for its turn."""
        return self._spec is not None

    @property
    def speculation_complete(self) -> bool:
        """The pending speculation's reply is decoded to its end (:meth:`speculate_reply` reached it)."""
        spec = self._spec
        return spec is not None and spec.done

    # ---- the Backend protocol -----------------------------------------------------------------------------

    def reply(
        self, turn: UserTurn, on_text: Callable[[str], None] | None = None, cancel: threading.Event | None = None
    ) -> ReplyResult:
        """Add ``turn`` and generate the reply, streaming text pieces to ``on_text`` as they become final.

        Raises BackendError (one line) and leaves the conversation as it was if anything fails.
        """
        t0 = time.perf_counter()  # ttft runs from here: the turn's audio is in hand
        self._cpu0 = time.thread_time()
        with self._lock:
            spec, self._spec = self._spec, None
            if spec is not None and not same_turn(spec.turn, turn):
                self._rollback(spec.snap)
                spec = None
            self.last_speculated = spec is not None
            self._snap = snap = spec.snap if spec else self._snapshot()
            try:
                prefilled = spec or self._prefill(turn, snap, None)
                assert prefilled is not None
                return self._decode(prefilled, on_text or (lambda _t: None), cancel or threading.Event(), t0)
            except BaseException as err:
                self._rollback(snap)
                if isinstance(err, (KeyboardInterrupt, SystemExit)):
                    raise
                if type(err).__name__ == "OutOfMemoryError" and torch.cuda.is_available():
                    torch.cuda.empty_cache()  # give back what the failed step allocated
                raise backend_error(err, self.context_tokens) from err
            finally:
                self._snap = None

    def speculate(self, turn: UserTurn, cancel: threading.Event | None = None) -> bool:
        """Encode and prefill ``turn`` now, before it is final (e.g. once the segmenter heard a short pause).

        If the next :meth:`reply` gets an equal turn (same text, same audio samples), it starts decoding at
        once; any other reply, :meth:`cancel_speculation`, :meth:`truncate_last_reply` or :meth:`reset` rolls
        the speculation back first. ``cancel`` (speech resumed) stops the prefill between two chunks and rolls
        it back. Returns whether the speculation is in place; a failure is not raised (the real turn will
        report it) and leaves the session unchanged.
        """
        with self._lock:
            self.cancel_speculation()
            self._snap = snap = self._snapshot()
            try:
                prefilled = self._prefill(turn, snap, cancel or threading.Event())
            except BaseException as err:
                self._rollback(snap)
                if isinstance(err, (KeyboardInterrupt, SystemExit)):
                    raise
                return False
            finally:
                self._snap = None
            if prefilled is None:  # cancelled: speech resumed
                self._rollback(snap)
                return False
            self._spec = prefilled
            return True

    def speculate_reply(
        self,
        enough: Callable[[str], bool],
        cancel: threading.Event | None = None,
        until: threading.Event | None = None,
    ) -> str | None:
        """Decode the pending speculation's reply ahead of time (during the hang-over), until ``enough(text)``
        says the text so far suffices (e.g. its first sentence is complete), the reply ends, or ``until`` is set
        (the real turn is waiting: what is decoded stays). Returns the reply text decoded so far (the whole
        speculative text, not only this call's), or None when there is no speculation.

        ``cancel`` (speech resumed) rolls everything back — the turn, the cache, the sampler's state and
        random generator — within one token, as :meth:`cancel_speculation`. A failure rolls back as well and
        returns None (the real turn will report it). The next :meth:`reply` with the same turn hands the text
        out at once and goes on decoding from the same state: its reply equals a non-speculative run's.
        """
        with self._lock:
            spec = self._spec
            if spec is None:
                return None
            cancel = cancel or threading.Event()
            until = until or threading.Event()
            try:
                t_prev: float | None = None
                while not spec.done and not enough("".join(spec.pieces)):
                    if cancel.is_set():
                        self.cancel_speculation()
                        return None
                    if until.is_set():
                        break
                    t_prev = self._decode_one(spec, spec.pieces.append, t_prev)
                if spec.done and spec.detok is not None:
                    piece = spec.detok.flush()  # the reply's end: its held-back text too (reply() adds nothing)
                    if piece:
                        spec.pieces.append(piece)
            except BaseException as err:
                self.cancel_speculation()
                if isinstance(err, (KeyboardInterrupt, SystemExit)):
                    raise
                return None
            return "".join(spec.pieces)

    def cancel_speculation(self) -> None:
        """Roll a pending speculative prefill back (speech resumed); nothing if there is none."""
        with self._lock:
            spec, self._spec = self._spec, None
            if spec is not None:
                self._rollback(spec.snap)

    def truncate_last_reply(self, spoken_text: str) -> None:
        """Cut the last reply back to ``spoken_text`` (barge-in), marked as interrupted.

        Keeps the longest prefix of the reply's tokens whose text is a prefix of ``spoken_text`` (never more
        than was spoken). The cache is cut back to match; the next turn then closes the reply as usual.
        """
        self.truncate_reply(spoken_text, 0)

    def truncate_reply(self, spoken_text: str, later: int) -> None:
        """Cut the reply ``later`` turns before the last back to ``spoken_text``, as :meth:`truncate_last_reply`
        does the last one (``later`` = 0). The turns after it keep their ids and audio embeddings; the cache
        is cut back to the cut and the next turn rebuilds the rest from them (no audio is encoded again)."""
        with self._lock:
            self.cancel_speculation()
            if not 0 <= later < len(self._turns):
                return
            at = len(self._turns) - 1 - later
            turn = self._turns[at]
            keep = spoken_prefix_ids(self.tokenizer, list(turn.reply_ids), spoken_text)
            if keep == len(turn.reply_ids):
                return
            ids = turn.reply_ids[:keep]
            text = self.tokenizer.decode(list(ids), skip_special_tokens=True, clean_up_tokenization_spaces=False)
            self._turns[at] = dataclasses.replace(turn, reply_ids=ids, reply_text=text, interrupted=True)
            # A later turn's prompt does not depend on an earlier reply (the builder renders the user messages;
            # the reply's close is the next prompt's start), so only the cache after the cut is stale.
            cut = sum(len(t.prompt_ids) + len(t.reply_ids) for t in self._turns[:at]) + len(turn.prompt_ids) + keep
            self._kv.crop(cut)

    def reset(self) -> None:
        """Start a new conversation (the system prompt stays). Frees the cache and the audio embeddings."""
        with self._lock:
            self._spec = None
            self._turns = []
            self._kv.drop()
            self._dropped_total = 0

    # ---- one turn -----------------------------------------------------------------------------------------

    def _prefill(self, turn: UserTurn, snap: _Snapshot, cancel: threading.Event | None) -> _Prefilled | None:
        """Add ``turn`` (checked, encoded, fitted to the budget) and prefill it; None if ``cancel`` was set."""
        audios = check_turn(turn)
        embeds = self._encode(audios, cancel)
        if embeds is None:  # cancelled inside the encoder: nothing was added yet
            return None
        message = UserMessage(len(audios), turn.text)
        prompt_ids, dropped, max_new = self._fit(message, embeds, self.generation.max_new_tokens)
        self._turns.append(
            TurnRecord(message, tuple(len(a) / SAMPLE_RATE for a in audios), tuple(embeds), tuple(prompt_ids))
        )
        logits = self._prefill_pending(cancel)
        if logits is None:
            return None
        return _Prefilled(turn, audios, logits, prompt_ids, dropped, max_new, snap)

    def _decode(self, p: _Prefilled, on_text: Callable[[str], None], cancel: threading.Event, t0: float) -> ReplyResult:
        interrupted = False
        t_first: float | None = None
        if p.detok is not None:  # decoded ahead by speculate_reply: its text is the reply's start, at once
            t_first = time.perf_counter()
            self.last_cpu_ttft_s = time.thread_time() - self._cpu0
            for piece in p.pieces:
                on_text(piece)

        def emit(piece: str) -> None:
            p.pieces.append(piece)
            on_text(piece)

        t_prev: float | None = None
        while not p.done:
            if cancel.is_set():
                interrupted = True
                break
            t_prev = self._decode_one(p, emit, t_prev)
            if t_first is None:
                t_first = t_prev
                self.last_cpu_ttft_s = time.thread_time() - self._cpu0
        detok = p.detok or IncrementalDetokenizer(self.tokenizer)
        piece = detok.flush()
        if piece:
            emit(piece)
        self.last_logits = p.kept_logits
        reply = p.reply
        self._turns[-1] = dataclasses.replace(
            self._turns[-1], reply_ids=tuple(reply), reply_text=detok.emitted, interrupted=interrupted
        )
        t_first = t_first if t_first is not None else time.perf_counter()
        return ReplyResult(
            text=detok.emitted,
            n_tokens=len(reply),
            ttft_s=t_first - t0,
            tok_per_s=p.steps_timed / p.decode_s if p.steps_timed and p.decode_s > 0 else 0.0,
            context_tokens=self.context_tokens,
            interrupted=interrupted,
            prompt_ids=tuple(p.prompt_ids),
            reply_ids=tuple(reply),
            dropped_turns=p.dropped,
        )

    def _seen_ids(self) -> torch.Tensor | None:
        """A [vocab] mask of the ids held (prompt and replies of every kept turn), or None without a penalty."""
        if self.sampling.repetition_penalty == 1.0:
            return None
        seen = torch.zeros(self._vocab, dtype=torch.bool, device=self.device)
        ids = [i for t in self._turns for i in (*t.prompt_ids, *t.reply_ids)]
        if ids:
            seen[torch.tensor(ids, dtype=torch.long, device=self.device)] = True
        return seen

    def _decode_one(self, p: _Prefilled, emit: Callable[[str], None], t_prev: float | None) -> float:
        """Sample the reply's next token from ``p.logits``, hand out its text, feed it; returns when it was
        sampled (``t_prev``: the previous token's, in this same run of steps, for the decode speed)."""
        if p.detok is None:
            p.detok = IncrementalDetokenizer(self.tokenizer)
        if not p.seen_ready:  # the repetition penalty's ids: the whole conversation, as generate sees it
            p.seen, p.seen_ready = self._seen_ids(), True
        if self.keep_logits:
            p.kept_logits.append(self._sampler.mask(p.logits).cpu())
        token = self._sampler(p.logits, p.seen)
        if p.seen is not None:
            p.seen[token] = True
        t = time.perf_counter()
        if t_prev is not None:
            p.decode_s += t - t_prev
            p.steps_timed += 1
        if token in self._end_ids:
            p.done = True
            return t
        p.reply.append(token)
        piece = p.detok.feed(token)
        if piece:
            emit(piece)
        if len(p.reply) >= p.max_new:
            p.done = True  # the last token is not fed: the next turn's prefill feeds it
            return t
        p.logits = self._kv.step(token)
        return t

    def _encode(self, audios: Sequence[np.ndarray], cancel: threading.Event | None = None) -> list[torch.Tensor] | None:
        """Each audio's embeddings [N_i, hidden] (N_i = the processor's <|AUDIO|> count), encoded once; None
        if ``cancel`` was set during the encoding (checked before each encoder layer: a speculative encode
        overtaken by new speech stops within one layer instead of finishing work that will be thrown away).

        Features are the processor's bit for bit, computed over the audio rather than 30 s of padding
        (:mod:`voiceassist.model.features`); the encoder is :func:`voiceassist.model.encoder.encode_audios`.
        """
        if not audios:
            return []
        feats, mask = features.extract(self.processor.feature_extractor, audios)
        try:
            out = encoder.encode_audios(self.model, feats, mask, trimmed=self.trimmed_encoder, cancel=cancel)
        except encoder.EncodingCancelled:
            return None
        return [e.to(self.dtype) for e in out]

    def _fit(self, message: UserMessage, embeds: list[torch.Tensor], max_new: int) -> tuple[list[int], int, int]:
        """The new turn's prompt ids, after dropping the oldest turns if the context would overflow.

        Returns (prompt ids, turns dropped, max new tokens for this reply).
        """
        counts = [e.shape[0] for e in embeds]
        prompt = self._builder.turn_ids(self.system_prompt, [t.message for t in self._turns], message, counts)
        reserve = budget.reply_reserve(self.context_limit, max_new)
        room = self.context_limit - self.context_tokens - len(prompt)
        if room >= max_new:
            return prompt, 0, max_new
        if room >= reserve:  # the history fits: keep all of it, the reply gets the room left
            return prompt, 0, self._capped(max_new, room)
        # Drop whole turns, oldest first, until the rest fits the trim target. Sizes are estimated from the
        # current ids (re-rendering shifts only the system message and audio numbers: a few tokens), then the
        # kept turns are re-rendered exactly and the room left is checked exactly.
        target = int(self.context_limit * conversation.TRIM_TARGET)
        keep = list(self._turns)
        size = sum(len(t.prompt_ids) + len(t.reply_ids) for t in keep)
        dropped = 0
        while keep and size + len(prompt) + reserve > target:
            gone = keep.pop(0)
            size -= len(gone.prompt_ids) + len(gone.reply_ids)
            dropped += 1
        # Free the old cache now (the snapshot's hold too), so a GPU never holds two; the prefill rebuilds it
        # from the kept ids and audio embeddings.
        if self._snap is not None:
            self._snap.cache_mark = self._kv.forget(self._snap.cache_mark)
        self._kv.drop()
        self._turns = self._renumbered(keep)
        self._dropped_total += dropped
        prompt = self._builder.turn_ids(self.system_prompt, [t.message for t in self._turns], message, counts)
        room = self.context_limit - self.context_tokens - len(prompt)
        if room < 1:
            positions = getattr(self.model.config.get_text_config(), "max_position_embeddings", None)
            raise budget.turn_too_long(len(prompt), self.context_limit, positions)
        return prompt, dropped, self._capped(max_new, room) if room < max_new else max_new

    def _capped(self, max_new: int, room: int) -> int:
        """``room`` (< max_new): the reply's cap this turn; said once per session."""
        if not self._cap_warned:
            self._cap_warned = True
            budget.warn_reply_capped(max_new, room, self.context_limit)
        return room

    def _renumbered(self, turns: list[TurnRecord]) -> list[TurnRecord]:
        """``turns`` as the first turns of a conversation: prompts re-rendered (audio numbers, system prompt)."""
        out: list[TurnRecord] = []
        for t in turns:
            ids = self._builder.turn_ids(
                self.system_prompt, [o.message for o in out], t.message, [e.shape[0] for e in t.audio_embeds]
            )
            out.append(dataclasses.replace(t, prompt_ids=tuple(ids)))
        return out

    def _prefill_pending(self, cancel: threading.Event | None) -> torch.Tensor | None:
        """Run every held id the cache lacks (the new turn, a last reply token, or all after a trim) with the
        audio embeddings of the turns they belong to; return the logits after the last one."""
        start = 0
        ids: list[int] = []
        audio: list[torch.Tensor] = []
        cached = self._kv.length
        for t in self._turns:
            end = start + len(t.prompt_ids) + len(t.reply_ids)
            if end > cached:
                # The cache ends at the end of a turn or one token before it (a reply's last token is not fed
                # until the next turn), never inside a prompt: audio goes with whole turns.
                ids.extend((*t.prompt_ids, *t.reply_ids)[max(0, cached - start) :])
                if start >= cached:
                    audio.extend(t.audio_embeds)
            start = end
        return self._kv.extend(ids, audio, cancel)

    def _snapshot(self) -> _Snapshot:
        return _Snapshot(list(self._turns), self._kv.mark(), self._dropped_total, self._sampler.get_state())

    def _rollback(self, snap: _Snapshot) -> None:
        """Back to ``snap``: the same turns; the cache cut back (or, if it was dropped for a rebuild, rebuilt
        lazily by the next turn: it is derived from the ids and audio embeddings)."""
        self._turns = list(snap.turns)
        self._dropped_total = snap.dropped_total
        self._sampler.set_state(snap.sampler_state)
        self._kv.restore(snap.cache_mark)
