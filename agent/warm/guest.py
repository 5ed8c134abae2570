"""Running a command in a cloud image's guest through its own guest agent (qemu-ga
guest-exec), and waiting for it to end. The guest agent has no event for that: its status
is asked after 0.2 s, then every twice as long, at most every 2 s. Plain code."""
import time

from agent import exception

POLL_FIRST, POLL_MAX = 0.2, 2.0


def run(driver, uuid: str, argv: list[str], timeout: float, sleep, check=None) -> dict:
    """Run ``argv`` in the guest of ``uuid``; {exitcode, out, err, polls} once it exited.
    AgentError if it is not done within ``timeout`` seconds. ``check()``, between polls, may
    raise to give up early."""
    start = time.monotonic()
    pid = driver.guest_exec(uuid, argv)
    wait, polls = POLL_FIRST, 0
    while True:
        status = driver.guest_exec_status(uuid, pid)
        polls += 1
        if status is not None:
            return dict(status, polls=polls)
        if time.monotonic() - start > timeout:
            raise exception.AgentError('%s did not end in the guest within %d s'
                                       % (argv[0], timeout))
        if check is not None:
            check()
        sleep(wait)
        wait = min(wait * 2, POLL_MAX)
