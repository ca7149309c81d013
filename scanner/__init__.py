"""onaccess: on-access malware scanning for Linux.

Event flow (one module per step, data flows one way):
kernel event (fanotify.py / bpf.py) -> verdict lookup (verdicts.py, store.py)
-> scan (engine.py) -> response + record (daemon.py) -> action (quarantine.py).
"""

__version__ = "0.1.0"
