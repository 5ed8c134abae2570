#!/usr/bin/env bash
# PostgreSQL for the conductor of a fleet, without systemd (Debian 12's packages, as root).
# Idempotent: installs postgresql, starts its cluster (pg_ctlcluster), creates the role
# compute_conductor (login, may create databases: the functional tests make and drop their
# own) with a random password and its database, and writes the SQLAlchemy URL to
# /etc/compute-agent/conductor-db.url (0600, root): `[conductor] database` takes that URL.
#
#   tools/setup-conductor-db.sh          install + start + role + database; prints the URL file
#   tools/setup-conductor-db.sh --stop   stop the cluster
set -euo pipefail

ROLE=compute_conductor
DB=compute_conductor
URL_FILE=${COMPUTE_AGENT_DB_URL_FILE:-/etc/compute-agent/conductor-db.url}

log() { printf '[setup-conductor-db] %s\n' "$*" >&2; }
[ "$(id -u)" = 0 ] || { echo "setup-conductor-db: run as root" >&2; exit 1; }

if ! dpkg-query -W -f='${Status}' postgresql 2>/dev/null | grep -q 'ok installed'; then
    log "installing postgresql"
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends postgresql
fi
cluster=$(pg_lsclusters -h | awk 'NR == 1 {print $1 " " $2 " " $3 " " $4}')
if [ -z "$cluster" ]; then
    ver=$(ls /usr/lib/postgresql | sort -V | tail -1)
    log "creating cluster $ver main"
    pg_createcluster "$ver" main >&2
    cluster=$(pg_lsclusters -h | awk 'NR == 1 {print $1 " " $2 " " $3 " " $4}')
fi
read -r ver name port status <<<"$cluster"

if [ "${1:-}" = --stop ]; then
    [ "$status" = down ] || pg_ctlcluster "$ver" "$name" stop
    exit 0
fi
if [ "$status" != online ]; then
    log "starting PostgreSQL $ver/$name on port $port"
    pg_ctlcluster "$ver" "$name" start
fi
for _ in $(seq 100); do
    pg_isready -q -h 127.0.0.1 -p "$port" && break
    sleep 0.1
done
pg_isready -q -h 127.0.0.1 -p "$port" || { log "PostgreSQL does not answer on $port"; exit 1; }

# SQL goes to psql on stdin (printf is a shell builtin): the password is never on a command
# line, where any local user could read it from /proc.
psql_su() { su postgres -s /bin/sh -c "psql -p $port -v ON_ERROR_STOP=1 -qtA"; }

if [ -s "$URL_FILE" ]; then
    pw=$(sed -n 's|^postgresql+psycopg2://[^:]*:\([^@]*\)@.*|\1|p' "$URL_FILE")
fi
[ -n "${pw:-}" ] || pw=$(openssl rand -hex 24)
if [ "$(printf "SELECT 1 FROM pg_roles WHERE rolname = '%s'" "$ROLE" | psql_su)" != 1 ]; then
    log "creating role $ROLE"
    printf "CREATE ROLE %s LOGIN CREATEDB PASSWORD '%s'" "$ROLE" "$pw" | psql_su
else
    printf "ALTER ROLE %s LOGIN CREATEDB PASSWORD '%s'" "$ROLE" "$pw" | psql_su
fi
if [ "$(printf "SELECT 1 FROM pg_database WHERE datname = '%s'" "$DB" | psql_su)" != 1 ]; then
    log "creating database $DB"
    printf 'CREATE DATABASE %s OWNER %s' "$DB" "$ROLE" | psql_su
fi
mkdir -p "$(dirname "$URL_FILE")"
umask 077
printf 'postgresql+psycopg2://%s:%s@127.0.0.1:%s/%s\n' "$ROLE" "$pw" "$port" "$DB" >"$URL_FILE.tmp"
mv "$URL_FILE.tmp" "$URL_FILE"
log "ready: PostgreSQL $ver on 127.0.0.1:$port, URL in $URL_FILE"
echo "$URL_FILE"
