#!/usr/bin/env bash
# Idempotent node set-up for a compute-agent node without systemd (Debian 12, as root).
#
# Installs the Debian packages the agent and its tests need, then starts virtlogd, libvirtd and RabbitMQ
# unless they already run. Safe to run again: every step checks first.
#
#   tools/setup-node.sh            install + start (+ the loop-backed VG when the node has none)
#   tools/setup-node.sh --stop     stop the daemons this script starts
#   tools/setup-node.sh --remove-vg   remove the loop-backed VG it made (and its backing file)
#   tools/setup-node.sh --node NAME   node NAME's broker user, virtual host and report key:
#                                     /etc/compute-agent/messaging-agent-NAME.conf (a new
#                                     password and key on every run); RabbitMQ must run
#   tools/setup-node.sh --remove-node NAME   delete them
set -euo pipefail

VG=${COMPUTE_AGENT_VG:-compute-agent-vg}
VG_SIZE=${COMPUTE_AGENT_VG_SIZE:-40G}          # sparse: costs disk only as LVs are written
VG_FILE=/var/lib/compute-agent/lvm/$VG.img
LVM_DIR=/etc/compute-agent/lvm                # private lvm.conf: [lvm] lvm_system_dir
ETC=/etc/compute-agent                        # messaging credentials (0600) and the broker's CA
TLS_DIR=$ETC/tls                              # ca.pem (public), ca.key (root only)
RABBIT_TLS=/etc/rabbitmq/tls                  # the broker's certificate and key (user rabbitmq)
AMQPS_PORT=5671
RABBIT_NOFILE=65536
# Broker users: one per node (node-NAME, in its own virtual host node-NAME; it may publish
# only reports in the fleet's), and the control plane's (conductor, compute-ctl), which may
# do all. Each node's report key: $KEYS_DIR/NAME.key (the conductor's copy).
CONTROL_USER=compute-control
KEYS_DIR=$ETC/node-keys

PKGS=(libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients qemu-system-x86 qemu-utils
      libvirt-dev pkg-config gcc python3-venv python3-dev rabbitmq-server lvm2
      busybox-static cpio xz-utils iproute2 procps openssl genisoimage)

log() { printf '[setup-node] %s\n' "$*"; }

need_root() { [ "$(id -u)" = 0 ] || { echo "setup-node: run as root" >&2; exit 1; }; }

install_packages() {
    local missing=()
    for p in "${PKGS[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        log "installing: ${missing[*]}"
        apt-get update -q
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
    fi
}

pid_alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

