"""The tests' fixtures live in the support package ``testkit/`` (shared with the benchmarks):

* ``testkit.fixtures``: a real MongoDB-wire server for the session (SecantusDB on a free
  loopback port, or ``MONGODB_TEST_URL``) and ``mongo_server``, ``restartable_server``,
  ``mongo_url``, ``db_name``, ``other_db``, ``data_dir``, ``legacy_dir``, ``make_config``,
  ``config``, ``store``, ``db``; the autouse thread-leak guard;
* ``testkit.daemon_fixtures``: ``daemon_config`` and ``running`` (in-process daemons).

Helpers are imported from the package (``from testkit.measure import wait_for``,
``from testkit.daemon_fixtures import TOKEN``, ``from testkit.process import DaemonProcess``).
"""

pytest_plugins = ["testkit.fixtures", "testkit.daemon_fixtures"]
