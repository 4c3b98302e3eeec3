"""The unattended kiosk: a headless service around the App (``voiceassist kiosk``).

- ``daemon.py``   the service loop: events out as JSON lines, idle and max-turn resets, greeting, signals
- ``status.py``   the status file the service keeps and ``voiceassist status`` reads
- ``storage.py``  optional storage of visitors' audio and transcripts (off by default), with rotation
- ``systemd.py``  sd_notify: READY, STATUS, WATCHDOG heartbeat; harmless when not under systemd
- ``faults.py``   a named fault injector for testing model failures (a wrapper backend, not a mock)
- ``jsonlog.py``  the stdout writer: one JSON object per line, events and log records
"""
