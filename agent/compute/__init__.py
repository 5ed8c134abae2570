"""The compute core: instances, their state machine and the jobs that change them.

  states.py    instance states and the transitions allowed between them
  instance.py  an instance (one boot generation of a uuid)
  core.py      what the parts share: instances, jobs, tracker, the one way state changes
  requests.py  the request front end: validate, record, enqueue, answer at once
  tasks.py     the boot and delete jobs, one per instance at a time
  events.py    instance state from the hypervisor's lifecycle events
  recovery.py  start-up reconciliation, resync and orphan removal after a reconnect
  audits.py    resource audits from one hypervisor and one storage listing
  manager.py   ComputeManager: wires the parts; what the service and the endpoint call

Plain synchronous code. Concurrency comes from ``runtime`` (spawn, sleep): under the agent
these are greenthreads and ``threading`` primitives are green; in unit tests they are threads.
"""
