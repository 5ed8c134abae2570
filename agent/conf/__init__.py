"""Configuration: one module per option group, all registered on the global ``CONF``."""
from oslo_config import cfg

from agent.conf import conductor
from agent.conf import default
from agent.conf import images
from agent.conf import jobs
from agent.conf import libvirt
from agent.conf import metrics
from agent.conf import network
from agent.conf import power
from agent.conf import readiness
from agent.conf import resources
from agent.conf import rpc
from agent.conf import storage
from agent.conf import trace
from agent.conf import upgrade_levels
from agent.conf import warm
from agent.conf import workqueue

CONF = cfg.CONF

for _mod in (default, libvirt, workqueue, conductor, storage, resources, jobs, metrics,
             trace, network, power, readiness, warm, images, upgrade_levels, rpc):
    _mod.register_opts(CONF)
