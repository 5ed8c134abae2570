"""A stateful fake of the LVM (and qemu-img) commands, behind the command-worker boundary.

``FakeLvm.worker`` stands in for a command-worker process: the agent's real ``CommandRunner``
and ``LvmBackend`` run on top of it. It keeps one VG with its LVs, answers ``lvs``/``vgs``
in LVM's JSON report format, fails the way LVM does (messages from captured real output),
and records every command launch in ``launches`` (independent of the agent's own counter).
"""
import json
import os
import threading

from agent.storage import cmdworker
from agent.storage import fetch
from agent.storage import operations
from tests.unit import qcow2

EXTENT = 4 * 1024 * 1024
WARNING = '  WARNING: Activation disabled. No device-mapper interaction will be attempted.\n'


class FakeLvm:
    def __init__(self, vg: str = 'vg0', size: int = 10 * 1024 ** 3):
        self.vg = vg
        self.size = size
        self.lvs: dict[str, dict] = {}
        self.launches: list[str] = []
        self.zeroed: list[str] = []                    # LVs blkdiscard --zeroout wrote
        self.fail: dict[str, tuple[int, str]] = {}     # command -> (rc, stderr) once
        self.gates: dict[str, threading.Event] = {}        # wait before answering
        self.late_gates: dict[str, threading.Event] = {}   # answer now, return it later
        self.lock = threading.Lock()

    def worker(self, python=None, env=None, args=()):
        """A worker started like the real one (its policy from ``args``)."""
        return _Worker(self, cmdworker.policy_from_args(cmdworker.parser().parse_args(args)))

    def free(self) -> int:
        return self.size - sum(lv['size'] for lv in self.lvs.values())

    def run(self, argv: list[str]) -> dict:
        name = argv[0]
        with self.lock:
            self.launches.append(name)
            failure = self.fail.pop(name, None)
        gate = self.gates.get(name)
        if gate is not None:
            gate.wait(10)
        if failure:
            return {'rc': failure[0], 'stdout': '', 'stderr': WARNING + failure[1]}
        handler = getattr(self, '_' + name.replace('-', '_'), None)
        if handler is None:
            return {'rc': 127, 'stdout': '', 'stderr': 'command not found: %s' % name}
        with self.lock:
            answer = handler(argv[1:])
        late = self.late_gates.get(name)
        if late is not None:
            late.wait(10)
        return answer

    def _vg_missing(self, vg):
        return {'rc': 5, 'stdout': '', 'stderr': WARNING + '  Volume group "%s" not found\n'
                '  Cannot process volume group %s\n' % (vg, vg)}

    def _lvs(self, args):
        if args[-1] != self.vg:
            return self._vg_missing(args[-1])
        rows = [{'lv_name': n, 'lv_size': str(lv['size']), 'lv_tags': ','.join(sorted(lv['tags'])),
                 'lv_attr': '-wi-XX----', 'vg_name': self.vg} for n, lv in sorted(self.lvs.items())]
        return {'rc': 0, 'stdout': json.dumps({'report': [{'lv': rows}]}), 'stderr': WARNING}

    def _vgs(self, args):
        if args[-1] != self.vg:
            return self._vg_missing(args[-1])
        row = {'vg_name': self.vg, 'vg_size': str(self.size), 'vg_free': str(self.free()),
               'vg_extent_size': str(EXTENT)}
        return {'rc': 0, 'stdout': json.dumps({'report': [{'vg': [row]}]}), 'stderr': WARNING}

    def _lvcreate(self, args):
        opts, vg = _options(args[:-1]), args[-1]
        if vg != self.vg:
            return self._vg_missing(vg)
        name, size = opts['--name'][0], int(opts['--size'][0].rstrip('b'))
        size = -(-size // EXTENT) * EXTENT
        if name in self.lvs:
            return {'rc': 5, 'stdout': '', 'stderr': WARNING + '  Logical Volume "%s" already '
                    'exists in volume group "%s"\n' % (name, vg)}
        if size > self.free():
            return {'rc': 5, 'stdout': '', 'stderr': WARNING + '  Volume group "%s" has '
                    'insufficient free space (%d extents): %d required.\n'
                    % (vg, self.free() // EXTENT, size // EXTENT)}
        self.lvs[name] = {'size': size, 'tags': set(opts.get('--addtag', []))}
        return {'rc': 0, 'stdout': '  Logical volume "%s" created.\n' % name, 'stderr': WARNING}

    def _lvchange(self, args):
        opts, vg = _options(args[:-1]), args[-1]
        if vg != self.vg:
            return self._vg_missing(vg)
        field, _, value = opts['--select'][0].partition('=')
        assert field == 'lv_tags', 'the fake selects by tag only'
        out = ''
        for name, lv in sorted(self.lvs.items()):
            if value in lv['tags']:
                lv['tags'] = (lv['tags'] - set(opts.get('--deltag', []))) | set(
                    opts.get('--addtag', []))
                out += '  Logical volume %s/%s changed.\n' % (vg, name)
        return {'rc': 0, 'stdout': out, 'stderr': WARNING}

    def _lvremove(self, args):
        opts, vg = _options(args[:-1]), args[-1]
        if vg != self.vg:
            return self._vg_missing(vg)
        field, _, value = opts['--select'][0].partition('=')
        assert field == 'lv_tags', 'the fake selects by tag only'
        gone = [n for n, lv in self.lvs.items() if value in lv['tags']]
        for name in gone:
            del self.lvs[name]
        return {'rc': 0, 'stderr': WARNING, 'stdout': ''.join(
            '  Logical volume "%s" successfully removed.\n' % n for n in gone)}

    def device_exists(self, path: str) -> bool:
        """/dev/VG/LV of an LV the fake holds (its LVs are all active)."""
        return path.startswith('/dev/%s/' % self.vg) and path.rsplit('/', 1)[1] in self.lvs

    def _blkdiscard(self, args):
        assert args[0] == '--zeroout'
        name = args[-1].rsplit('/', 1)[1]
        if name not in self.lvs:
            return {'rc': 1, 'stdout': '', 'stderr': 'blkdiscard: cannot open %s' % args[-1]}
        self.zeroed.append(name)
        return {'rc': 0, 'stdout': '', 'stderr': ''}

    def _qemu_img(self, args):
        if args[:1] == ['create']:           # qemu-img create ... PATH SIZE: a qcow2 header
            with open(args[-2], 'wb') as f:
                f.write(qcow2.header(size=int(args[-1])))
        return {'rc': 0, 'stdout': '', 'stderr': ''}

    def _genisoimage(self, args):
        """The ISO's stand-in: JSON of its label and the files of the directory it was
        given (last argument), so a test can read back what the guest would see."""
        source = args[-1]
        files = {}
        for name in sorted(os.listdir(source)):
            with open(os.path.join(source, name), 'rb') as f:
                files[name] = f.read().decode()
        with open(args[args.index('-output') + 1], 'w') as f:
            json.dump({'label': args[args.index('-volid') + 1], 'files': files}, f)
        return {'rc': 0, 'stdout': '', 'stderr': ''}


def _options(args):
    opts = {}
    it = iter(args)
    for a in it:
        if a.startswith('--') and a not in ('--yes',):
            opts.setdefault(a, []).append(next(it))
    return opts


class _Worker:
    """The worker's protocol and policy checks (the real ones), over the fake commands."""

    def __init__(self, lvm: FakeLvm, policy: operations.Policy):
        self.lvm = lvm
        self.policy = policy

    def call(self, request, progress=None):
        if request['op'] == operations.FETCH:
            # The real download code (plain Python: what the worker process runs).
            self.lvm.launches.append('fetch')
            answer = fetch.run(request['args'], self.policy,
                               lambda done, total: progress and progress(
                                   {'progress': done, 'total': total}))
            answer['run_s'] = 0.0
            return answer
        try:
            argv = operations.build(request['op'], request['args'], self.policy)
        except operations.Refused as exc:
            return {'rc': 125, 'stdout': '', 'stderr': 'refused: %s' % exc, 'run_s': 0.0}
        answer = self.lvm.run(argv)
        answer['run_s'] = 0.0
        return answer

    def close(self):
        pass
