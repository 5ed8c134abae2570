"""Start-up reconciliation: what to do with each instance, from the three sources of truth.

Pure: given the journal's jobs, the domains of ours the hypervisor holds (one listing) and the
disks and instance directories of ours the storage holds (one listing), ``plan`` decides, per
instance uuid, one action. The manager carries the plan out.

Rules (also in docs/api.md):
- a boot interrupted by the restart (its job queued or running in the journal):
  - its domain is running: the boot got through; the job ends ``done``;
  - else, if it has run fewer than ``max_attempts`` times: whatever it made is removed and it
    runs again from the start (``resume_boot``), counting an attempt;
  - else it ends ``failed`` ("interrupted by agent restarts"), with whatever it made removed;
- an interrupted delete runs again (deleting is idempotent);
- an interrupted stop or start runs again (both are idempotent: a domain found off is
  stopped, one found running is started); an interrupted reboot is settled by the domain's
  state (running: done; else started), never rebooted twice; with no domain left, the job
  fails and the instance is lost (below);
- a domain of ours with no unfinished job is adopted and reported; never stopped or removed;
- a boot that failed before the restart comes back as an ``error`` instance with its reason,
  and a domain it left behind (its removal failed with the connection) is removed;
  a finished boot whose domain is gone comes back as ``error`` with its disk kept;
- disks and instance directories of ours that belong to none of the above are orphans and
  are removed. Ownership comes from LV tags and directory markers, never from names.
"""
import dataclasses

from agent import jobs as jobsmod

FINISH_BOOT = 'finish_boot'
RESUME_BOOT = 'resume_boot'
FAIL_BOOT = 'fail_boot'
RESUME_DELETE = 'resume_delete'
RESUME_POWER = 'resume_power'
ADOPT = 'adopt'
RESTORE_ERROR = 'restore_error'
LOST = 'lost'


@dataclasses.dataclass
class Step:
    """One start-up action for one instance uuid, with the records it acts on."""
    uuid: str
    action: str
    job: jobsmod.Job | None = None        # the job the action ends or runs again
    boot: jobsmod.Job | None = None       # the latest boot job: its spec
    domain: object = None                 # the InstanceInfo, when a domain exists
    remove_domain: bool = False           # a half-made domain (defined, not running)


@dataclasses.dataclass
class Plan:
    """The steps, and the disks and directories no instance or job holds (orphans)."""
    steps: list[Step]
    orphan_disks: list[str]
    orphan_dirs: list[str]


def _latest(jobs: list[jobsmod.Job]) -> tuple[dict, dict]:
    last, boot = {}, {}
    for job in sorted(jobs, key=lambda j: j.created_at):
        last[job.uuid] = job
        if job.kind == 'boot':
            boot[job.uuid] = job
    return last, boot


def plan(jobs: list[jobsmod.Job], domains: dict, disks, dirs, running: set[str],
         max_attempts: int = 2) -> Plan:
    """``domains``: uuid -> InstanceInfo (ours only); ``running``: uuids whose domain runs."""
    last, boot = _latest(jobs)
    steps: list[Step] = []
    keep: set[str] = set()
    for uuid in sorted(set(last) | set(domains)):
        job, info, last_boot = last.get(uuid), domains.get(uuid), boot.get(uuid)
        unfinished = job is not None and job.state not in jobsmod.FINISHED
        # Still an instance (not deleted) by the journal: a job after a boot, other than a
        # delete that went through.
        held = job is not None and not (job.kind == 'delete' and job.state == jobsmod.DONE)
        step = None
        if unfinished and job.kind == 'boot':
            if uuid in running:
                step = Step(uuid, FINISH_BOOT, job=job, boot=job, domain=info)
            else:
                action = RESUME_BOOT if job.attempts < max_attempts else FAIL_BOOT
                step = Step(uuid, action, job=job, boot=job, domain=info,
                            remove_domain=info is not None)
        elif unfinished and job.kind == 'delete':
            step = Step(uuid, RESUME_DELETE, job=job, boot=last_boot, domain=info)
        elif unfinished:          # stop, start, reboot
            step = Step(uuid, RESUME_POWER if info is not None else LOST, job=job, boot=last_boot,
                        domain=info)
        elif held and last_boot is not None and last_boot.state == jobsmod.FAILED:
            # A domain left by a failed boot (its undefine was lost with the connection)
            # is that boot's remnant, not an instance: it goes.
            step = Step(uuid, RESTORE_ERROR, job=last_boot, boot=last_boot, domain=info,
                        remove_domain=info is not None)
        elif info is not None:
            step = Step(uuid, ADOPT, boot=last_boot, domain=info)
        elif held and last_boot is not None and last_boot.state == jobsmod.DONE:
            step = Step(uuid, LOST, job=last_boot, boot=last_boot)
        if step is None:
            continue
        steps.append(step)
        if step.action in (FINISH_BOOT, RESUME_DELETE, RESUME_POWER, ADOPT, LOST):
            keep.add(uuid)       # its disk and directory belong to an instance
    # A resumed or failed boot removes its own remnants; nothing else may hold them.
    keep |= {s.uuid for s in steps if s.action in (RESUME_BOOT, FAIL_BOOT)}
    return Plan(steps=steps, orphan_disks=sorted(set(disks) - keep),
                orphan_dirs=sorted(set(dirs) - keep))
