"""The warm path of a boot: restore one of its pool's saved spares as the instance (the
boot job runs it through ``agent.warm.part.WarmPart.boot``).

The spare is handed out once (``SpareStore.take``; a saved one is recorded as the
instance's before anything of it changes); its disk becomes the instance's (the backend moves
it under the instance's name), then ONE hypervisor call restores (or, a hot spare, resumes)
it: the guest runs on from where it was saved or paused, already booted; it is ready once it
became the instance (its identity acknowledged, its clock set). Whatever happens after the
take, the spare is used up: its memory image goes, and its reservation with it.
"""
import logging
import time

from agent import crashpoints
from agent import exception
from agent import spec as specmod
from agent.warm import guest as guestmod
from agent.warm import node as nodemod
from agent.warm import spares as sparesmod

LOG = logging.getLogger(__name__)

MISS_EMPTY = 'warm: miss, pool empty'
READY_WAIT = 10.0          # seconds the job waits for a restored guest's ready event
SEED_DEVICE = '/dev/vdb'   # a seeded pool's spares: the root disk, then the seed
# Run by qemu-ga as root in a restored cloud-init guest, its seed device as $1: drop what the
# guest cached of the spare's seed (the same size: agent.storage.seeds pads it), then let
# cloud-init take the instance's seed as a new instance: host name, SSH keys (and new host
# keys), user data, instance id. Nothing of ours runs in the guest.
APPLY_SEED = ('set -e; blockdev --flushbufs "$1"; cloud-init clean; '
              'cloud-init init --local; cloud-init init; '
              'cloud-init modules --mode=config; cloud-init modules --mode=final')


