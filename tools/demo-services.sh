# Sourced by tools/demo.sh and tools/demo-real.sh: the demo node's conductor and agent.
# Expects: top (the clone), venv, run (the demo's directory, holding compute-agent.conf) and
# host (the node's name). Gives: ctl (compute-ctl as the control plane), start_services, and
# (unless KEEP=1) a clean-up at exit: the VMs deleted, both services stopped, saved spares
# removed.
printf '[warm]\npools =\n' >"$run/no-pools.conf"
# Broker credentials and TLS (tools/setup-node.sh, root only): the demo node's own broker user
# and report key (it may only serve its own queues and report); the control plane's
# (conductor, compute-ctl) may command nodes.
"$top/tools/setup-node.sh" --node "$host" >/dev/null
agent_creds=/etc/compute-agent/messaging-agent-$host.conf
control_creds=/etc/compute-agent/messaging-control.conf
ctl() { "$venv/bin/compute-ctl" --config-file "$run/compute-agent.conf" --config-file "$control_creds" "$@"; }

pids=()
stop_services() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
}
wait_agent() {
    for _ in $(seq 150); do ctl --rpc-timeout 1 stats >/dev/null 2>&1 && break; sleep 0.2; done
}
cleanup() {
    local uuids
    uuids=$(ctl list 2>/dev/null | awk 'NR>1{print $1}') || true
    [ -n "$uuids" ] && ctl delete $uuids --wait >/dev/null 2>&1 || true
    stop_services
    # The saved spares (files: no domain runs for them) go through the agent: started once
    # with no pools (emptying [warm] pools), it removes them at start-up.
    if compgen -G "$run/instances/*/spare.json" >/dev/null; then
        "$venv/bin/compute-agent" --config-file "$run/compute-agent.conf" --config-file "$agent_creds" \
            --config-file "$run/no-pools.conf" --log-file "$run/agent.log" &
        pids=($!)
        wait_agent
        stop_services
    fi
}
if [ "${KEEP:-0}" != 1 ]; then trap cleanup EXIT; fi

start_services() {
    "$venv/bin/compute-conductor" --config-file "$run/compute-agent.conf" --config-file "$control_creds" \
        --log-file "$run/conductor.log" &
    pids+=($!)
    "$venv/bin/compute-agent" --config-file "$run/compute-agent.conf" --config-file "$agent_creds" \
        --log-file "$run/agent.log" &
    pids+=($!)
    wait_agent
}
