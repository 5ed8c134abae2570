#!/usr/bin/env bash
# The agent's main job, end to end on this node (as root):
#   node set-up (packages, libvirtd, virtlogd, RabbitMQ), the test guest, a venv with the agent;
#   start compute-conductor and compute-agent; let the agent fill a warm pool of N saved spares;
#   boot N tiny VMs at once over RPC, cold, then N more from the pool, warm; show each one's time
#   to ACTIVE and to ready (its guest opened the agent channel: an event, no polling) and cold
#   and warm side by side; stop, start and reboot one of them; then delete them and stop both
#   services (and remove the saved spares).
#
#   tools/demo.sh [N]          (default N=5; KEEP=1 leaves VMs and services running;
#                               VIRT_TYPE=kvm|qemu overrides the automatic choice)
set -euo pipefail
N=${1:-5}
top=$(cd "$(dirname "$0")/.." && pwd)
run=/var/lib/compute-agent/demo
"$top/tools/setup-node.sh"
"$top/tools/build-test-guest.sh" /var/lib/compute-agent/images
venv=$("$top/tools/bootstrap.sh")

if [ -z "${VIRT_TYPE:-}" ]; then
    # KVM only where the CPU offers hardware virtualisation; TCG emulation otherwise.
    if [ -c /dev/kvm ] && grep -qE '\b(vmx|svm)\b' /proc/cpuinfo; then VIRT_TYPE=kvm; else VIRT_TYPE=qemu; fi
fi
# LVs need device-mapper to be opened by a VM; without it the file backend holds the disks.
if [ -z "${STORAGE:-}" ]; then
    if grep -qw device-mapper /proc/misc; then STORAGE=lvm; else STORAGE=file; fi
fi
mkdir -p "$run"
cat >"$run/compute-agent.conf" <<CONF
[DEFAULT]
host = demo-$(hostname -s)
image_dir = /var/lib/compute-agent/images
instances_path = $run/instances
[libvirt]
virt_type = $VIRT_TYPE
[conductor]
topic = conductor-demo
database = $run/conductor.sqlite
[jobs]
journal = $run/jobs.sqlite
[storage]
backend = $STORAGE
[lvm]
volume_group = compute-agent-vg
lvm_system_dir = /etc/compute-agent/lvm
[network]
# user-mode NICs, isolated: the guest reaches neither this host nor any network
allow_user_nics = true
[warm]
pools = demo
quiet_seconds = 1
[warm_pool:demo]
# the flavor of the cold boots below: a warm instance is its spare's flavor
size = $N
memory_mb = 128
kernel = test-vmlinuz
initrd = test-initrd.img
cmdline = console=ttyS0 quiet no_timer_check
disk_gb = 1
user_nics = 1
CONF
host=demo-$(hostname -s)
. "$top/tools/demo-services.sh"
start_services
echo
echo "== the agent fills its warm pool: $N spares, each booted, ready, saved (only while no job runs) =="
t0=$SECONDS
until [ "$(ctl stats | "$venv/bin/python" -c 'import json,sys; print(json.load(sys.stdin)["manager"]["warm"]["spares"].get("demo", 0))')" -ge "$N" ]; do
    [ $((SECONDS - t0)) -gt $((60 + 30 * N)) ] && { echo "the pool did not fill; see $run/agent.log" >&2; exit 1; }
    sleep 1
done
echo "$N spares saved in $((SECONDS - t0)) s"
echo
echo "== booting $N VMs at once over RPC, cold (virt_type=$VIRT_TYPE, 1 GiB root disk each on $STORAGE storage) =="
ctl boot --count "$N" --kernel test-vmlinuz --initrd test-initrd.img \
    --cmdline "console=ttyS0 quiet no_timer_check" --memory-mb 128 --disk-gb 1 --nic user --wait --ready --timeout 300 \
    | tee "$run/cold.txt" | grep -v '^accepted'
cold=$(ctl list | awk 'NR>1{print $1}')
echo
echo "== booting $N more at once, warm: restored from the pool's saved spares (one libvirt call each) =="
ctl boot --count "$N" --pool demo --wait --ready --timeout 300 | tee "$run/warm.txt" | grep -v '^accepted'
echo
echo "== time to ready, side by side =="
"$venv/bin/python" - "$run/cold.txt" "$run/warm.txt" <<'PY'
import re, sys
times = {}
for name, path in zip(('cold', 'warm'), sys.argv[1:]):
    m = re.search(r'ready; time to ready: median ([0-9.]+) s, max ([0-9.]+) s', open(path).read())
    times[name] = (float(m.group(1)), float(m.group(2))) if m else None
for name in ('cold', 'warm'):
    t = times[name]
    print('%s  median %7s s   max %7s s' % (name, '%.2f' % t[0] if t else '-', '%.2f' % t[1] if t else '-'))
if times['cold'] and times['warm']:
    print('warm / cold: median %.2fx, max %.2fx' % (times['warm'][0] / times['cold'][0],
                                                  times['warm'][1] / times['cold'][1]))
