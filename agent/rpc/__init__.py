"""RPC plumbing shared by the agent, the conductor and the CLI."""
import oslo_messaging

EXMODS = ['agent.exception']   # exceptions clients re-raise as the same class


def get_transport(conf):
    return oslo_messaging.get_rpc_transport(conf, allowed_remote_exmods=EXMODS)
