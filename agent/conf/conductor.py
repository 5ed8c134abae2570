"""[conductor] options: where state reports go and how they are batched."""
from oslo_config import cfg

group = cfg.OptGroup('conductor', help='The conductor that receives instance state reports.')

opts = [
    cfg.StrOpt('topic', default='conductor',
               help='RPC topic of the conductor service.'),
    cfg.StrOpt('database', default='/var/lib/compute-agent/conductor.sqlite', secret=True,
               help='(conductor) Where the conductor keeps instance states and node usage: a '
                    'SQLite file (a path: the embedded default, one host) or a SQLAlchemy URL, '
                    'e.g. postgresql+psycopg2://USER:PASSWORD@HOST:PORT/DB for a fleet with '
                    'several workers (tools/setup-conductor-db.sh writes one). Migrated to the '
                    'current schema at start-up.'),
    cfg.IntOpt('workers', default=1, min=1, max=64,
               help='(conductor) Conductor processes sharing the topic: RabbitMQ hands each '
                    'report to one of them. More than one needs a store they share safely '
                    '(PostgreSQL; a SQLite file works on one host but serialises writers).'),
    cfg.IntOpt('db_pool_size', default=8, min=1, max=256,
               help='(conductor) Database connections per worker (PostgreSQL), and as many '
                    'again on demand.'),
    cfg.FloatOpt('wait_poll_interval', default=0.25, min=0.01, max=10.0,
                 help='(conductor) wait_instances is woken by the reports its own worker '
                      'applies; with workers > 1 it also looks again this often for what '
                      'other workers applied (one worker never polls).'),
    cfg.FloatOpt('reports_retention', default=86400.0, min=0.0,
                 help='(conductor) Seconds the per-report records (list_reports, report_count) '
                      'are kept; older ones are deleted every few minutes by one worker. The '
                      'instances\' and nodes\' rows are kept for as long as they live. '
                      '0 keeps every record.'),
    cfg.FloatOpt('report_window', default=0.05, min=0.0, max=10.0,
                 help='(agent) Seconds to gather further state changes before sending a batch; '
                      'at most one report is in flight and later changes supersede earlier ones.'),
    cfg.FloatOpt('report_busy_window', default=0.4, min=0.0, max=10.0,
                 help='(agent) While state changes keep coming (a boot storm), at most one '
                      'report per this many seconds: a storm of N boots costs about its '
                      'length / this many messages, and no change waits longer than this '
                      '(plus one send). A change after a quiet spell waits report_window.'),
    cfg.FloatOpt('report_timeout', default=10.0, min=0.1,
                 help='(agent) RPC timeout of one state report.'),
    cfg.FloatOpt('debug_report_delay', default=0.0, min=0.0, max=60.0,
                 help='(conductor) Testing aid: seconds the conductor sleeps before storing each '
                      'report, to show the agent is not slowed by a slow conductor. Keep 0.'),
    cfg.FloatOpt('max_future_seconds', default=300.0, min=10.0, max=3600.0,
                 help='(conductor) A report whose seq or generation lies further ahead of the '
                      'conductor\'s clock than this (agents number their reports from their '
                      'clock in ns, kept growing across restarts) is refused: a number from the '
                      'future would make every later report of that node look older. Bounds '
                      'how far a node\'s clock may run ahead.'),
    cfg.StrOpt('transport_url', secret=True,
               help='(agent) Where reports go: the fleet\'s virtual host, with this node\'s own '
                    'broker user (tools/setup-node.sh --node writes it). Unset: the agent\'s '
                    '[DEFAULT] transport_url.'),
    cfg.StrOpt('report_key', secret=True,
               help='(agent) This node\'s report key in hex: the conductor applies only reports '
                    'signed with it. Written by tools/setup-node.sh --node, with the '
                    'conductor\'s copy in node_keys_dir.'),
    cfg.StrOpt('node_keys_dir', default='/etc/compute-agent/node-keys',
               help='(conductor) One file NAME.key (hex, root only) per node: the key node '
                    'NAME signs its reports with. Read again when it changes; a node without '
                    'one has every report refused.'),
    cfg.IntOpt('max_instances_per_node', default=2000, min=1,
               help='(conductor) Live (not deleted) instance rows one node may hold; new ones '
                    'beyond are not stored, and said in the log.'),
    cfg.FloatOpt('deleted_retention', default=86400.0, min=0.0,
                 help='(conductor) Seconds the row of a deleted instance is kept (a late '
                      'query still sees it deleted); 0 keeps them.'),
    cfg.IntOpt('max_waits', default=32, min=1, max=1024,
               help='(conductor) wait_instances calls served at once per worker; one more is '
                    'refused (TooManyWaits). Reports have their own topic and threads.'),
    cfg.FloatOpt('report_retry_max', default=10.0, min=0.1,
                 help='(agent) Longest back-off between retries while the conductor is unreachable.'),
]


def register_opts(conf: cfg.ConfigOpts) -> None:
    conf.register_group(group)
    conf.register_opts(opts, group=group)


def list_opts():
    return {group: opts}
