"""compute-conductor: the reference conductor (native threads, no eventlet); with
``[conductor] workers`` > 1, that many processes sharing the topic."""
import sys

from oslo_log import log as logging

from agent import conf
from agent import crashpoints


def main(argv=None) -> int:
    from agent.conductor import db
    from agent.conductor import migrate
    from agent.conductor import service
    from agent.conductor import workers
    logging.register_options(conf.CONF)
    conf.CONF(argv if argv is not None else sys.argv[1:], project='compute-agent')
    logging.setup(conf.CONF, 'compute-conductor')
    if not crashpoints.arm_for_service(conf.CONF.debug, logging.getLogger(__name__)):
        return 1

    def run(index=None):
        svc = service.ConductorService(conf.CONF, index)
        svc.start()
        svc.wait()

    if conf.CONF.conductor.workers == 1:
        run()
        return 0

    def prepare():
        engine = db.make_engine(db.url_of(conf.CONF.conductor.database), 1)
        try:
            migrate.upgrade(engine)
        finally:
            engine.dispose()
    return workers.Launcher(conf.CONF.conductor.workers, run, prepare).run()


if __name__ == '__main__':
    sys.exit(main())