configure_libvirt() {
    # libvirtd refuses to start when its configured qemu user does not exist.
    getent group libvirt-qemu >/dev/null || groupadd -r libvirt-qemu
    getent passwd libvirt-qemu >/dev/null ||
        useradd -r -g libvirt-qemu -d /var/lib/libvirt -s /usr/sbin/nologin libvirt-qemu
    # QEMU runs as libvirt-qemu (Debian's default), with libvirt's dynamic ownership: libvirt
    # chowns a domain's disks, kernel and sockets to it while the domain runs. /dev/kvm is
    # root:kvm 0660, as udev makes it on a normal host (this machine has no udev); QEMU gets the
    # kvm group as a supplementary group. Without /dev/kvm access libvirt re-probes QEMU's
    # capabilities on every start (~44 s per domain start, measured).
    getent group kvm >/dev/null || groupadd -r kvm
    id -nG libvirt-qemu | tr ' ' '\n' | grep -qx kvm || usermod -aG kvm libvirt-qemu
    if [ -c /dev/kvm ]; then chgrp kvm /dev/kvm && chmod 0660 /dev/kvm; fi
    local conf=/etc/libvirt/qemu.conf qemu_changed=0
    if grep -q '^# compute-agent setup-node$' "$conf" 2>/dev/null; then
        # An older set-up ran QEMU as root: take its block out.
        sed -i '/^# compute-agent setup-node$/,/^group = "root"$/d' "$conf"
        qemu_changed=1
    fi
    if ! grep -q '^# compute-agent setup-node: qemu user$' "$conf" 2>/dev/null; then
        cat >>"$conf" <<'CONF'
# compute-agent setup-node: qemu user
user = "libvirt-qemu"
group = "libvirt-qemu"
dynamic_ownership = 1
remember_owner = 1
CONF
        qemu_changed=1
    fi
    # One agent connection carries every call of a boot storm: libvirtd's default of 5
    # requests in progress per client (and 20 workers in all) queued creates behind each other
    # (measured: the 20th of 20 parallel boots ACTIVE ~1.3x later than with 20 connections).
    conf=/etc/libvirt/libvirtd.conf
    local changed=$qemu_changed
    if ! grep -q '^# compute-agent setup-node$' "$conf" 2>/dev/null; then
        cat >>"$conf" <<'CONF'
# compute-agent setup-node
max_workers = 64
max_client_requests = 64
CONF
        changed=1
    fi
    # The read-write socket controls every domain of the node: root only, by its file mode
    # (not by polkit, which this node may not run).
    if ! grep -q '^# compute-agent setup-node: socket$' "$conf" 2>/dev/null; then
        cat >>"$conf" <<'CONF'
# compute-agent setup-node: socket
unix_sock_group = "root"
unix_sock_rw_perms = "0700"
auth_unix_rw = "none"
CONF
        changed=1
    fi
    if [ "$changed" = 1 ]; then
        if pid_alive /run/libvirtd.pid; then
            log "restarting libvirtd for its new settings (domains keep running)"
            kill "$(cat /run/libvirtd.pid)"
            for _ in $(seq 100); do pid_alive /run/libvirtd.pid || break; sleep 0.1; done
        fi
    fi
    # Serial console logs go through virtlogd (libvirt's default): roll over at 1 MiB, keep 2
    # old ones, so a guest that floods its console holds at most 3 MiB of the instances disk.
    conf=/etc/libvirt/virtlogd.conf
    if ! grep -q '^# compute-agent setup-node: console logs$' "$conf" 2>/dev/null; then
        cat >>"$conf" <<'CONF'
# compute-agent setup-node: console logs
max_size = 1048576
max_backups = 2
CONF
        # SIGUSR1: virtlogd re-executes itself (reading this), keeping the logs it holds open.
        pkill -USR1 -x virtlogd 2>/dev/null || true
    fi
    mkdir -p /var/log/libvirt/qemu /run/libvirt
}

start_libvirt() {
    if ! pgrep -x virtlogd >/dev/null; then
        log "starting virtlogd"
        /usr/sbin/virtlogd -d
    fi
    if ! pid_alive /run/libvirtd.pid; then
        log "starting libvirtd"
        /usr/sbin/libvirtd -d
    fi
    for _ in $(seq 100); do
        [ -S /run/libvirt/libvirt-sock ] && virsh -c qemu:///system version >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    echo "setup-node: libvirtd did not come up" >&2; exit 1
}

make_certificates() {
    # A private CA and a server certificate for the broker on this node (openssl; no crypto
    # of our own). Kept when present: clients pin ca.pem.
    mkdir -p "$TLS_DIR" "$RABBIT_TLS"
    chmod 0755 "$TLS_DIR"
    if [ ! -s "$TLS_DIR/ca.pem" ] || [ ! -s "$TLS_DIR/ca.key" ]; then
        log "making the broker CA ($TLS_DIR/ca.pem)"
        (umask 077; openssl req -x509 -newkey rsa:3072 -nodes -days 3650 -sha256 \
            -subj "/CN=compute-agent broker CA $(hostname -s)" \
            -keyout "$TLS_DIR/ca.key" -out "$TLS_DIR/ca.pem" 2>/dev/null)
        chmod 0644 "$TLS_DIR/ca.pem"
        rm -f "$RABBIT_TLS/server.pem"
    fi
    if [ ! -s "$RABBIT_TLS/server.pem" ] || [ ! -s "$RABBIT_TLS/server.key" ]; then
        log "making the broker's server certificate (localhost, 127.0.0.1)"
        local tmp
        tmp=$(mktemp -d)
        (umask 077; openssl req -newkey rsa:3072 -nodes -sha256 -subj "/CN=localhost" \
            -keyout "$tmp/server.key" -out "$tmp/server.csr" 2>/dev/null)
        printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n' >"$tmp/ext"
        openssl x509 -req -in "$tmp/server.csr" -CA "$TLS_DIR/ca.pem" -CAkey "$TLS_DIR/ca.key" \
            -CAcreateserial -days 825 -sha256 -extfile "$tmp/ext" -out "$tmp/server.pem" 2>/dev/null
        install -m 0644 "$TLS_DIR/ca.pem" "$RABBIT_TLS/ca.pem"
        install -m 0644 "$tmp/server.pem" "$RABBIT_TLS/server.pem"
        install -m 0600 "$tmp/server.key" "$RABBIT_TLS/server.key"
        rm -rf "$tmp"
    fi
    chown -R rabbitmq:rabbitmq "$RABBIT_TLS"
}

