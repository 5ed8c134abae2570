"""Warm boots: pools of already-booted spares, saved to disk or kept hot (paused in memory),
and making one of them the instance.

One part; the compute core calls only ``part.WarmPart`` and hands it what it uses of the node
in a ``node.Node`` (it reads nothing of the core):

- ``part.py``     the one object: apply (a spec naming a pool), held (spares' uuids), hold /
                  unhold (a spare handed to a boot at accept: one claim), boot (restore or
                  resume it, or say why the job boots cold), introduce (tell a pool instance's
                  guest who it is, at each start and reset), recover (start-up), on_event (a
                  spare's events), run / stop (the filler), hot_memory, stats
- ``node.py``     what the part is given: driver, storage, seeds, claims, and a few calls
                  the core answers (is the node busy, wait for ready, ready)
- ``pools.py``    pools' flavors and saved / hot counts from ``[warm_pool:NAME]``; a spec
                  naming a pool (pure)
- ``spares.py``   spares on disk: records, memory images; hot first, handed out once; stale
- ``filler.py``   keeps the pools full while the node is quiet
- ``restore.py``  a spare restored (or resumed) as the instance (one libvirt call), its
                  identity acknowledged or its seed applied before it is ready
- ``guest.py``    a command in a cloud guest through its qemu-guest-agent

The libvirt side (spares' domains, restores, resumes) is ``agent.virt.libvirt.spares``; the
identity port's host side ``agent.virt.libvirt.identity``.
"""