class Restorer:
    """Restores spares as instances (inside a boot job)."""

    def __init__(self, node: nodemod.Node, spares: sparesmod.SpareStore, pools: dict,
                 introduce, identity):
        """``introduce(inst)``: send a port-identity guest who it is; ``identity(inst)``:
        what it is sent (``WarmPart``)."""
        self._node = node
        self._spares = spares
        self._pools = pools
        self._introduce = introduce
        self._identity = identity

    def restore(self, inst, spec: specmod.BootSpec, spare: sparesmod.Spare,
                disks_out: list) -> str:
        """Make ``inst`` (an agent.compute.instance.Instance) from ``spare``; return the job's
        result. The instance's disk is put into ``disks_out`` as soon as it exists (the caller
        removes it if this raises)."""
        node = self._node
        pool = self._pools.get(spare.pool)
        seeded = pool is not None and pool.seeded
        if not spare.hot:
            # A hot spare needs no record: a restart keeps one only while its domain is
            # paused and its disk is its own, which stops being so at the first change.
            self._spares.mark_taken(spare, inst.uuid)
        crashpoints.reached('spare.take.marked', inst.uuid, spare.uuid)
        inst.identity_pending = True         # not ready before it is itself
        resumed = False
        try:
            if spare.disk is not None:
                disks_out.append(node.storage.adopt_disk(spare.uuid, inst.uuid))
            if seeded:                       # the instance's own, in place of the spare's
                disks_out.append(node.seeds.create(spec))
            if spare.hot:
                inst.channel_open = True     # its guest held the agent channel when paused
                # Told who it is while still paused (QEMU queues the line on the open port):
                # the guest reads it as it wakes, with no round trip after the resume.
                node.driver.resume_warm(spec, spare, tuple(disks_out),
                                        identity=self._identity(inst))
                resumed = True
                crashpoints.reached('spare.take.resumed', inst.uuid, spare.uuid)
            else:
                node.driver.restore_warm(spec, spare, tuple(disks_out))
                crashpoints.reached('spare.take.restored', inst.uuid, spare.uuid)
            if not seeded and not spare.hot:
                # Ready once the guest acknowledged it (its clock set): told before the
                # spare's leftovers are removed, which the guest need not wait for.
                self._introduce(inst)
        except BaseException as exc:
            inst.identity_pending = False    # a cold boot follows: ready by its event
            inst.channel_open = None
            if spare.hot and not isinstance(exc, exception.HypervisorUnavailable):
                node.attempt(inst.uuid, 'remove the hot spare that did not become the '
                             'instance', node.driver.destroy, inst.uuid)
            raise
        finally:
            crashpoints.reached('spare.discard.removing', inst.uuid, spare.uuid)
            self.discard(spare, disk_left=spare.disk is not None
                         and not any(not d.readonly for d in disks_out),
                         console_of=inst.uuid if resumed else None)
        LOG.info('[instance: %s] %s from spare %s of pool %s', inst.uuid,
                 'resumed' if spare.hot else 'restored', spare.uuid, spare.pool)
        result = '%s: hit, spare %s of pool %s' % ('hot' if spare.hot else 'warm', spare.uuid,
                                                   spare.pool)
        if seeded:
            # Seconds of cloud-init follow: the define first (its domain handle serves the
            # guest-agent calls, no lookup).
            self._persist(inst)
            self._become_itself(inst, pool.identity_timeout)
            return result
        # Off the way to ready: the domain is made persistent (stop and start keep it) once
        # the guest's ready event is in (it follows the restore at once), so the one call of
        # the warm path is the only one before ready. Failing leaves it running, transient.
        node.wait_ready(inst, READY_WAIT)
        self._persist(inst)
        return result

    def _persist(self, inst) -> None:
        crashpoints.reached('warm.persist.before', inst.uuid)
        self._node.attempt(inst.uuid, 'make the restored domain persistent',
                           self._node.driver.persist, inst.uuid)

    def _become_itself(self, inst, timeout: float) -> None:
        """A restored cloud-init guest: its clock set, then cloud-init run on the instance's
        seed, through the guest agent; ready once that exited 0. Otherwise the restored
        guest is removed (AgentError: the job boots cold)."""
        node = self._node
        start = time.monotonic()
        try:
            node.driver.set_guest_time(inst.uuid)
            status = guestmod.run(node.driver, inst.uuid,
                                  ['/bin/sh', '-c', APPLY_SEED, 'sh', SEED_DEVICE], timeout,
                                  node.runtime.sleep)
            if status['exitcode'] != 0:
                raise exception.AgentError('cloud-init in the guest failed (exit %s): %s'
                                           % (status['exitcode'], status['err'][-400:].strip()))
        except exception.AgentError:
            inst.identity_pending = False
            node.attempt(inst.uuid, 'remove the restored guest that did not become the '
                         'instance', node.driver.destroy, inst.uuid)
            raise
        inst.identity_pending = False
        LOG.info('[instance: %s] clock set and seed applied in %.1f s (%d guest-agent calls)',
                 inst.uuid, time.monotonic() - start, status['polls'] + 2)
        node.ready(inst, time.time(), 'identity applied')   # its agent answered: channel open

    def discard(self, spare: sparesmod.Spare, disk_left: bool,
                console_of: str | None = None) -> None:
        """What is left of a used spare: its disk if it was not handed over (``disk_left``),
        its directory (memory image, record, console), its reservation. (A hot spare's domain
        is the instance's, or removed by the caller.) ``console_of``: the instance a hot
        spare became; a link to its directory takes the spare's place (its QEMU's console
        log rolls over by the spare's path: agent.instancedir)."""
        node = self._node
        if disk_left:
            node.attempt(spare.uuid, 'remove the disk of a used spare',
                         node.storage.delete_disks, spare.uuid)
        self._spares.remove(spare.uuid, link_to=console_of)
        node.release(spare.uuid)

    @staticmethod
    def failed_reason(exc: Exception, hot: bool = False) -> str:
        """The cold fallback's result after a restore (a ``hot`` spare's resume) that
        failed."""
        reason = str(exc) if isinstance(exc, exception.AgentError) else 'internal error: %s' % exc
        return 'cold (%s failed: %s)' % ('hot: resume' if hot else 'warm: restore', reason)
