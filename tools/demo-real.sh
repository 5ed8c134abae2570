#!/usr/bin/env bash
# The real guest, end to end on this node (as root): a Debian 12 cloud image built from
# Debian's packages (tools/build-real-guest.sh, cached), booted through the agent with a host
# name, an SSH key and user data, cold; then warm, from a saved spare of a cloud-init pool
# (its clock set and cloud-init run on the instance's own seed before it is ready). Each
# guest's host name, key, user data marker and clock are read back through its own
# qemu-guest-agent, as an operator would (virsh qemu-agent-command does the same).
#
#   tools/demo-real.sh          (about 8 minutes on a TCG host; KEEP=1 leaves it running)
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
run=/var/lib/compute-agent/demo-real
images=/var/lib/compute-agent/images
"$top/tools/setup-node.sh"
"$top/tools/build-real-guest.sh" "$images"
venv=$("$top/tools/bootstrap.sh")
if [ -z "${VIRT_TYPE:-}" ]; then
    if [ -c /dev/kvm ] && grep -qE '\b(vmx|svm)\b' /proc/cpuinfo; then VIRT_TYPE=kvm; else VIRT_TYPE=qemu; fi
fi
host=demo-real-$(hostname -s)
mkdir -p "$run"
flavor='vcpus = 1
memory_mb = 1024
image = debian-real.raw
disk_gb = 2
kernel = debian-real-vmlinuz
initrd = debian-real-initrd.img
cmdline = root=/dev/vda console=ttyS0 quiet no_timer_check'
cat >"$run/compute-agent.conf" <<CONF
[DEFAULT]
host = $host
image_dir = $images
instances_path = $run/instances
[libvirt]
virt_type = $VIRT_TYPE
[conductor]
topic = conductor-demo-real
database = $run/conductor.sqlite
[jobs]
journal = $run/jobs.sqlite
[storage]
backend = file
[images]
cache_dir = $run/image-cache
[warm]
pools = debian
quiet_seconds = 1
ready_timeout = 900
[warm_pool:debian]
size = 1
identity = cloud-init
$flavor
CONF
. "$top/tools/demo-services.sh"
start_services

# The user's key (a throw-away one) and user data.
rm -f "$run/id_demo" "$run/id_demo.pub"
ssh-keygen -q -t ed25519 -N '' -C demo@real -f "$run/id_demo"
printf '#cloud-config\nruncmd:\n  - [sh, -c, "echo hello from user data > /var/lib/demo-marker"]\n' >"$run/user-data"

# check DOMAIN-UUID HOSTNAME: what the guest says, through its own guest agent
check() {
    "$venv/bin/python" - "$1" "$2" "$run/id_demo.pub" <<'PY'
import base64, json, sys, time
import libvirt, libvirt_qemu
dom_uuid, hostname, pub = sys.argv[1], sys.argv[2], open(sys.argv[3]).read().strip()
dom = libvirt.open('qemu:///system').lookupByUUIDString(dom_uuid)
def agent(cmd, args=None):
    req = {'execute': cmd, **({'arguments': args} if args else {})}
    return json.loads(libvirt_qemu.qemuAgentCommand(dom, json.dumps(req), 60, 0))['return']
def run(*argv):
    pid = agent('guest-exec', {'path': argv[0], 'arg': list(argv[1:]), 'capture-output': True})['pid']
    while not (st := agent('guest-exec-status', {'pid': pid}))['exited']:
        time.sleep(0.5)
    return base64.b64decode(st.get('out-data', '')).decode(errors='replace').strip()
print('  cloud-init:   %s' % run('/usr/bin/cloud-init', 'status', '--wait').splitlines()[-1])
got = run('/bin/hostname')
print('  host name:    %s (%s)' % (got, 'ok' if got == hostname else 'WRONG'))
keys = run('/bin/cat', '/home/debian/.ssh/authorized_keys').splitlines()
print('  SSH key:      %s' % ('in /home/debian/.ssh/authorized_keys' if pub in keys else 'MISSING'))
print('  user data:    %s' % run('/bin/cat', '/var/lib/demo-marker'))
print('  instance id:  %s' % run('/usr/bin/cloud-init', 'query', 'instance_id'))
print('  clock:        %+.2f s from the host' % (agent('guest-get-time') / 1e9 - time.time()))
PY
}

echo
echo "== the pool's spare: booted (cloud-init's first boot as the spare), then saved =="
t0=$SECONDS
until [ "$(ctl stats | "$venv/bin/python" -c 'import json,sys; print(json.load(sys.stdin)["manager"]["warm"]["spares"].get("debian", 0))')" -ge 1 ]; do
    [ $((SECONDS - t0)) -gt 900 ] && { echo "no spare; see $run/agent.log" >&2; exit 1; }
    sleep 2
done
echo "1 spare saved in $((SECONDS - t0)) s"
echo
echo "== cold: compute-ctl boot --image debian-real.raw ... --hostname real-cold --ssh-key --user-data =="
ctl boot --vcpus 1 --memory-mb 1024 --image debian-real.raw --disk-gb 2 --kernel debian-real-vmlinuz \
    --initrd debian-real-initrd.img --cmdline "root=/dev/vda console=ttyS0 quiet no_timer_check" \
    --hostname real-cold --ssh-key "$run/id_demo.pub" --user-data "$run/user-data" \
    --wait --ready --timeout 900 | grep -v '^accepted'
cold=$(ctl list | awk 'NR>1{print $1}')
check "$cold" real-cold
echo
echo "== warm: compute-ctl boot --pool debian --hostname real-warm --ssh-key --user-data =="
ctl boot --pool debian --hostname real-warm --ssh-key "$run/id_demo.pub" --user-data "$run/user-data" \
    --wait --ready --timeout 900 | grep -v '^accepted'
warm=$(ctl list | awk 'NR>1{print $1}' | grep -vxF "$cold")
ctl show "$warm" | "$venv/bin/python" -c '
import json, sys
v = json.load(sys.stdin)["agent"]
print("  restored as domain %s; ready only after its clock and seed were applied" % v["domain"])'
check "$(ctl show "$warm" | "$venv/bin/python" -c 'import json,sys; print(json.load(sys.stdin)["agent"]["domain"][3:])')" real-warm
if [ "${KEEP:-0}" = 1 ]; then
    echo "KEEP=1: VMs and services left running (config $run/compute-agent.conf)"
else
    echo; echo "== deleting =="
fi
