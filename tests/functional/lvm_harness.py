"""Test harness for LVM on this machine kind: a private loop-backed VG, and PATH wrappers.

The wrappers sit in front of the real LVM commands for the agent under test:
- every launch of lvs, vgs, lvcreate and lvremove is appended to ``launches.log``: the count of
  real process launches, independent of the agent's own counters;
- without device-mapper, LVs cannot be activated, so /dev/VG/LV never appears. After a
  successful lvcreate the wrapper exposes the new linear LV through a loop device at its
  extent offset and links /dev/VG/LV to it; before lvremove it takes that away again. This is
  test scaffolding only: the agent runs the real commands and never knows.
"""
import contextlib
import os
import shutil
import subprocess
import textwrap
import uuid as uuidlib

HAS_DM = 'device-mapper' in open('/proc/misc').read()

WRAPPER = textwrap.dedent('''\
    #!/bin/bash
    # compute-agent functional-test wrapper for {name}
    name={name}
    vg={vg}
    echo "$name $*" >> {log}
    real=/usr/sbin/$name
    export LVM_SUPPRESS_FD_WARNINGS=1
    expose() {{   # $1 = LV name
        [ -e "/dev/$vg/$1" ] && return 0
        local ranges pv start ext size first dev
        ranges=$($real_lvs --noheadings -o seg_pe_ranges "$vg/$1" | tr -d ' ')   # /dev/loopN:0-255
        pv=${{ranges%%:*}}; start=${{ranges#*:}}; start=${{start%%-*}}
        ext=$($real_vgs --noheadings --units b --nosuffix -o vg_extent_size "$vg" | tr -d ' ')
        size=$($real_lvs --noheadings --units b --nosuffix -o lv_size "$vg/$1" | tr -d ' ')
        first=$(/usr/sbin/pvs --noheadings --units b --nosuffix -o pe_start "$pv" | tr -d ' ')
        dev=$(losetup -f --show --offset $((first + start * ext)) --sizelimit "$size" "$pv")
        mkdir -p "/dev/$vg" && ln -sf "$dev" "/dev/$vg/$1"
    }}
    unexpose() {{   # $1 = LV name
        local link="/dev/$vg/$1"
        [ -L "$link" ] || return 0
        losetup -d "$(readlink "$link")" 2>/dev/null; rm -f "$link"
    }}
    real_lvs=/usr/sbin/lvs; real_vgs=/usr/sbin/vgs
    if [ "$name" = lvremove ] && [ {has_dm} = 0 ]; then
        sel=""; prev=""
        for a in "$@"; do [ "$prev" = --select ] && sel=$a; prev=$a; done
        if [ -n "$sel" ]; then
            for lv in $($real_lvs --noheadings -o lv_name --select "$sel" "$vg" 2>/dev/null); do
                unexpose "$lv"
            done
        fi
    fi
    # A test can hold every lvs of the agent here (its gate file exists) to gather callers.
    while [ "$name" = lvs ] && [ -e {gate} ]; do sleep 0.02; done
    "$real" "$@"; rc=$?
    if [ $rc = 0 ] && [ "$name" = lvcreate ] && [ {has_dm} = 0 ]; then
        prev=""; for a in "$@"; do [ "$prev" = --name ] && lvname=$a; prev=$a; done
        expose "$lvname" || rc=99
    fi
    exit $rc
''')


class LoopVolumeGroup:
    """A VG on a sparse file for one test session; ``destroy()`` removes every trace."""

    def __init__(self, workdir: str, size: str = '32G'):
        self.workdir = workdir
        self.name = 'ftest%s' % uuidlib.uuid4().hex[:8]
        self.system_dir = os.path.join(workdir, 'lvm')
        self.bin = os.path.join(workdir, 'lvm-bin')
        self.log = os.path.join(workdir, 'launches.log')
        self.backing = os.path.join(workdir, 'pv.img')
        self.gate = os.path.join(workdir, 'lvs.gate')
        os.makedirs(self.system_dir)
        os.makedirs(self.bin)
        with open(os.path.join(self.system_dir, 'lvm.conf'), 'w') as f:
            f.write('global {\n    use_aio = 0\n    activation = %d\n}\n' % HAS_DM)
        subprocess.run(['truncate', '-s', size, self.backing], check=True)
        self.pv = subprocess.run(['losetup', '-f', '--show', self.backing], check=True,
                                 capture_output=True, text=True).stdout.strip()
        self.lvm('pvcreate', '-q', self.pv)
        self.lvm('vgcreate', '-q', self.name, self.pv)
        open(self.log, 'w').close()
        for name in ('lvs', 'vgs', 'lvcreate', 'lvremove', 'lvchange'):
            path = os.path.join(self.bin, name)
            with open(path, 'w') as f:
                f.write(WRAPPER.format(name=name, vg=self.name, log=self.log, has_dm=int(HAS_DM),
                                       gate=self.gate))
            os.chmod(path, 0o755)

    @property
    def env(self) -> dict:
        return {'PATH': self.bin + ':' + os.environ.get('PATH', '/usr/sbin:/usr/bin:/sbin:/bin')}

    def lvm(self, *argv, check=True) -> subprocess.CompletedProcess:
        """Run a real LVM command directly (not through the counting wrappers)."""
        env = dict(os.environ, LVM_SYSTEM_DIR=self.system_dir, LVM_SUPPRESS_FD_WARNINGS='1')
        return subprocess.run(['/usr/sbin/' + argv[0], *argv[1:]], env=env, check=check,
                              capture_output=True, text=True)

    def lvs(self) -> dict[str, dict]:
        """name -> {size, tags} of every LV in the VG, read directly."""
        out = self.lvm('lvs', '--noheadings', '--units', 'b', '--nosuffix', '--separator', '|',
                       '-o', 'lv_name,lv_size,lv_tags', self.name).stdout
        lvs = {}
        for line in out.splitlines():
            if line.strip():
                name, size, tags = line.strip().split('|')
                lvs[name] = {'size': int(size), 'tags': set(filter(None, tags.split(',')))}
        return lvs

    @contextlib.contextmanager
    def lvs_held(self):
        """While inside: every lvs the agent launches waits (the test releases them)."""
        open(self.gate, 'w').close()
        try:
            yield
        finally:
            os.unlink(self.gate)

    def launches(self, name: str) -> int:
        with open(self.log) as f:
            return sum(1 for line in f if line.split(' ', 1)[0] == name)

    def destroy(self) -> None:
        dev_dir = '/dev/' + self.name
        if os.path.isdir(dev_dir):
            for link in os.listdir(dev_dir):
                target = os.path.realpath(os.path.join(dev_dir, link))
                subprocess.run(['losetup', '-d', target], check=False)
            shutil.rmtree(dev_dir, ignore_errors=True)
        self.lvm('vgremove', '-q', '-f', self.name, check=False)
        self.lvm('pvremove', '-q', '-f', self.pv, check=False)
        subprocess.run(['losetup', '-d', self.pv], check=False)
        os.unlink(self.backing)
