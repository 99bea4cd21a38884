#!/bin/sh
# Entry point of the test-only PostgreSQL image built from Debian's packages (scripts/container_images.sh).
# It honours the part of the official postgres image's interface docker-compose.yml uses: POSTGRES_USER,
# POSTGRES_PASSWORD, POSTGRES_DB and a data directory at /var/lib/postgresql/data (PGDATA), initialised on
# first start and reused afterwards.
set -eu
: "${POSTGRES_PASSWORD:?POSTGRES_PASSWORD is required}"
POSTGRES_USER=${POSTGRES_USER:-postgres}
POSTGRES_DB=${POSTGRES_DB:-$POSTGRES_USER}
PGDATA=${PGDATA:-/var/lib/postgresql/data}
export PGDATA

if [ "$(id -u)" = 0 ]; then
  # A new named volume is owned by root: hand it to postgres, then run this script again as postgres.
  mkdir -p "$PGDATA" /run/postgresql
  chown -R postgres:postgres "$PGDATA" /run/postgresql
  chmod 700 "$PGDATA"
  # setpriv execs (runuser would stay PID 1 as a parent that does not pass on the stop signal).
  exec setpriv --reuid=postgres --regid=postgres --init-groups -- "$0" "$@"
fi

if [ ! -s "$PGDATA/PG_VERSION" ]; then
  pwfile=$(mktemp)
  printf '%s\n' "$POSTGRES_PASSWORD" > "$pwfile"
  initdb --username="$POSTGRES_USER" --pwfile="$pwfile" --auth-local=trust --auth-host=scram-sha-256 \
    --encoding=UTF8 >/dev/null
  rm -f "$pwfile"
  echo "listen_addresses = '*'" >> "$PGDATA/postgresql.conf"
  echo "host all all all scram-sha-256" >> "$PGDATA/pg_hba.conf"
  if [ "$POSTGRES_DB" != postgres ]; then
    # Single-user mode: no server (and no port) while the database is created.
    echo "CREATE DATABASE \"$POSTGRES_DB\" OWNER \"$POSTGRES_USER\";" \
      | postgres --single -D "$PGDATA" -c listen_addresses='' postgres >/dev/null
  fi
fi
exec postgres -D "$PGDATA" "$@"
