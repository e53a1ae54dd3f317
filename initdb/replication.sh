# shellcheck shell=sh
# Run by the postgres image once, when it initialises a new data directory: compose.yml mounts
# it into /docker-entrypoint-initdb.d, swarm-stack.yml gives it there as a config. It lets the
# sidecar's replication connection in, which point-in-time recovery needs (README: What the
# database server needs); on a server initialised before, add the line by hand.
# Replication connections need a line of their own: `host all all all` does not match them.
echo "host replication $POSTGRES_USER samenet scram-sha-256" >> "$PGDATA/pg_hba.conf"
