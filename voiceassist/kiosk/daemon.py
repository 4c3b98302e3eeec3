"""The kiosk service loop: the App without a screen, run unattended.

Main thread: the loop below consumes ``app.events`` and writes each as a JSON line (plus log records), keeps
the status file, resets the conversation (idle, max turns), speaks the greeting, handles SIGTERM (clean stop
within 5 s) and SIGHUP (reload the configuration), and exits non-zero when a worker thread died. Other
threads: the App's capture and model workers, the Speaker's, and the heartbeat (``systemd.Heartbeat``), which
pings the systemd watchdog only while all of them are alive.

Exit codes: 0 clean stop (SIGTERM, or the end of ``--from-file`` input); the ``VoiceAssistError`` codes at
start (2 configuration, 3 audio file, 4 device, 5 model); 1 a worker died (systemd restarts the service).
"""

from __future__ import annotations

import argparse
import dataclasses
import faulthandler
import logging
import os
import queue
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from voiceassist.config import Config
from voiceassist.errors import VoiceAssistError
from voiceassist.events import AssistantState, ErrorEvent, Event, Level, ReplyDone, Status, UtteranceEvent, Wake
from voiceassist.kiosk.jsonlog import JsonLines, JsonLogHandler
from voiceassist.kiosk.status import StatusFile, status_path
from voiceassist.kiosk.systemd import Heartbeat, Notifier, watchdog_interval_s

if TYPE_CHECKING:
    from voiceassist.audio.sources import AudioSource
    from voiceassist.pipeline.speech import Speaker

log = logging.getLogger("voiceassist.kiosk")

POLL_S = 0.1  # how often the loop looks at its flags between events, s
STOP_TIMEOUT_S = 3.0  # App.stop budget; with the rest of the shutdown well inside SIGTERM's 5 s
HEALTH_EVERY_S = 2.0  # worker check interval when systemd asks for no watchdog, s
EXIT_WORKER_DIED = 1
SHUTDOWN_GUARD_S = 4.5  # SIGTERM → exit at the latest after this long, s (the promise is 5 s)
EXIT_SHUTDOWN_STUCK = 1  # exiting is forced: systemd shows the stop as failed, the journal has the stacks
SPEECH_STUCK_S = 2.0  # still "speaking" this long after a speech-output error = stuck, s
HEALTH_STATUS_S = 5.0  # how often the status file gets the health figures (memory, queues, capture counters), s
# Settings the running kiosk applies on SIGHUP; any other change is reported as needing a restart.
LIVE_KEYS = {
    "kiosk.greeting",
    "kiosk.idle_reset_s",
    "kiosk.max_turns",
    "kiosk.store_audio",
    "kiosk.store_transcripts",
    "kiosk.store_dir",
    "kiosk.store_max_mb",
    "kiosk.store_max_days",
    "kiosk.status_file",
    "tts.enabled",
}


def changed_keys(old: Config, new: Config) -> list[str]:
    """``section.key`` of every setting that differs."""
    out = []
    for sec in dataclasses.fields(old):
        a, b = getattr(old, sec.name), getattr(new, sec.name)
        out += [f"{sec.name}.{f.name}" for f in dataclasses.fields(a) if getattr(a, f.name) != getattr(b, f.name)]
    return out


