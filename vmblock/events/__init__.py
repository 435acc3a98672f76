"""Events that reach someone, and the policies the server acts on by itself.

* ``delivery.Delivery``: every event the pool records (``Pool.record_event``) or the store
  commits (low space, pool full, quota) goes, off the data path, to followers (``vmblock
  events --follow``), the ``events.exec`` command, the ``events.webhook`` URL and syslog;
* ``watch.SpaceWatch``: ``vm_space_hog`` and ``vm_flash_hog``;
* ``schedule.SnapshotSchedule``: automatic snapshots with retention (``vm set
  --snapshot-every``);
* ``runtime.EventsRuntime``: the three together in a running server.

Above ``vmblock.meta`` (it reads and records through the pool) and below the admin layer,
whose verbs it is handed as callables (a snapshot goes through the server's drain).
"""
