"""RPC versions and the caps of a rolling upgrade (pure).

A version is ``MAJOR.MINOR``, compared as numbers (1.10 is after 1.9). A client sends the
version it is capped at (``[upgrade_levels]``, as nova has them: while some servers still run
older code, the control plane is capped at what the oldest serves) or, uncapped, the newest
it knows; a server accepts every minor version of its major up to its own.
"""
from agent import exception


def parse(version: str) -> tuple[int, int]:
    """``'1.10'`` -> ``(1, 10)``; ValueError if it is not MAJOR.MINOR."""
    major, _, minor = str(version).partition('.')
    if not (major.isdigit() and minor.isdigit()):
        raise ValueError('not a MAJOR.MINOR version: %r' % (version,))
    return int(major), int(minor)


def at_least(version: str, needed: str) -> bool:
    """Whether ``version`` is ``needed`` or later (same major)."""
    have, need = parse(version), parse(needed)
    return have[0] == need[0] and have[1] >= need[1]


def cap(configured: str | None, current: str, option: str) -> str:
    """The version a client sends: ``configured`` (its ``[upgrade_levels]`` ``option``) if
    set, else ``current`` (the newest this code knows). ConfigError if the cap is not a
    version of the same major at most ``current``."""
    if configured in (None, '', 'current'):
        return current
    try:
        ok = parse(configured)[0] == parse(current)[0] and at_least(current, configured)
    except ValueError as exc:
        raise exception.ConfigError(reason='[upgrade_levels] %s: %s' % (option, exc)) from None
    if not ok:
        raise exception.ConfigError(
            reason='[upgrade_levels] %s = %s: this code speaks %s.0 to %s' % (
                option, configured, parse(current)[0], current))
    return '%d.%d' % parse(configured)


def check(method: str, needed: str, capped: str, option: str) -> None:
    """VersionCapped unless ``method`` (which needs ``needed``) may be sent at ``capped``."""
    if not at_least(capped, needed):
        raise exception.VersionCapped(what=method, needed=needed, cap=capped, option=option)
