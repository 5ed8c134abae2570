"""Entry point for oslo-config-generator: every option group of the agent and conductor."""
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


def list_opts():
    result = []
    for mod in (default, libvirt, workqueue, conductor, storage, resources, jobs, metrics,
                trace, network, power, readiness, warm, images, upgrade_levels, rpc):
        result.extend(mod.list_opts().items())
    return result