configure_rabbitmq() {
    # TLS only, on loopback: no plain AMQP listener (an operator may add one, see docs/trust.md).
    # The Erlang distribution (how rabbitmqctl gets in) on loopback too, under a node name
    # that resolves there on any host (rabbit@localhost; epmd: start_rabbitmq).
    local env=/etc/rabbitmq/rabbitmq-env.conf envwant='# Written by compute-agent tools/setup-node.sh
NODENAME=rabbit@localhost'
    if [ "$(cat "$env" 2>/dev/null)" != "$envwant" ]; then
        if rabbitmqctl -q ping >/dev/null 2>&1; then
            log "restarting rabbitmq-server as rabbit@localhost (users and queues are set up again)"
            rabbitmqctl -q stop >/dev/null 2>&1 || true
        fi
        printf '%s\n' "$envwant" >"$env"
    fi
    local conf=/etc/rabbitmq/rabbitmq.conf want
    want=$(cat <<CONF
# Written by compute-agent tools/setup-node.sh
listeners.tcp = none
listeners.ssl.1 = 127.0.0.1:$AMQPS_PORT
distribution.listener.interface = 127.0.0.1
ssl_options.cacertfile = $RABBIT_TLS/ca.pem
ssl_options.certfile = $RABBIT_TLS/server.pem
ssl_options.keyfile = $RABBIT_TLS/server.key
ssl_options.verify = verify_none
ssl_options.fail_if_no_peer_cert = false
CONF
)
    if [ "$(cat "$conf" 2>/dev/null)" != "$want" ]; then
        log "configuring RabbitMQ for TLS on 127.0.0.1:$AMQPS_PORT"
        printf '%s\n' "$want" >"$conf"
        if rabbitmqctl -q ping >/dev/null 2>&1; then
            log "restarting rabbitmq-server to read it"
            rabbitmqctl -q stop >/dev/null 2>&1 || true
        fi
    fi
}

rabbit_nofile() {
    local pid
    pid=$(pgrep -o beam.smp) || return 1
    awk '/^Max open files/ {print $4}' "/proc/$pid/limits"
}

start_rabbitmq() {
    local hard
    hard=$(ulimit -Hn)
    [ "$hard" = unlimited ] || [ "$hard" -ge "$RABBIT_NOFILE" ] || RABBIT_NOFILE=$hard
    # A fleet's broker holds a few connections per node (100 simulated nodes passed the
    # default 1024 files and RabbitMQ refused connections): start it with room for many.
    if rabbitmqctl -q ping >/dev/null 2>&1 && [ "$(rabbit_nofile || echo 0)" -lt "$RABBIT_NOFILE" ]; then
        log "restarting rabbitmq-server with $RABBIT_NOFILE open files"
        rabbitmqctl -q stop >/dev/null 2>&1 || true
        for _ in $(seq 100); do pgrep beam.smp >/dev/null || break; sleep 0.1; done
    fi
    # rabbitmq-server runs the broker through su, whose pam_limits sets the limit.
    local limits=/etc/security/limits.d/compute-agent-rabbitmq.conf
    printf 'rabbitmq soft nofile %s\nrabbitmq hard nofile %s\n' "$RABBIT_NOFILE" "$RABBIT_NOFILE" >"$limits"
    if ! rabbitmqctl -q ping >/dev/null 2>&1; then
        # epmd (the Erlang port mapper) on loopback only: started here before the broker,
        # which would otherwise start one on every address.
        if ! ss -ltn 2>/dev/null | awk '{print $4}' | grep -qx '127.0.0.1:4369'; then
            epmd -kill >/dev/null 2>&1 || true
            epmd -daemon -address 127.0.0.1
        fi
        log "starting rabbitmq-server"
        HOME=/var/lib/rabbitmq rabbitmq-server -detached
    fi
    for _ in $(seq 300); do
        # AMQP accepts logins a few seconds after the node answers rabbitmqctl.
        if (exec 3<>/dev/tcp/127.0.0.1/$AMQPS_PORT) 2>/dev/null && rabbitmqctl -q await_startup >/dev/null 2>&1; then
            return 0
        fi
        sleep 0.2
    done
    echo "setup-node: rabbitmq did not come up" >&2; exit 1
}

