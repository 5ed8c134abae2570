"""Warm boots: pools of saved, already-booted spares, and restoring one as an instance.

One part; the compute core calls only ``part.WarmPart`` and hands it what it uses of the node
in a ``node.Node`` (it reads nothing of the core):

- ``part.py``     the one object: apply (a spec naming a pool), held (spares' uuids), boot
                  (take a spare and restore it, or say why the job boots cold), recover
                  (start-up), on_event (a spare's events), run / stop (the filler), stats
- ``node.py``     what the part is given: driver, storage, seeds, claims, and a few calls
                  the core answers (is the node busy, wait for ready, ready, send identity)
- ``pools.py``    pools' flavors from ``[warm_pool:NAME]``; a spec naming a pool (pure)
- ``spares.py``   saved spares on disk: records, memory images; handed out once
- ``filler.py``   keeps the pools full while the node is quiet
- ``restore.py``  a spare restored as the instance (one libvirt call), its seed applied
- ``guest.py``    a command in a cloud guest through its qemu-guest-agent

The libvirt side (spares' domains, restores) is ``agent.virt.libvirt.spares``.
"""
