"""compute-agent: the node-resident agent.

``[DEFAULT] runtime`` decides whether eventlet patches the process, and the patching must come
before anything else loads. So that one option is read first, from the same files and by the
same parser (oslo.config) as the rest; nothing else of the agent is imported until then.
"""
import argparse
import sys


def _config_args(argv: list[str]) -> list[str]:
    """Only the arguments naming configuration files and directories (the rest, such as
    logging's, are parsed later, with every option registered)."""
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    parser.add_argument('--config-file', action='append', default=[])
    parser.add_argument('--config-dir', action='append', default=[])
    known, _ = parser.parse_known_args(argv)
    return ([a for f in known.config_file for a in ('--config-file', f)]
            + [a for d in known.config_dir for a in ('--config-dir', d)])


def runtime_from_argv(argv: list[str]) -> str:
    """``[DEFAULT] runtime`` as the full parse will see it."""
    from oslo_config import cfg

    from agent.conf import default
    early = cfg.ConfigOpts()
    early.register_opt(default.runtime_opt)
    early(_config_args(argv), project='compute-agent')
    return early.runtime


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        runtime = runtime_from_argv(argv)
    except Exception as exc:   # oslo.config's errors: a bad value, an unreadable file
        print('compute-agent: cannot start: %s' % exc, file=sys.stderr)
        return 1
    if runtime == 'eventlet':
        import eventlet
        eventlet.monkey_patch()

    from oslo_log import log as logging

    from agent import conf
    from agent import crashpoints
    from agent import exception
    from agent import rpc
    from agent import service
    rpc.lead_own_process_group()
    logging.register_options(conf.CONF)
    conf.CONF(argv, project='compute-agent')
    logging.setup(conf.CONF, 'compute-agent')
    log = logging.getLogger(__name__)
    if conf.CONF.runtime != runtime:
        log.error('cannot start: [DEFAULT] runtime changed from %s to %s while starting',
                  runtime, conf.CONF.runtime)
        return 1
    if not crashpoints.arm_for_service(conf.CONF.debug, log):
        return 1
    try:
        svc = service.AgentService(conf.CONF)
        svc.start()
    except exception.AgentError as exc:
        log.error('cannot start: %s', exc)
        return 1
    svc.wait()
    return 0


if __name__ == '__main__':
    sys.exit(main())