rabbit_user_exists() { rabbitmqctl -q list_users | awk '{print $1}' | grep -qxF "$1"; }
rabbit_vhost_exists() { rabbitmqctl -q list_vhosts | grep -qxF "$1"; }

# set_password USER FILE ROTATE: USER's password: the one in FILE while it still logs in
# (unless ROTATE=1), else a new random one; printed. Passwords go to rabbitmqctl on its
# stdin (printf is a builtin), never on a command line other local users could read.
set_password() {
    local user=$1 file=$2 rotate=$3 pass=""
    if [ "$rotate" = 0 ] && [ -f "$file" ]; then
        pass=$(sed -n 's|^transport_url = rabbit://[^:]*:\([^@]*\)@.*|\1|p' "$file" | head -1)
        if [ -n "$pass" ] && ! printf '%s' "$pass" | rabbitmqctl -q authenticate_user "$user" >/dev/null 2>&1; then
            pass=""
        fi
    fi
    if [ -z "$pass" ]; then
        pass=$(openssl rand -hex 24)
        # add_user fails for a user that exists (each rabbitmqctl costs ~0.5 s: no listing)
        printf '%s' "$pass" | rabbitmqctl -q add_user "$user" >/dev/null 2>&1 ||
            printf '%s' "$pass" | rabbitmqctl -q change_password "$user" >/dev/null
        log "broker user $user: new password in $file" >&2
    fi
    printf '%s' "$pass"
}

# The TLS and naming settings every role's file shares. control_exchange amq.topic: a
# broker's own exchange, which no client can delete (a node may declare it, so with any
# other exchange a node could delete the fleet's report exchange and its bindings);
# amq.topic is durable, so everything declared on it is.
common_settings() {
    cat <<CONF
control_exchange = amq.topic

[oslo_messaging_rabbit]
ssl = true
ssl_ca_file = $TLS_DIR/ca.pem
amqp_durable_queues = true
CONF
}

write_file_0600() {   # write_file_0600 FILE: stdin to FILE, root only, atomically
    (umask 077; cat >"$1.new")
    chmod 0600 "$1.new"
    mv "$1.new" "$1"
}

write_control_credentials() {
    local file=$ETC/messaging-control.conf pass
    pass=$(set_password "$CONTROL_USER" "$file" 0)
    rabbitmqctl -q set_permissions -p / "$CONTROL_USER" '.*' '.*' '.*' >/dev/null
    { printf '# Written by compute-agent tools/setup-node.sh: the control plane'"'"'s broker credentials\n'
      printf '# (conductor, compute-ctl). Root only.\n[DEFAULT]\n'
      printf 'transport_url = rabbit://%s:%s@localhost:%s/\n' "$CONTROL_USER" "$pass" "$AMQPS_PORT"
      common_settings; } | write_file_0600 "$file"
}

valid_node_name() { [[ "$1" =~ ^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$ ]]; }

