"""The files of a NoCloud seed: what a cloud image's cloud-init reads at its first boot (pure).

cloud-init's NoCloud datasource looks for a filesystem labelled ``cidata`` (the ISO the command
worker makes, ``agent.storage.operations.SEED_LABEL``) holding
``meta-data``, ``user-data`` and ``network-config``. meta-data and network-config are written
as JSON, which YAML reads as it is (no YAML library, and no YAML quoting to get wrong): every
value came through ``agent.spec``'s checks. user-data is the user's, byte for byte.
"""
import json

from agent import spec as specmod

META_DATA = 'meta-data'
USER_DATA = 'user-data'
NETWORK_CONFIG = 'network-config'

# DHCP on every ethernet NIC, whatever the guest calls it (ens3, enp1s0, eth0): the spec's
# NICs are bridge or user NICs, each with a DHCP server or none.
_NETWORK = {'version': 2, 'ethernets': {'nics': {'match': {'name': 'e*'}, 'dhcp4': True}}}


def seed_files(spec: specmod.BootSpec) -> dict[str, bytes]:
    """name -> content of each file of instance ``spec``'s seed. The instance id is the uuid
    (cloud-init runs its once-per-instance modules again only when it changes)."""
    meta = {'instance-id': spec.uuid}
    if spec.hostname:
        meta['local-hostname'] = spec.hostname
    if spec.ssh_keys:
        meta['public-keys'] = list(spec.ssh_keys)
    if spec.meta:
        meta['meta'] = dict(spec.meta)
    return {
        META_DATA: _json(meta),
        USER_DATA: (spec.user_data or '').encode('utf-8'),
        NETWORK_CONFIG: _json(_NETWORK),
    }


def _json(value) -> bytes:
    # UTF-8 as it is: values are printable text (agent.spec), which YAML reads unescaped.
    return (json.dumps(value, indent=1, sort_keys=True, ensure_ascii=False) + '\n').encode()
