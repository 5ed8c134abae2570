"""Report signatures: HMAC-SHA256 under the sending node's own key.

The broker tells the conductor nothing about who published a message, and any node may
publish to the conductor's report topic, so a report proves its node by a key that only that
node and the conductor hold (``tools/setup-node.sh --node NAME`` makes it). The signature
covers everything the conductor stores from a report; replays of a node's own reports are
harmless (older ``seq`` numbers never overwrite newer ones) and nobody else can read them.
"""
import hashlib
import hmac
import json

KEY_BYTES = 32


def _canonical(host, states, resources, sent_at) -> bytes:
    return json.dumps({'host': host, 'states': states, 'resources': resources,
                       'sent_at': sent_at}, sort_keys=True, separators=(',', ':'),
                      allow_nan=False).encode()


def sign(key: bytes, host, states, resources, sent_at) -> str:
    """The hex signature of one report."""
    return hmac.new(key, _canonical(host, states, resources, sent_at), hashlib.sha256).hexdigest()


def valid(key: bytes, sig, host, states, resources, sent_at) -> bool:
    """Whether ``sig`` signs this report under ``key`` (False for anything malformed)."""
    if not isinstance(sig, str) or len(sig) != 64:
        return False
    try:
        want = sign(key, host, states, resources, sent_at)
    except (TypeError, ValueError):          # not JSON: NaN, odd types
        return False
    return hmac.compare_digest(want, sig)


def parse_key(text: str) -> bytes:
    """A key from its hex text (at least KEY_BYTES bytes); ValueError otherwise."""
    key = bytes.fromhex(text.strip())
    if len(key) < KEY_BYTES:
        raise ValueError('a report key has at least %d bytes (%d hex digits)'
                         % (KEY_BYTES, 2 * KEY_BYTES))
    return key