PY
echo
echo "== guest consoles (ready above = the guest opened its agent channel: libvirt's event) =="
deadline=$((SECONDS + 120))
for uuid in $cold; do
    log=$run/instances/$uuid/console.log
    until grep -qa 'guest-disk:' "$log" 2>/dev/null || [ $SECONDS -gt $deadline ]; do sleep 0.2; done
    printf '%s  %s  %s\n' "$uuid" "$(grep -a -m1 -o 'COMPUTE-AGENT-GUEST-READY' "$log" 2>/dev/null || echo 'no ready marker yet')" \
        "$(grep -a -m1 -o 'guest-disk: vda [0-9]*' "$log" 2>/dev/null)"
done
echo
echo "== warm guests: each learned its own identity after the restore (its console) =="
for uuid in $(ctl list | awk 'NR>1{print $1}' | grep -vxF "$cold"); do
    log=$run/instances/$uuid/console.log
    until grep -qa 'guest-identity:' "$log" 2>/dev/null || [ $SECONDS -gt $deadline ]; do sleep 0.2; done
    printf '%s  %s\n' "$uuid" "$(grep -a -m1 'guest-identity:' "$log" 2>/dev/null || echo 'no identity yet')"
done
echo
echo "== agent counters =="
ctl stats | "$venv/bin/python" -c '
import json, sys
s = json.load(sys.stdin)
calls = s["driver"]["libvirt_calls"]
boots = s["manager"]["jobs_total"].get("done", 0)
warm = s["manager"]["warm"]
print("libvirt calls: cold boots defineXML + createWithFlags each; warm boots restoreFlags each "
      "(then defineXML); in all defineXML=%d createWithFlags=%d restoreFlags=%d for %d boots"
      % (calls.get("defineXML", 0), calls.get("createWithFlags", 0), calls.get("restoreFlags", 0), boots))
print("spares: made %d (createXML + saveFlags each), %d in the pool now (refilled while idle)"
      % (warm["made"], warm["spares"].get("demo", 0)))
print("conductor reports: %d carrying %d state changes" % (s["reporter"]["reports_sent"], s["reporter"]["states_sent"]))
print("storage commands: %s" % (s["commands"] or "none"))
j = s["manager"]["journal"]
print("job journal: %d job changes written as %d rows in %d commits (one fsync each)"
      % (j["puts"], j["rows_written"], j["commits"]))
r = s["manager"]["resources"]
print("resource claims %d, refusals %d, usage reports queued %d, no-op updates skipped %d; "
      "claim lock wait max %.1f us, hold p50 %.1f us" % (r["claims"], r["refusals"], r["reports_queued"],
      r["reports_skipped_noop"], r["lock"]["wait_max_us"], r["lock"]["hold_p50_us"]))
print("work queue wait p50/p99: %.3f / %.3f ms; agent max RSS %.0f MiB"
      % (s["workqueue"]["all"]["wait_p50_ms"], s["workqueue"]["all"]["wait_p99_ms"], s["process"]["max_rss_kb"] / 1024))'
echo
echo "== node usage: agent vs conductor =="
ctl resources | "$venv/bin/python" -c '
import json, sys
v = json.load(sys.stdin)
a, c = v["agent"], v["conductor"] or {}
print("capacity %s" % a["capacity"])
print("agent     usage %s  generation %s" % (a["usage"], a["generation"]))
print("conductor usage %s  generation %s" % (c.get("usage"), c.get("generation")))
print("in agreement: %s" % v["in_agreement"])'
echo
echo "== stop, start, soft and hard reboot of one VM (durable jobs; state from libvirt events) =="
first=$(echo "$cold" | head -1)
log=$run/instances/$first/console.log
markers() { grep -a -c 'COMPUTE-AGENT-GUEST-READY' "$log" 2>/dev/null || true; }
for op in stop start reboot "reboot --hard"; do
    before=$(markers)
    t0=$(date +%s.%N)
    result=$(ctl $op "$first" --wait | tail -1)
    printf '%-14s %6.2f s  %s\n' "$op" "$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN{print b - a}')" "${result#*: }"
    if [ "$op" != stop ]; then     # the guest boots again: wait for its /init before the next step
        deadline=$((SECONDS + 120))
        until [ "$(markers)" -gt "$before" ] || [ $SECONDS -gt $deadline ]; do sleep 0.2; done
    fi
done
ctl show "$first" | "$venv/bin/python" -c '
import json, sys
v = json.load(sys.stdin)
print("now: conductor %s/%s, agent %s/%s" % (v["conductor"]["vm_state"], v["conductor"]["power_state"],
      v["agent"]["vm_state"], v["agent"]["power_state"]))'
if [ "${KEEP:-0}" = 1 ]; then
    echo "KEEP=1: VMs and services left running (config $run/compute-agent.conf)"
else
    echo; echo "== deleting =="
fi
