"""compute-conductor: the reference conductor (native threads, no eventlet)."""
import sys

from oslo_log import log as logging

from agent import conf


def main(argv=None) -> int:
    from agent import service
    logging.register_options(conf.CONF)
    conf.CONF(argv if argv is not None else sys.argv[1:], project='compute-agent')
    logging.setup(conf.CONF, 'compute-conductor')
    svc = service.ConductorService(conf.CONF)
    svc.start()
    svc.wait()
    return 0


if __name__ == '__main__':
    sys.exit(main())