class Kiosk:
    """One run of ``voiceassist kiosk``. ``reload_config`` re-reads the configuration (for SIGHUP)."""

    def __init__(
        self, config: Config, args: argparse.Namespace, reload_config: Callable[[], Config], out: IO[str]
    ) -> None:
        self.config = config
        self.args = args
        self._reload_config = reload_config
        self.lines = JsonLines(out, redact=not (config.kiosk.store_transcripts or args.log_text))
        self.status = StatusFile(status_path(config.kiosk), config=str(args.config or ""))
        self.notifier = Notifier()
        self.app: Any = None
        self.store: Any = None
        self._recorder: Any = None
        self._stop = threading.Event()
        self._reload = threading.Event()
        self._dead: list[str] = []
        self._greetings = 0  # greeting turn numbers are -1, -2, ... so the Speaker never confuses them
        self._conv_turns = 0
        self._wakes = 0  # wake words heard (for the status file)
        self._last_activity = time.monotonic()
        self._limit_reset = threading.Event()  # set by TurnLimit (model worker), handled by the loop
        self._loop_beat = time.monotonic()
        self._next_health = 0.0
        self._tts_error_t = 0.0  # last speech-output error (monotonic s), 0 = none pending
        self._spoke_ok = False  # "speaking" seen and no speech-output error since

    # ---- the run --------------------------------------------------------------------------------------------
    def run(self) -> int:
        handler = JsonLogHandler(self.lines)
        root = logging.getLogger("voiceassist")
        root.addHandler(handler)
        root.setLevel(logging.INFO)
        old = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
        signal.signal(signal.SIGTERM, self._on_term_loading)
        signal.signal(signal.SIGINT, self._on_term_loading)
        signal.signal(signal.SIGHUP, lambda *_: self._reload.set())
        # `kill -USR1 <pid>`: every thread's stack on stderr (the journal), for a kiosk that seems stuck.
        faulthandler.register(signal.SIGUSR1, all_threads=True)
        try:
            return self._run()
        except VoiceAssistError as err:
            self.status.error(str(err), "start")
            log.error("%s", err, extra={"fields": {"exit_code": err.exit_code}})
            raise  # the CLI prints the one line on stderr and exits with its code (systemd shows it)
        except Exception as err:  # a bug: logged as a JSON line too, then the traceback (exit 1, restart)
            self.status.error(f"{type(err).__name__}: {' '.join(str(err).split())}", "kiosk")
            log.exception("kiosk failed")
            raise
        finally:
            self.status.update(state=AssistantState.STOPPED, detail="")
            self.status.close()  # the status file's lock: another kiosk may use it now
            root.removeHandler(handler)
            for s, h in old.items():
                signal.signal(s, h)

    def _on_term_loading(self, signum: int, _frame: Any) -> None:
        """SIGTERM/SIGINT before the App runs (the model is loading, which can take minutes and swallows
        exceptions in places): nothing is open yet that needs an orderly close, so leave at once."""
        self._stop.set()
        if self.app is None:
            log.info("stopped while starting")
            self.status.update(state=AssistantState.STOPPED, detail="")
            os._exit(0)

    def _run(self) -> int:
        from voiceassist.app import App
        from voiceassist.kiosk.faults import wrap_from_env
        from voiceassist.openers import open_backend

        cfg = self.config
        log.info(
            "kiosk starting", extra={"fields": {"status_file": str(self.status.path), "privacy": self._privacy_line()}}
        )
        if self.status.write_error:
            log.warning("%s; `voiceassist status` will not see this kiosk", self.status.write_error)
        self._open_store()
        if cfg.wake.word:  # a bad wake word or model: one line now, not after the model has loaded
            from voiceassist.wake import check_config

            check_config(cfg)
            self.status.update(wake={"word": cfg.wake.word, "detections": 0, "last": None})
        source = self._open_source()
        self._state(AssistantState.LOADING, cfg.server.url or cfg.model.name)
        backend = wrap_from_env(open_backend(cfg))
        from voiceassist.kiosk.recorder import RecordingBackend

        # Always in place (storing nothing while storage is off), so a reload can switch storage on live.
        backend = self._recorder = RecordingBackend(backend, self.store or _NoStore())
        from voiceassist.kiosk.limits import TurnLimit

        backend = TurnLimit(backend, lambda: self.config.kiosk.max_turns, self._on_turn_limit)
        speaker = self._open_speaker()
        self.status.update(model=getattr(backend, "description", ""))
        self.app = App(cfg, source, backend, speaker=speaker, stay=self.args.stay)
        signal.signal(signal.SIGTERM, lambda *_: self._stop.set())
        signal.signal(signal.SIGINT, lambda *_: self._stop.set())
        if self._stop.is_set():
            return 0
        try:
            self.app.start()  # opens the microphone: DeviceError ends the start (systemd retries)
        except BaseException:
            if speaker is not None:
                speaker.close()  # its synthesis process must not outlive us
            raise
        self.status.device("input", "open", name=getattr(source, "name", ""))
        self.notifier.ready(f"listening on {getattr(source, 'name', 'input')}")
        log.info(
            "kiosk ready",
            extra={"fields": {"model": getattr(backend, "description", ""), "input": getattr(source, "name", "")}},
        )
        # The loop's liveness counts from now: loading the model can take longer than the 30 s allowed.
        self._loop_beat = time.monotonic()
        # kiosk.watchdog = false: the heartbeat still checks the workers, it just does not ping systemd.
        heartbeat = Heartbeat(
            Notifier(enabled=cfg.kiosk.watchdog),
            self._dead_workers,
            watchdog_interval_s() or HEALTH_EVERY_S,
            self._on_dead,
        )
        # The loop's beat counts from now: a model load longer than the 30 s loop check (35 s seen on a loaded
        # 2-core machine) made the first heartbeat take the loop for dead and the kiosk exit 1 (#16).
        self._loop_beat = time.monotonic()
        heartbeat.start()
        self._greet()
        try:
            self._loop()
        finally:
            heartbeat.stop()
            self._shutdown()
        if self._dead:
            log.error("worker stopped: %s; exiting so that the service is restarted", ", ".join(self._dead))
            return EXIT_WORKER_DIED
        return 0

    def _loop(self) -> None:
        app = self.app
        while not self._stop.is_set() and not self._dead:
            self._loop_beat = time.monotonic()
            try:
                ev = app.events.get(timeout=POLL_S)
            except queue.Empty:
                ev = None
            if ev is not None:
                self._on_event(ev)
            if self._reload.is_set():
                self._reload.clear()
                self._do_reload()
            self._maybe_reset()
            self._unstick_speech()
            if time.monotonic() >= self._next_health:
                self._next_health = time.monotonic() + HEALTH_STATUS_S
                self.status.update(health=self._health())
            if app.done.is_set() and app.events.empty():
                log.info("input ended; stopping")
                break

    def _shutdown(self) -> None:
        t0 = time.monotonic()
        self._state("stopping")
        self.notifier.stopping()
        # A device call that never returns (closing a stream whose server vanished) must not keep the kiosk
        # from stopping: after SHUTDOWN_GUARD_S the stacks go to stderr (the journal) and the process exits.
        guard = threading.Timer(SHUTDOWN_GUARD_S, self._shutdown_stuck)
        guard.daemon = True
        guard.start()
        self.app.stop(timeout=STOP_TIMEOUT_S)
        while True:  # the last events (reply_done, stopped) still go out
            try:
                self._on_event(self.app.events.get_nowait())
            except queue.Empty:
                break
        guard.cancel()
        log.info("kiosk stopped", extra={"fields": {"shutdown_s": round(time.monotonic() - t0, 3)}})

    def _shutdown_stuck(self) -> None:
        log.error(
            "shutdown did not finish within %.1f s; thread stacks on stderr; exiting",
            SHUTDOWN_GUARD_S,
            extra={"fields": {"shutdown_stuck": True}},
        )
        faulthandler.dump_traceback(all_threads=True)
        self.status.update(state=AssistantState.STOPPED, detail="forced")
        os._exit(EXIT_SHUTDOWN_STUCK)

    # ---- events ---------------------------------------------------------------------------------------------
    def _on_event(self, ev: Event) -> None:
        if isinstance(ev, Level):
            return
        self.lines.event(ev)
        now = time.monotonic()
        if isinstance(ev, Status):
            self._last_activity = now  # idle time counts from the last change (e.g. the end of speaking)
            if ev.state == AssistantState.SPEAKING:
                self._spoke_ok = True
            elif self._spoke_ok and self.app is not None and self.app.speaker is not None:
                self._spoke_ok = False  # a reply was spoken with no output error since: the output works
                self.status.device("output", "open", name=self.config.audio.output_device or "default")
            self._state(ev.state, ev.detail)
        elif isinstance(ev, UtteranceEvent):
            self._last_activity = now
            self._conv_turns += 1
            self.status.update(conversation_turns=self._conv_turns)
        elif isinstance(ev, ReplyDone):
            self._last_activity = now
            if ev.n_tokens or not ev.interrupted:  # a failed turn closes its line with an empty reply_done
                self.status.count("turns")
        elif isinstance(ev, Wake):
            self._last_activity = now
            self._wakes += 1
            last = {"word": ev.word, "probability": ev.probability, "action": ev.action, "unix": time.time()}
            self.status.update(wake={"word": self.config.wake.word, "detections": self._wakes, "last": last})
        elif isinstance(ev, ErrorEvent):
            self.status.error(ev.message, ev.source)
            if ev.source == "tts":
                self._tts_error_t = now
                self._spoke_ok = False
                self.status.device("output", "error", ev.message)

    def _state(self, state: str, detail: str = "") -> None:
        self.status.update(state=state, detail=detail)
        self.notifier.status(f"{state}{': ' + detail if detail else ''}")

    def _on_device(self, state: str, detail: str) -> None:
        """ReconnectingSource's callback (capture thread): the status file and a log line."""
        self.status.device("input", state, detail if state == "lost" else "", name=detail if state == "open" else None)
        if state == "lost":
            log.warning("input device lost: %s", detail, extra={"fields": {"device_state": "lost"}})
        elif state == "open" and self.app is not None:
            log.info("input device open: %s", detail, extra={"fields": {"device_state": "open"}})

    # ---- resets and greeting ----------------------------------------------------------------------------------
    def _unstick_speech(self) -> None:
        """After a speech-output error the Speaker can stay "speaking" with nothing reaching the device (its
        lost stream closed, the sentences still queued); the App then ignores the microphone (echo
        suppression) and the kiosk would be deaf. Still speaking SPEECH_STUCK_S after the error: drop the
        rest of that speech. The next reply reopens the output device."""
        app = self.app
        if not self._tts_error_t or time.monotonic() - self._tts_error_t < SPEECH_STUCK_S:
            return
        self._tts_error_t = 0.0
        if app.state == AssistantState.SPEAKING and app.speaker is not None:
            log.warning(
                "speech output stalled after a device error: the rest of this reply is not spoken",
                extra={"fields": {"device_state": "output_stalled"}},
            )
            try:
                app.speaker.stop()
            except Exception as err:
                log.warning("could not stop the speech output: %s", err)

    def _on_turn_limit(self) -> None:
        """TurnLimit, on the model worker right after the max_turns-th turn: the worker resets before it
        takes the next turn (the App's control queue), so a question already waiting is kept."""
        self.app.reset_after_reply()
        self._limit_reset.set()

    def _maybe_reset(self) -> None:
        app = self.app
        if self._limit_reset.is_set():
            self._limit_reset.clear()
            self._reset_done(f"max_turns ({self.config.kiosk.max_turns})")
        idle_s = self.config.kiosk.idle_reset_s
        idle = (AssistantState.LISTENING, AssistantState.WAITING_FOR_WAKE, AssistantState.DEVICE_LOST)
        quiet = not app.busy and app.state in idle and not app.pending
        if idle_s and self._conv_turns and quiet and time.monotonic() - self._last_activity >= idle_s:
            app.reset()
            self._reset_done(f"idle ({idle_s:g} s without speech)")

    def _reset_done(self, reason: str) -> None:
        self._conv_turns = 0
        self._last_activity = time.monotonic()
        self.status.update(conversation_turns=0)
        self.status.count("resets")
        log.info("conversation reset: %s", reason, extra={"fields": {"reset": reason.split()[0]}})
        self._greet()

    def _greet(self) -> None:
        text = self.config.kiosk.greeting
        if not text:
            return
        self._greetings += 1
        sp = self.app.speaker if self.app.tts_on else None
        log.info("greeting", extra={"fields": {"greeting": text, "spoken": sp is not None}})
        if sp is not None:
            try:
                sp.feed(-self._greetings, text)
                sp.end_reply(-self._greetings)
            except Exception as err:  # speech is optional: the kiosk keeps listening
                log.warning("greeting not spoken: %s", err)

    # ---- configuration reload (SIGHUP) ----------------------------------------------------------------------------
    def _do_reload(self) -> None:
        self.notifier.reloading()
        try:
            new = self._reload_config()
            new = dataclasses.replace(new, ui=dataclasses.replace(new.ui, mode="handsfree"))
            keys = changed_keys(self.config, new)
            live = [k for k in keys if k in LIVE_KEYS]
            if any(k.startswith("kiosk.store") for k in live):
                self._open_store(new)
            if "kiosk.status_file" in live:
                self.status.move(status_path(new.kiosk))
            if "tts.enabled" in live:
                self.app.set_tts(new.tts.enabled)
        except VoiceAssistError as err:
            self.status.error(f"configuration not reloaded: {err}", "config")
            log.error("configuration not reloaded, still running with the previous one: %s", err)
        except Exception as err:  # #16: whatever a bad file makes the loader raise, SIGHUP never kills the kiosk
            msg = f"{type(err).__name__}: {' '.join(str(err).split())}"
            self.status.error(f"configuration not reloaded: {msg}", "config")
            log.error("configuration not reloaded (%s), still running with the previous one", msg)
        else:
            self.config = new
            self.lines.redact = not (new.kiosk.store_transcripts or self.args.log_text)
            restart = [k for k in keys if k not in LIVE_KEYS]
            log.info(
                "configuration reloaded: applied %s; needs a restart: %s",
                ", ".join(live) or "nothing",
                ", ".join(restart) or "nothing",
                extra={"fields": {"applied": live, "needs_restart": restart}},
            )
        self.notifier.ready(f"{self.status.snapshot()['state']}")

    # ---- building the parts ----------------------------------------------------------------------------------------
    def _open_store(self, config: Config | None = None) -> None:
        from voiceassist.kiosk.storage import Store

        kc = (config or self.config).kiosk
        self.store = Store.from_config(kc)  # ConfigError when the folder is not writable
        if self._recorder is not None:
            self._recorder.store = self.store or _NoStore()
        if self.store is not None:
            removed = self.store.rotate()
            log.info(
                "storing %s in %s",
                " and ".join(w for w, on in (("audio", kc.store_audio), ("transcripts", kc.store_transcripts)) if on),
                self.store.folder,
                extra={"fields": {"rotated": len(removed)}},
            )

    def _open_source(self) -> AudioSource:
        from voiceassist.openers import open_input

        # The microphone is not checked first: systemd may start us before the device is there; the
        # reconnecting source waits for it.
        return open_input(
            self.config, self.args.from_file, fast=self.args.fast, check_device=False, on_device_state=self._on_device
        )

    def _open_speaker(self) -> Speaker | None:
        from voiceassist.openers import open_speaker

        return open_speaker(self.config, log.warning)

    # ---- health -------------------------------------------------------------------------------------------------
    def _dead_workers(self) -> list[str]:
        app, dead = self.app, []
        file_input = bool(self.args.from_file)
        input_ended = app.input_ended  # a file's capture thread ends with the file
        for th in app.threads:
            if (
                not th.is_alive()
                and not (file_input and input_ended and th.name == "va-capture")
                and not self._stop.is_set()
            ):
                dead.append(th.name)
        sp = app.speaker
        for th in getattr(sp, "threads", ()):
            if not th.is_alive() and not self._stop.is_set():
                dead.append(th.name)
        if time.monotonic() - self._loop_beat > 30 and not self._stop.is_set():
            dead.append("kiosk loop")
        return dead

    def _health(self) -> dict[str, Any]:
        """Figures a long run is judged by (scripts/soak.py): memory, queue depths, capture counters."""
        app = self.app
        stats = getattr(app.source, "stats", None)
        return {
            "rss_kb": rss_kb(),
            "events_queued": app.events.qsize(),
            "turns_queued": app.turns_queued,
            "blocks": getattr(stats, "blocks", 0),
            "dropped_blocks": getattr(stats, "dropped_blocks", 0),
            "overflows": getattr(stats, "overflows", 0),
            "stalls": getattr(stats, "stalls", 0),  # #16: freezes of this process, the device kept
            "threads": threading.active_count(),
            "echo": app.echo_state(),  # the echo canceller's delay / ERLE / convergence (#12); None without one
            "storage_failed_turns": getattr(self._recorder, "failed_turns", 0),  # #16: best-effort storage
        }

    def _on_dead(self, names: list[str]) -> None:
        self._dead = names
        self.status.error(f"worker stopped: {', '.join(names)}", "kiosk")

    def _privacy_line(self) -> str:
        kc = self.config.kiosk
        if not (kc.store_audio or kc.store_transcripts):
            return "nothing stored"
        return f"storing {'audio ' if kc.store_audio else ''}{'transcripts' if kc.store_transcripts else ''}".strip()


def rss_kb() -> int:
    """This process's resident memory, kB (Linux /proc; 0 elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * (os.sysconf("SC_PAGE_SIZE") // 1024)
    except (OSError, ValueError, IndexError):
        return 0


class _NoStore:
    """Storage is off (privacy by default): turns are not written anywhere."""

    folder = Path("/dev/null")

    def record_turn(self, *args: Any, **kw: Any) -> list[Path]:
        return []

    def new_conversation(self) -> str:
        return ""
