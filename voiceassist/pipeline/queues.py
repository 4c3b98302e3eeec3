"""The two bounded data queues between the stages: turns (→ model stage) and events (→ front end)."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from voiceassist.events import Event, Level
from voiceassist.pipeline.messages import TurnRequest

EVENTS_MAX = 2000  # events queue length; Level events only go in while it is less than half full
TURNS_MAX = 8  # turns waiting for the model; a microphone's turn beyond this is dropped with an error
POLL_S = 0.05  # how often a waiting thread looks at the stop event, s
FULL_POLL_S = 0.005  # how often a writer waiting for room in the full turn queue looks again, s

T = TypeVar("T")


def put_nowait(q: queue.Queue[Any], item: Any) -> None:
    """Put without waiting; a full queue drops the item."""
    try:
        q.put_nowait(item)
    except queue.Full:
        pass  # the front end is not keeping up; Level events and the like are not worth blocking capture for


def take_waiting(q: queue.Queue[T] | queue.SimpleQueue[T]) -> Iterator[T]:
    """The items waiting in ``q``, taken one at a time without waiting, until it is empty (a stage's control
    inbox, read between blocks or turns). Each is taken only when the loop asks for it."""
    while True:
        try:
            item = q.get_nowait()
        except queue.Empty:
            return
        yield item


class TurnQueue:
    """Turns for the model stage. Writers: the capture stage (utterances; waits only for a fast file) and the
    App's submit_text / submit_file (UI thread, never waits). Reader: the model stage, which calls ``done()``
    once per turn it took. ``pending()``: turns submitted and not yet finished (waiting or being answered).

    Each turn gets a submission number (1, 2, ...; in queue order) that ``get`` hands out with it: a stop (the
    wake word, the key) cancels every turn submitted before it, ``last_submitted()`` then, and the model stage
    knows a waiting turn it takes later by its number."""

    def __init__(self, stop: threading.Event, maxsize: int = TURNS_MAX) -> None:
        self._q: queue.Queue[tuple[int, TurnRequest]] = queue.Queue(maxsize=maxsize)
        self._stop = stop
        self.maxsize = maxsize
        self._seq = 0  # the last submission number given
        self._put_lock = threading.Lock()  # numbers in queue order: two writers (capture, UI) never interleave

    def put(self, turn: TurnRequest, wait: bool) -> bool:
        """Queue ``turn``; False when the queue is full (after waiting, with ``wait``, until stop)."""
        while True:
            with self._put_lock:
                try:
                    self._q.put_nowait((self._seq + 1, turn))
                    self._seq += 1
                    return True
                except queue.Full:
                    pass
            if not wait or self._stop.wait(FULL_POLL_S):
                return False

    def get(self, timeout: float) -> tuple[int, TurnRequest]:
        """The next turn and its submission number (raises ``queue.Empty`` after ``timeout`` s)."""
        return self._q.get(timeout=timeout)

    def last_submitted(self) -> int:
        """The submission number of the last turn queued (0: none yet); every turn up to it is in the queue,
        being answered or done."""
        with self._put_lock:
            return self._seq

    def done(self) -> None:
        """The turn last taken is finished (answered, failed or given up)."""
        self._q.task_done()

    def pending(self) -> int:
        return self._q.unfinished_tasks

    def waiting(self) -> int:
        """Turns in the queue, not yet taken."""
        return self._q.qsize()

    def drain(self) -> None:
        """Drop every waiting turn (/reset)."""
        while True:
            try:
                self._q.get_nowait()
            except queue.Empty:
                return
            self._q.task_done()

    def wait_idle(self) -> bool:
        """Wait until no turn is pending or until stop; True if idle."""
        while self.pending() and not self._stop.is_set():
            self._stop.wait(0.005)
        return not self.pending()


class EventStream:
    """Events for the front end. Writers: the capture stage (never waits: drops when full), the model stage
    (waits while full, until stop), the UI's command methods and the speech stage (never wait). Reader: the
    front end, through ``queue``. Level events are only put while it is less than half full (dropped first).
    ``sinks`` see every event but Level on the producing thread, before it is queued (the --events writer, the
    kiosk's log): they must be quick and thread-safe."""

    def __init__(self, stop: threading.Event, maxsize: int = EVENTS_MAX) -> None:
        self.queue: queue.Queue[Event] = queue.Queue(maxsize=maxsize)
        self.sinks: list[Callable[[Event], None]] = []
        self._stop = stop
        self._max = maxsize

    def put(self, event: Event, wait: bool = True) -> None:
        if isinstance(event, Level):
            if self.queue.qsize() < self._max // 2:
                put_nowait(self.queue, event)
            return
        for sink in self.sinks:
            try:
                sink(event)
            except Exception:  # noqa: BLE001 - a failing log must not stop the assistant
                pass
        if not wait:
            put_nowait(self.queue, event)
            return
        while True:
            try:
                self.queue.put(event, timeout=POLL_S)
                return
            except queue.Full:
                if self._stop.is_set():
                    return
