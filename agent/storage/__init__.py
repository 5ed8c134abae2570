"""Instance root disks: the backend contract, the LVM and file backends, and the command runner.

Storage commands run through ``sh`` in worker processes that never import eventlet (see
``commands``); the agent drives them from the global work queue.
"""