# node_credentials NAME ROTATE: node NAME's broker user node-NAME, its virtual host
# node-NAME and its report key; writes $ETC/messaging-agent-NAME.conf (root only) and the
# conductor's copy of the key, $KEYS_DIR/NAME.key. ROTATE=1: a new password and key.
node_credentials() {
    local name=$1 rotate=$2 user=node-$1 vhost=node-$1
    local file=$ETC/messaging-agent-$name.conf keyfile=$KEYS_DIR/$name.key pass key=""
    valid_node_name "$name" || { echo "setup-node: bad node name '$name'" >&2; exit 2; }
    mkdir -p "$KEYS_DIR"; chmod 0700 "$KEYS_DIR"
    rabbitmqctl -q add_vhost "$vhost" >/dev/null 2>&1 || rabbit_vhost_exists "$vhost"
    pass=$(set_password "$user" "$file" "$rotate")
    local n=${name//./\\.}       # the name inside a regular expression
    # Its own virtual host holds its queues only: the topic queues compute and
    # compute.NAME, its fanout queue (named after it: use_queue_manager), and it answers
    # the control plane's calls there through the default exchange.
    # The four permission settings are independent: side by side (each rabbitmqctl is an
    # Erlang VM start; a test run makes a dozen nodes).
    local pids=()
    rabbitmqctl -q set_permissions -p "$vhost" "$user" \
        "^(amq\\.topic|compute|compute\\.$n|compute_fanout|compute_fanout_$n:.*)\$" \
        "^(amq\\.default|compute|compute\\.$n|compute_fanout_$n:.*)\$" \
        "^(amq\\.topic|compute|compute\\.$n|compute_fanout|compute_fanout_$n:.*)\$" >/dev/null &
    pids+=($!)
    rabbitmqctl -q set_permissions -p "$vhost" "$CONTROL_USER" '.*' '.*' '.*' >/dev/null &
    pids+=($!)
    # The fleet's virtual host: publish reports (routing keys conductor or conductor-SUFFIX
    # only, never the control topic) and get their answers in reply queues named after it.
    # No default exchange there: it could put messages in any queue.
    rabbitmqctl -q set_permissions -p / "$user" "^(amq\\.topic|reply_$n:.*)\$" \
        '^amq\.topic$' "^reply_$n:.*\$" >/dev/null &
    pids+=($!)
    rabbitmqctl -q set_topic_permissions -p / "$user" amq.topic \
        '^conductor(-[A-Za-z0-9-]+)?$' '^$' >/dev/null &
    pids+=($!)
    for p in "${pids[@]}"; do wait "$p"; done
    if [ "$rotate" = 0 ] && [ -f "$keyfile" ]; then key=$(cat "$keyfile"); fi
    if [ -z "$key" ]; then
        key=$(openssl rand -hex 32)
        printf '%s\n' "$key" | write_file_0600 "$keyfile"
        log "node $name: new report key ($keyfile)"
    fi
    { printf '# Written by compute-agent tools/setup-node.sh: node %s'"'"'s broker credentials and\n' "$name"
      printf '# report key. Root only.\n[DEFAULT]\n'
      printf 'transport_url = rabbit://%s:%s@localhost:%s/%s\n' "$user" "$pass" "$AMQPS_PORT" "$vhost"
      common_settings
      printf 'use_queue_manager = true\nhostname = %s\n\n' "$name"
      printf '[oslo_concurrency]\nlock_path = /var/lib/compute-agent/locks\n\n'
      printf '[conductor]\ntransport_url = rabbit://%s:%s@localhost:%s/\nreport_key = %s\n' \
          "$user" "$pass" "$AMQPS_PORT" "$key"; } | write_file_0600 "$file"
    mkdir -p /var/lib/compute-agent/locks
}

remove_node() {
    local name=$1
    valid_node_name "$name" || { echo "setup-node: bad node name '$name'" >&2; exit 2; }
    # Side by side, and quiet when already gone.
    rabbitmqctl -q delete_user "node-$name" >/dev/null 2>&1 &
    local p1=$!
    rabbitmqctl -q delete_vhost "node-$name" >/dev/null 2>&1 &
    wait "$p1" || true
    wait $! || true
    rm -f "$ETC/messaging-agent-$name.conf" "$KEYS_DIR/$name.key" \
        /dev/shm/"${name}"_*_qmanager /var/lib/compute-agent/locks/*"oslo_read_shm_${name}_"*
    log "removed node $name (broker user, virtual host, report key)"
}

configure_broker_users() {
    mkdir -p "$ETC"
    write_control_credentials
    # This host's own node; messaging-agent.conf stays the name the agent is started with.
    local name
    name=$(hostname)
    node_credentials "$name" 0
    ln -sfn "messaging-agent-$name.conf" "$ETC/messaging-agent.conf"
    # The role every node once shared (its queues were any node's): gone.
    if rabbit_user_exists compute-agent; then
        rabbitmqctl -q delete_user compute-agent >/dev/null
        log "removed the shared broker user compute-agent"
    fi
    if rabbit_user_exists guest; then
        rabbitmqctl -q delete_user guest >/dev/null
        log "removed the broker's guest user"
    fi
}

write_lvm_conf() {
    # use_aio=0: ~7 ms per LVM command instead of ~45 ms. Without device-mapper (this kind of
    # test machine) LVs cannot be activated: activation=0 lets every metadata command work.
    mkdir -p "$LVM_DIR"
    local activation=1
    grep -qw device-mapper /proc/misc 2>/dev/null || activation=0
    cat >"$LVM_DIR/lvm.conf.new" <<CONF
# Written by compute-agent tools/setup-node.sh
global {
    use_aio = 0
    activation = $activation
}
CONF
    mv "$LVM_DIR/lvm.conf.new" "$LVM_DIR/lvm.conf"
}

lvm() { LVM_SYSTEM_DIR=$LVM_DIR LVM_SUPPRESS_FD_WARNINGS=1 "$@" 2> >(grep -v 'WARNING: Activation disabled' >&2); }

ensure_vg() {
    write_lvm_conf
    lvm vgs "$VG" >/dev/null 2>&1 && return 0
    mkdir -p "$(dirname "$VG_FILE")"
    local new=0
    [ -f "$VG_FILE" ] || { truncate -s "$VG_SIZE" "$VG_FILE"; new=1; }
    local loop
    loop=$(losetup -j "$VG_FILE" | cut -d: -f1 | head -1)
    [ -n "$loop" ] || loop=$(losetup -f --show "$VG_FILE")
    if [ $new = 1 ]; then
        lvm pvcreate -q "$loop" >/dev/null
        lvm vgcreate -q "$VG" "$loop" >/dev/null
        log "created volume group $VG on $loop ($VG_FILE, $VG_SIZE sparse)"
    else
        lvm pvscan --cache >/dev/null 2>&1 || true
        lvm vgs "$VG" >/dev/null || { echo "setup-node: $VG_FILE holds no VG $VG" >&2; exit 1; }
        log "re-attached volume group $VG on $loop"
    fi
}

remove_vg() {
    if lvm vgs "$VG" >/dev/null 2>&1; then
        lvm vgremove -q -f "$VG" >/dev/null
    fi
    for loop in $(losetup -j "$VG_FILE" 2>/dev/null | cut -d: -f1); do
        lvm pvremove -q -f "$loop" >/dev/null 2>&1 || true
        losetup -d "$loop"
    done
    rm -f "$VG_FILE"
    log "removed volume group $VG"
}

stop_all() {
    rabbitmqctl -q stop >/dev/null 2>&1 || true
    epmd -kill >/dev/null 2>&1 || true
    if pid_alive /run/libvirtd.pid; then kill "$(cat /run/libvirtd.pid)"; fi
    pkill -x virtlogd 2>/dev/null || true
    log "stopped"
}

need_root
case "${1:-}" in
    --stop) stop_all ;;
    --remove-vg) remove_vg ;;
    --node) [ -n "${2:-}" ] || { echo "usage: $0 --node NAME" >&2; exit 2; }
        mkdir -p "$ETC"; node_credentials "$2" 1 ;;
    --remove-node) [ -n "${2:-}" ] || { echo "usage: $0 --remove-node NAME" >&2; exit 2; }
        remove_node "$2" ;;
    "") install_packages; configure_libvirt; start_libvirt
        make_certificates; configure_rabbitmq; start_rabbitmq; configure_broker_users; ensure_vg
        log "node ready" ;;
    *) echo "usage: $0 [--stop | --remove-vg | --node NAME | --remove-node NAME]" >&2; exit 2 ;;
esac
