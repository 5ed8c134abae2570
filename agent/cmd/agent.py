"""compute-agent: the node-resident agent (eventlet; patched before anything else loads)."""
import eventlet

eventlet.monkey_patch()

import sys  # noqa: E402

from oslo_log import log as logging  # noqa: E402

from agent import conf  # noqa: E402
from agent import crashpoints  # noqa: E402
from agent import exception  # noqa: E402
from agent import rpc  # noqa: E402


def main(argv=None) -> int:
    from agent import service
    rpc.lead_own_process_group()
    logging.register_options(conf.CONF)
    conf.CONF(argv if argv is not None else sys.argv[1:], project='compute-agent')
    logging.setup(conf.CONF, 'compute-agent')
    if not crashpoints.arm_for_service(conf.CONF.debug, logging.getLogger(__name__)):
        return 1
    try:
        svc = service.AgentService(conf.CONF)
        svc.start()
    except exception.AgentError as exc:
        logging.getLogger(__name__).error('cannot start: %s', exc)
        return 1
    svc.wait()
    return 0


if __name__ == '__main__':
    sys.exit(main())
