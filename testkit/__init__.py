"""Support for the tests and the benchmarks (never shipped: not in the wheel, not in the image).

One home for what both need, so neither copies the other:

* ``testkit.measure``: stdlib only (the shim benchmarks' writer processes import it):
  ``free_port``, ``wait_for`` (poll with a deadline), ``cpu_seconds`` / ``proc_status`` from
  ``/proc``, ``pct``, ``code_version``, ``stop_process``;
* ``testkit.mongo``: the MongoDB-wire test server (SecantusDB on a free loopback port):
  ``launch_secantus``, ``TestServer`` (start / stop / restart);
* ``testkit.http``: one loopback HTTP request (``http``, ``Response``), ``parse_metrics``;
* ``testkit.daemon``: the daemon in-process (``RunningDaemon``; the one module that imports
  the daemon class), and ``python -m testkit.daemon --no-watcher``: the shim path alone;
* ``testkit.process``: ``python -m sidecar run`` as a subprocess (``DaemonProcess``);
* ``testkit.corpus``: Mentorix's legacy write pattern (``LegacyWriter``) and ``generate``;
* ``testkit.fixtures`` / ``testkit.daemon_fixtures``: the pytest fixtures, registered by
  ``pytest_plugins`` in ``tests/conftest.py``; ``SignalWriter``, ``TOKEN`` and friends.
"""

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
