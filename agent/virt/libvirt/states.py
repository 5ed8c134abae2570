"""libvirt's domain events and states as the driver contract's power states (pure)."""
from agent.virt import driver


def from_event(lv, event: int, detail: int) -> str | None:
    """Map a lifecycle event to a power state; None when the event changes none."""
    if event in (lv.VIR_DOMAIN_EVENT_STARTED, lv.VIR_DOMAIN_EVENT_RESUMED):
        return driver.RUNNING
    if event in (lv.VIR_DOMAIN_EVENT_SUSPENDED, lv.VIR_DOMAIN_EVENT_PMSUSPENDED):
        return driver.PAUSED
    if event == lv.VIR_DOMAIN_EVENT_STOPPED:
        if detail in (lv.VIR_DOMAIN_EVENT_STOPPED_CRASHED, lv.VIR_DOMAIN_EVENT_STOPPED_FAILED):
            return driver.CRASHED
        return driver.SHUTDOWN
    if event == lv.VIR_DOMAIN_EVENT_CRASHED:
        return driver.CRASHED
    return None   # DEFINED, UNDEFINED (handled apart), SHUTDOWN (STOPPED follows)


def from_state(lv, state: int) -> str:
    """Map a domain state (a listing's or ``state()``'s) to a power state."""
    return {
        lv.VIR_DOMAIN_RUNNING: driver.RUNNING, lv.VIR_DOMAIN_BLOCKED: driver.RUNNING,
        lv.VIR_DOMAIN_PAUSED: driver.PAUSED, lv.VIR_DOMAIN_PMSUSPENDED: driver.PAUSED,
        lv.VIR_DOMAIN_SHUTDOWN: driver.RUNNING,   # shutting down, still running
        lv.VIR_DOMAIN_SHUTOFF: driver.SHUTDOWN, lv.VIR_DOMAIN_CRASHED: driver.CRASHED,
    }.get(state, driver.NOSTATE)
