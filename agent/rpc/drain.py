"""Leave to the broker the requests delivered while an RPC server stops.

oslo.messaging's RabbitMQ listener acknowledges a request as it arrives (in the consumer's
callback), and its ``stop()`` only ends the poll loop: the consumer is not cancelled at the
broker, which goes on delivering. When the listener's connection closes (about a second later,
in ``server.wait()``), the close reads what was delivered meanwhile, the callback acknowledges
each request, and nothing handles them: their callers wait for their timeout (the reports in
flight when a conductor stops would be lost). The listener's connection is read by
its poll thread only, so the cancel cannot be sent from here while it runs.

``leave_unacked(server)``, called between ``server.stop()`` (the poll thread has ended; what
it took is handled) and ``server.wait()``, points the consumers' callbacks at a function that
leaves a delivery unacknowledged: the broker puts each back on its queue when the connection
closes, for another worker or the next start. It reaches into oslo.messaging's rabbit driver
(the version pinned in constraints.txt); with another driver or other internals it does
nothing and says so.
"""
import logging

LOG = logging.getLogger(__name__)


def _consumers(server) -> dict | None:
    """The rabbit driver's consumers of ``server``'s listener, or None."""
    listener = getattr(getattr(server, 'listener', None), '_poll_style_listener', None)
    conn = getattr(getattr(listener, 'conn', None), 'connection', None)
    consumers = getattr(conn, '_consumers', None)
    if not isinstance(consumers, dict) or not all(hasattr(c, 'callback') for c in consumers):
        return None
    return consumers


def _leave(message) -> None:
    """A delivery after the stop: not acknowledged, so the broker requeues it at the close."""


def leave_unacked(server) -> int:
    """After ``server.stop()``, before ``server.wait()``: deliveries from now on go back to
    the broker. How many consumers were switched (-1: not the rabbit listener this code
    knows; nothing done)."""
    consumers = _consumers(server)
    if consumers is None:
        LOG.warning('cannot leave late RPC requests to the broker (not the rabbit listener '
                    'this code knows): requests delivered while stopping may be lost')
        return -1
    for consumer in consumers:
        consumer.callback = _leave
    return len(consumers)
