#!/bin/sh
# Entrypoint of the test PostgreSQL image (tunnel-test-postgres), a small
# stand-in for the official postgres image: same PGDATA, same
# POSTGRES_USER/POSTGRES_PASSWORD/POSTGRES_DB variables, password (SCRAM)
# authentication over TCP. Any command other than "postgres" is executed as is.
set -eu

if [ "$#" -eq 0 ] || [ "$1" != postgres ]; then
	exec "$@"
fi
shift

: "${PGDATA:=/var/lib/postgresql/data}"
: "${POSTGRES_USER:=postgres}"
: "${POSTGRES_DB:=$POSTGRES_USER}"
if [ -z "${POSTGRES_PASSWORD:-}" ]; then
	echo "postgres-entrypoint: POSTGRES_PASSWORD must be set" >&2
	exit 1
fi

if [ ! -s "$PGDATA/PG_VERSION" ]; then
	mkdir -p "$PGDATA"
	chmod 700 "$PGDATA"
	pwfile=$(mktemp)
	printf '%s\n' "$POSTGRES_PASSWORD" >"$pwfile"
	initdb -D "$PGDATA" -U "$POSTGRES_USER" --pwfile="$pwfile" \
		--auth-local=trust --auth-host=scram-sha-256 --no-locale -E UTF8 >/dev/null
	rm -f "$pwfile"
	echo "host all all all scram-sha-256" >>"$PGDATA/pg_hba.conf"
	if [ "$POSTGRES_DB" != postgres ]; then
		pg_ctl -D "$PGDATA" -o "-c listen_addresses=''" -s -w start
		psql -X -q -v ON_ERROR_STOP=1 -U "$POSTGRES_USER" -d postgres \
			-c "CREATE DATABASE \"$POSTGRES_DB\""
		pg_ctl -D "$PGDATA" -m fast -s -w stop
	fi
	echo "postgres-entrypoint: initialized $PGDATA" >&2
fi

exec postgres -D "$PGDATA" -c listen_addresses='*' -c jit=off "$@"
