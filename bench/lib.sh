# shellcheck shell=bash
# shellcheck disable=SC2034,SC2317  # variables and as_pg are used by the scripts that source this
# Shared by bench/backup.sh and bench/restore.sh (sourced, not run): the PostgreSQL 18
# cluster with the `bench` database, the S3 server (moto, or s3s-fs), cleanup, and the report
# helpers.
# One copy, so that both benchmarks measure the same data on the same setup.
#
# The caller sets BENCH_DIR and REPO_DIR, runs with `set -euo pipefail`, and then calls, in
# this order: bench_check_knobs, bench_tools, bench_workdir NAME, bench_s3, bench_postgres,
# bench_dataset. A caller that leaves something in the cluster names a function in
# BENCH_CLEANUP_HOOK; it runs on exit while the server is still up.

BENCH_SIZE_GB=${BENCH_SIZE_GB:-1}
BENCH_ROUNDS=${BENCH_ROUNDS:-3}
BENCH_DATA_DIR=${BENCH_DATA_DIR:-}
BENCH_RESULTS_DIR=${BENCH_RESULTS_DIR:-$BENCH_DIR/results}
BENCH_TMP_PARENT=${BENCH_TMP_PARENT:-${TMPDIR:-/tmp}}
PGSIDECAR_BIN=${PGSIDECAR_BIN:-$REPO_DIR/target/release/pgsidecar}
# pgsidecar would read an exported PGSIDECAR_BIN as its configuration key `bin` and refuse it.
export -n PGSIDECAR_BIN
BENCH_S3_SERVER=${BENCH_S3_SERVER:-moto}
BENCH_S3S_FS=${BENCH_S3S_FS:-}
BENCH_CLEANUP_HOOK=""   # never from the environment: it names a command to run
BUCKET=pgsidecar-bench

log() { printf '%s bench: %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 2; }

# ---------------------------------------------------------------------------
# Input checks
# ---------------------------------------------------------------------------
bench_check_knobs() {
  [[ $BENCH_ROUNDS =~ ^[1-9][0-9]*$ ]] || die "BENCH_ROUNDS must be a positive integer"
  [[ $BENCH_SIZE_GB =~ ^[0-9]*\.?[0-9]+$ ]] || die "BENCH_SIZE_GB must be a number (GiB)"
  TARGET_BYTES=$(awk -v g="$BENCH_SIZE_GB" 'BEGIN { printf "%.0f", g * 1024 * 1024 * 1024 }')
  [ "$TARGET_BYTES" -gt 0 ] || die "BENCH_SIZE_GB must be > 0"
  case $BENCH_S3_SERVER in
    moto) ;;
    s3s-fs) [ -x "$BENCH_S3S_FS" ] || die "BENCH_S3_SERVER=s3s-fs needs BENCH_S3S_FS, the path of an s3s-fs binary (see bench/README.md)" ;;
    *) die "BENCH_S3_SERVER must be moto or s3s-fs, not '$BENCH_S3_SERVER'" ;;
  esac
}

# ---------------------------------------------------------------------------
# Tools
# ---------------------------------------------------------------------------
bench_tools() {
  if [ -z "${PGSC_TEST_PG18_BIN:-}" ] || [ -z "${PGSC_TEST_MOTO:-}" ] || [ -z "${PGSC_TEST_VENV:-}" ]; then
    log "PGSC_TEST_* not set; running scripts/test-deps.sh"
    eval "$("$REPO_DIR/scripts/test-deps.sh")"
  fi
  PG_BIN=${BENCH_PG_BIN:-$PGSC_TEST_PG18_BIN}
  MOTO=$PGSC_TEST_MOTO
  AWS=$PGSC_TEST_VENV/bin/aws
  local t
  for t in initdb pg_ctl psql pg_dump pg_restore; do [ -x "$PG_BIN/$t" ] || die "$PG_BIN/$t not found"; done
  [ "$BENCH_S3_SERVER" != moto ] || [ -x "$MOTO" ] || die "moto server not found at $MOTO"
  [ -x "$AWS" ] || die "aws cli not found at $AWS"
  command -v zstd >/dev/null || die "zstd not installed"
  if [ ! -x /usr/bin/time ]; then
    [ "$(id -u)" -eq 0 ] || die "/usr/bin/time missing (apt-get install time)"
    log "installing GNU time"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq time >&2 \
      || { apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq time >&2; }
  fi
  TIME=/usr/bin/time

  # initdb and postgres refuse to run as root.
  if [ "$(id -u)" -eq 0 ]; then
    id postgres >/dev/null 2>&1 || die "running as root needs a 'postgres' user to run the server"
    as_pg() { runuser -u postgres -- "$@"; }
    PG_OWNER=postgres
  else
    as_pg() { "$@"; }
    PG_OWNER=$(id -un)
  fi
}

# ---------------------------------------------------------------------------
# Work area and cleanup
# ---------------------------------------------------------------------------
PG_STARTED=""
S3_PID=""
BG_PIDS=()
DATA=""
WORK=""

bench_workdir() { # name of the work directory under BENCH_TMP_PARENT
  WORK=$(mktemp -d "$BENCH_TMP_PARENT/$1.XXXXXX")
  chmod 711 "$WORK"
  PG_RUN=$WORK/pg            # socket, server log, password file (owned by the server user)
  LOGS=$WORK/logs            # stderr and /usr/bin/time output of every run
  SC_TMP=$WORK/sidecar-tmp   # TMPDIR of pgsidecar
  mkdir -p "$PG_RUN" "$LOGS" "$SC_TMP"
  chown "$PG_OWNER" "$PG_RUN"

  trap cleanup EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM

  read -r PG_PORT S3_PORT < <(python3 -c '
import socket
a, b = socket.socket(), socket.socket()
a.bind(("127.0.0.1", 0)); b.bind(("127.0.0.1", 0))
print(a.getsockname()[1], b.getsockname()[1])')
  EP=http://127.0.0.1:$S3_PORT
}

cleanup() {
  local rc=$?
  set +e
  trap - EXIT INT TERM
  local p c kids
  for p in "${BG_PIDS[@]}"; do
    # Killing /usr/bin/time does not end the command it runs: end that too, before the
    # server it talks to is stopped.
    kids=()
    read -ra kids 2>/dev/null <"/proc/$p/task/$p/children"
    for c in "${kids[@]}"; do kill "$c" 2>/dev/null; done
    kill "$p" 2>/dev/null
  done
  if [ -n "$PG_STARTED" ] && [ -n "$BENCH_CLEANUP_HOOK" ]; then
    "$BENCH_CLEANUP_HOOK"
  fi
  if [ -n "$PG_STARTED" ]; then
    as_pg "$PG_BIN/pg_ctl" -D "$DATA" -m fast -w -t 60 stop >/dev/null 2>&1 \
      || log "could not stop PostgreSQL (data dir $DATA)"
  fi
  if [ -n "$S3_PID" ]; then
    kill "$S3_PID" 2>/dev/null
    wait "$S3_PID" 2>/dev/null
  fi
  if [ "$rc" -ne 0 ] && [ -n "$WORK" ] && [ -d "$WORK/logs" ]; then
    # What each command printed outlives a failed run; the rest of the work directory does not.
    local kept
    kept=$(mktemp -d "$BENCH_TMP_PARENT/pgsidecar-bench-failed-logs.XXXXXX")
    cp -r "$WORK/logs/." "$kept/" && log "the logs of the failed run are in $kept"
  fi
  [ -z "$WORK" ] || rm -rf "$WORK"
  exit "$rc"
}

# ---------------------------------------------------------------------------
# S3 (moto, or s3s-fs with BENCH_S3_SERVER=s3s-fs)
# ---------------------------------------------------------------------------
aws_() { "$AWS" --endpoint-url "$EP" "$@"; }

bench_s3() {
  unset AWS_PROFILE AWS_SESSION_TOKEN AWS_DEFAULT_PROFILE
  : >"$WORK/aws-config"
  export AWS_CONFIG_FILE=$WORK/aws-config AWS_SHARED_CREDENTIALS_FILE=$WORK/aws-config
  export AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test
  export AWS_REGION=us-east-1 AWS_DEFAULT_REGION=us-east-1
  export AWS_EC2_METADATA_DISABLED=true AWS_ENDPOINT_URL=$EP

  log "starting $BENCH_S3_SERVER on 127.0.0.1:$S3_PORT"
  if [ "$BENCH_S3_SERVER" = s3s-fs ]; then
    mkdir -p "$WORK/s3"
    "$BENCH_S3S_FS" --host 127.0.0.1 --port "$S3_PORT" --access-key test --secret-key test \
      "$WORK/s3" >"$LOGS/s3.log" 2>&1 &
  else
    "$MOTO" -H 127.0.0.1 -p "$S3_PORT" >"$LOGS/s3.log" 2>&1 &
  fi
  S3_PID=$!
  for _ in $(seq 1 150); do
    curl -s -o /dev/null "$EP/" && break
    kill -0 "$S3_PID" 2>/dev/null || { cat "$LOGS/s3.log" >&2; die "$BENCH_S3_SERVER exited"; }
    sleep 0.2
  done
  curl -s -o /dev/null "$EP/" || die "$BENCH_S3_SERVER did not come up"
  aws_ s3api create-bucket --bucket "$BUCKET" >/dev/null
}

# Deletes every object and aborts unfinished multipart uploads: moto keeps them in memory.
# (s3s-fs cannot list uploads; its leftovers go with the work directory.)
purge_bucket() {
  aws_ s3 rm "s3://$BUCKET" --recursive --quiet >/dev/null 2>&1 || true
  local key id
  while read -r key id; do
    if [ -z "$id" ] || [ "$key" = None ]; then continue; fi
    aws_ s3api abort-multipart-upload --bucket "$BUCKET" --key "$key" --upload-id "$id" >/dev/null 2>&1 || true
  done < <(aws_ s3api list-multipart-uploads --bucket "$BUCKET" \
             --query 'Uploads[].[Key,UploadId]' --output text 2>/dev/null || true)
}

# "objects bytes" under a prefix.
prefix_usage() {
  # shellcheck disable=SC2016  # backquotes are JMESPath literals
  aws_ s3api list-objects-v2 --bucket "$BUCKET" --prefix "$1" \
    --query '[length(Contents || `[]`), sum(Contents[].Size || `[0]`)]' --output text 2>/dev/null \
    | awk 'NF >= 2 { print $1, $2; ok = 1 } END { if (!ok) print 0, 0 }'
}

# Key of the largest object under a prefix (the dump; the manifest is small), or nothing.
largest_key() {
  local key
  key=$(aws_ s3api list-objects-v2 --bucket "$BUCKET" --prefix "$1" \
          --query 'sort_by(Contents, &Size)[-1].Key' --output text 2>/dev/null || true)
  [ -z "$key" ] || [ "$key" = None ] || echo "$key"
}

# The configuration pgsidecar gets, by environment only, as arguments for env(1). Other
# PGSIDECAR_* variables of the caller are passed through.
sidecar_env() {
  SIDECAR_ENV=(
    TMPDIR="$SC_TMP"
    PGHOST=127.0.0.1 PGPORT="$PG_PORT" PGUSER=postgres PGPASSWORD="$PGPASS" PGDATABASE=bench
    PGSIDECAR_STORAGE__URL="s3://$BUCKET/bench"
    AWS_ENDPOINT_URL="$EP" AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_REGION=us-east-1
    PGSIDECAR_TOOLS__BIN_DIRS="$PG_BIN"
  )
}

# ---------------------------------------------------------------------------
# PostgreSQL 18
# ---------------------------------------------------------------------------
sql() { PGOPTIONS='-c client_min_messages=warning' "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -tA "$@"; }

bench_postgres() {
  PGPASS="bench-$(od -An -tx8 -N8 /dev/urandom | tr -d ' ')"
  if [ -n "$BENCH_DATA_DIR" ]; then
    mkdir -p "$BENCH_DATA_DIR"
    DATA=$(cd "$BENCH_DATA_DIR" && pwd)
  else
    DATA=$WORK/data
  fi

  if [ -f "$DATA/PG_VERSION" ]; then
    [ "$(cat "$DATA/PG_VERSION")" = "$("$PG_BIN/pg_ctl" --version | sed -E 's/.* ([0-9]+)(\..*)?$/\1/')" ] \
      || die "$DATA holds a PostgreSQL $(cat "$DATA/PG_VERSION") cluster, not the version of $PG_BIN"
    log "reusing cluster in $DATA"
  else
    mkdir -p "$DATA"
    [ -z "$(ls -A "$DATA")" ] || die "$DATA is neither empty nor a PostgreSQL data directory"
    chown "$PG_OWNER" "$DATA"
    chmod 700 "$DATA"
    printf '%s\n' "$PGPASS" >"$PG_RUN/pwfile"
    chown "$PG_OWNER" "$PG_RUN/pwfile"
    log "initdb in $DATA"
    as_pg "$PG_BIN/initdb" -D "$DATA" -U postgres --pwfile="$PG_RUN/pwfile" \
      --auth-host=scram-sha-256 --auth-local=trust -E UTF8 --locale=C --no-sync >"$LOGS/initdb.log" 2>&1 \
      || { cat "$LOGS/initdb.log" >&2; die "initdb failed"; }
    rm -f "$PG_RUN/pwfile"
  fi
  as_pg test -w "$DATA" || die "$DATA is not writable by $PG_OWNER"

  log "starting PostgreSQL on 127.0.0.1:$PG_PORT"
  as_pg "$PG_BIN/pg_ctl" -D "$DATA" -l "$PG_RUN/postgres.log" -w -t 120 -o "\
 -c listen_addresses=127.0.0.1 -c port=$PG_PORT -c unix_socket_directories=$PG_RUN\
 -c shared_buffers=512MB -c fsync=off -c synchronous_commit=off -c full_page_writes=off\
 -c max_wal_size=8GB -c checkpoint_timeout=1h -c autovacuum=off" start >/dev/null \
    || { cat "$PG_RUN/postgres.log" >&2; die "PostgreSQL did not start"; }
  PG_STARTED=1
  # A reused cluster has the password of an earlier run: set this run's over the trusted socket.
  "$PG_BIN/psql" -h "$PG_RUN" -p "$PG_PORT" -U postgres -d postgres -X -q -v ON_ERROR_STOP=1 \
    -c "ALTER ROLE postgres PASSWORD '$PGPASS'" >/dev/null

  export PGHOST=127.0.0.1 PGPORT=$PG_PORT PGUSER=postgres PGPASSWORD=$PGPASS PGDATABASE=bench
  unset PGSERVICE PGSERVICEFILE PGPASSFILE PGOPTIONS
}

# ---------------------------------------------------------------------------
# Data set
# ---------------------------------------------------------------------------
insert_orders() { # first_id last_id
  sql -v lo="$1" -v hi="$2" <<'SQL'
INSERT INTO orders
SELECT g,
       1 + (random() * 49999)::int,
       (ARRAY['new','paid','packed','shipped','delivered','delivered','delivered','cancelled','refunded'])[1 + g % 9],
       t.created,
       CASE WHEN random() < 0.8 THEN t.created + random() * interval '5 days' END,
       round((random() * 500)::numeric, 2),
       (ARRAY['EUR','USD','GBP','SEK'])[1 + g % 4],
       CASE WHEN g % 3 = 0 THEN (ARRAY['leave at the door','call before delivery','gift wrap please',
                                       'fragile','deliver after 6pm','use the side entrance'])[1 + g % 6] END,
       jsonb_build_object(
         'sku', 'SKU-' || lpad(((g * 7919) % 20000)::text, 6, '0'),
         'qty', 1 + g % 5,
         'channel', (ARRAY['web','ios','android','store'])[1 + g % 4],
         'campaign', CASE WHEN g % 5 = 0 THEN 'spring-sale' END,
         'shipping', jsonb_build_object('method', (ARRAY['standard','express','pickup'])[1 + g % 3],
                                        'postcode', lpad(((g * 31) % 99999)::text, 5, '0')),
         'tags', jsonb_build_array('b2c', CASE WHEN g % 2 = 0 THEN 'repeat' ELSE 'first' END)),
       md5(random()::text),
       sha512(int8send(g) || float8send(random()))
FROM generate_series(:lo::bigint, :hi::bigint) g,
     LATERAL (SELECT timestamptz '2019-01-01 00:00:00+00' + g * interval '7 seconds'
                     + random() * interval '5 seconds' AS created) t;
SQL
}

db_bytes() { sql -c "SELECT pg_database_size(current_database())"; }
max_id() { sql -c "SELECT coalesce(max(id), 0) FROM orders"; }

# Fills database `bench` up to BENCH_SIZE_GB (only adds rows to a reused one) and sets
# PG_VERSION_STR, DB_SIZE_PRETTY, DB_SIZE_BYTES and ORDER_ROWS (an estimate).
bench_dataset() {
  if [ "$(sql -d postgres -c "SELECT count(*) FROM pg_database WHERE datname = 'bench'")" = 0 ]; then
    sql -d postgres -c "CREATE DATABASE bench"
  fi
  sql <<'SQL'
CREATE TABLE IF NOT EXISTS customers (
  id         integer PRIMARY KEY,
  name       text NOT NULL,
  email      text NOT NULL,
  country    char(2) NOT NULL,
  created_at timestamptz NOT NULL
);
CREATE TABLE IF NOT EXISTS orders (
  id          bigint NOT NULL,
  customer_id integer NOT NULL,
  status      text NOT NULL,
  created_at  timestamptz NOT NULL,
  shipped_at  timestamptz,
  amount      numeric(12,2) NOT NULL,
  currency    char(3) NOT NULL,
  note        text,
  attrs       jsonb NOT NULL,
  token       text NOT NULL,   -- 32 random hex characters
  payload     bytea NOT NULL   -- 64 random-looking bytes
);
INSERT INTO customers
SELECT g,
       'Customer ' || g,
       'user' || g || '@example.' || (ARRAY['com','org','net','de','fr'])[1 + g % 5],
       (ARRAY['DE','FR','US','GB','SE','NL','ES','IT'])[1 + g % 8],
       timestamptz '2018-01-01 00:00:00+00' + g * interval '17 minutes'
FROM generate_series(1, 50000) g
WHERE NOT EXISTS (SELECT 1 FROM customers);
SQL

  local loaded=0 size t0 next per_row rows
  size=$(db_bytes)
  if [ "$size" -lt "$TARGET_BYTES" ]; then
    log "loading data: $(numfmt --to=iec-i "$size")B now, target $(numfmt --to=iec-i "$TARGET_BYTES")B"
    t0=$EPOCHREALTIME
    next=$(( $(max_id) + 1 ))
    if [ "$next" -eq 1 ]; then
      insert_orders 1 20000
      next=20001
      size=$(db_bytes)
    fi
    while [ "$size" -lt "$TARGET_BYTES" ]; do
      # Bytes per row so far, to size the next chunk (at most 1M rows), plus 2% headroom.
      per_row=$(sql -c "SELECT greatest(1, pg_total_relation_size('orders') / greatest(count(*), 1)) FROM orders")
      # shellcheck disable=SC2017  # the chunk size only needs to be roughly right
      rows=$(( (TARGET_BYTES - size) / per_row * 102 / 100 + 1000 ))
      [ "$rows" -le 1000000 ] || rows=1000000
      insert_orders "$next" $((next + rows - 1))
      next=$((next + rows))
      size=$(db_bytes)
      log "  $((next - 1)) orders, $(numfmt --to=iec-i "$size")B"
    done
    loaded=1
    log "loaded in $(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.0f", b - a }') s"
  fi
  if [ "$(sql -c "SELECT count(*) FROM pg_constraint WHERE conrelid = 'orders'::regclass AND contype = 'p'")" = 0 ]; then
    sql -c "ALTER TABLE orders ADD PRIMARY KEY (id)"
    loaded=1
  fi
  if [ "$loaded" = 1 ]; then
    # Freeze and set hint bits now so that no dump run pays for it.
    sql -c "VACUUM (FREEZE, ANALYZE) customers, orders"
    sql -c "CHECKPOINT"
  fi

  PG_VERSION_STR=$(sql -c "SELECT current_setting('server_version')")
  DB_SIZE_PRETTY=$(sql -c "SELECT pg_size_pretty(pg_database_size(current_database()))")
  DB_SIZE_BYTES=$(db_bytes)
  ORDER_ROWS=$(sql -c "SELECT reltuples::bigint FROM pg_class WHERE oid = 'orders'::regclass")
}

# ---------------------------------------------------------------------------
# Measuring. Each run_* of a benchmark sets R_RC R_WALL R_RSS (KiB) R_WHO R_DISK R_BYTES R_NOTE.
# ---------------------------------------------------------------------------
rss_of() { # last line of a /usr/bin/time -f %M file, in KiB
  local v
  v=$(tail -n 1 "$1" 2>/dev/null || true)
  [[ $v =~ ^[0-9]+$ ]] && echo "$v" || echo 0
}
files_bytes() { find "$1" -type f -printf '%s\n' 2>/dev/null | awk '{ s += $1 } END { printf "%.0f\n", s }'; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", b - a }'; }
err_tail() { # short one-line summary of a stderr file, its warnings left out
  grep -v '^[0-9T:.-]*Z  WARN ' "$1" 2>/dev/null | tail -n 3 | tr '\n' ' ' | cut -c1-600
}
reset_r() { R_RC=0; R_WALL=0; R_RSS=0; R_WHO=""; R_DISK=0; R_BYTES=""; R_NOTE=""; }
# Keeps the largest RSS among (kib, name) pairs.
max_rss() {
  while [ $# -ge 2 ]; do
    if [ "$1" -gt "$R_RSS" ]; then R_RSS=$1; R_WHO=$2; fi
    shift 2
  done
}

# Samples, until the /usr/bin/time process $1 is gone: VmHWM of its child (the sidecar),
# bytes under $SC_TMP, growth of used space on that file system. Writes "hwm tmp df" to $2.
sample_sidecar() {
  set +e
  local tpid=$1 out=$2 spid="" rest hwm=0 tmpmax=0 dfmax=0 k v df0
  df0=$(df -B1 --output=used "$SC_TMP" | tail -n 1)
  while kill -0 "$tpid" 2>/dev/null; do
    if [ -z "$spid" ]; then
      read -r spid rest <"/proc/$tpid/task/$tpid/children" 2>/dev/null || true
    fi
    if [ -n "$spid" ]; then
      while read -r k v _; do
        if [ "$k" = VmHWM: ]; then [ "$v" -gt "$hwm" ] && hwm=$v; break; fi
      done <"/proc/$spid/status" 2>/dev/null
    fi
    v=$(files_bytes "$SC_TMP")
    [ "$v" -gt "$tmpmax" ] && tmpmax=$v
    v=$(( $(df -B1 --output=used "$SC_TMP" | tail -n 1) - df0 ))
    [ "$v" -gt "$dfmax" ] && dfmax=$v
    echo "$hwm $tmpmax $dfmax" >"$out.tmp" && mv "$out.tmp" "$out"
    sleep 0.2
  done
}

# ---------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------
median() {
  printf '%s\n' "$@" | sort -g | awk '{ a[NR] = $1 } END {
    if (NR == 0) exit 1
    if (NR % 2) printf "%.2f", a[(NR + 1) / 2]; else printf "%.2f", (a[NR / 2] + a[NR / 2 + 1]) / 2 }'
}
ratio() { awk -v x="$1" -v y="$2" 'BEGIN { if (y > 0) printf "%.2fx", x / y; else printf "-" }'; }
mib() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }
mibps() { awk -v b="$1" -v s="$2" 'BEGIN { if (s > 0) printf "%.1f", b / 1048576 / s; else printf "-" }'; }
human() { [ -n "$1" ] && [ "$1" != - ] && echo "$1 bytes ($(numfmt --to=iec-i --suffix=B "$1"))" || echo "-"; }
row() { local IFS=$'\t'; echo "$*"; }

print_text_table() { # header array name, rows array name
  local -n h=$1 rows=$2
  local all=("$(row "${h[@]}")" "${rows[@]}")
  printf '%s\n' "${all[@]}" | awk -F'\t' '
    { n = NR; for (i = 1; i <= NF; i++) { c[NR, i] = $i; if (length($i) > w[i]) w[i] = length($i) }; if (NF > nf) nf = NF }
    END { for (r = 1; r <= n; r++) { line = ""
            for (i = 1; i <= nf; i++) line = line (i == 1 ? sprintf("%-" w[i] "s", c[r, i]) : sprintf("  %" w[i] "s", c[r, i]))
            print line } }'
}
print_md_table() {
  local -n h=$1 rows=$2
  local line
  for line in "$(row "${h[@]}")" "$(row "${h[@]/*/---}")" "${rows[@]}"; do
    printf '| %s |\n' "$line" | sed 's/|/\\|/2g; s/\\|$/|/; s/\t/ | /g'
  done
}

# Sets SIDECAR_VERSION, GIT_REV, CPU_MODEL and MEM_TOTAL for the report.
bench_describe() {
  SIDECAR_VERSION=$( { [ -x "$PGSIDECAR_BIN" ] && timeout 10 "$PGSIDECAR_BIN" --version 2>/dev/null | head -n 1; } || true)
  SIDECAR_VERSION=${SIDECAR_VERSION:-version unknown}
  GIT_REV=$(git -C "$REPO_DIR" describe --always --dirty 2>/dev/null || echo "no commit")
  CPU_MODEL=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)
  MEM_TOTAL=$(awk '/^MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo)
}

# The sections every markdown report ends with: the setup lines (INFO) and the notes (NOTES).
md_setup_and_notes() {
  echo "## Setup"
  echo
  printf -- '- %s\n' "${INFO[@]}"
  if [ ${#NOTES[@]} -gt 0 ]; then
    echo
    echo "## Notes"
    echo
    printf -- '- %s\n' "${NOTES[@]}"
  fi
}

# Says where the report went; exits 1 if any command failed (FAILED is keyed by command).
bench_finish() {
  echo
  echo "results written to $MD"
  if [ ${#FAILED[@]} -gt 0 ]; then
    log "${#FAILED[@]} command(s) failed: ${!FAILED[*]}"
    exit 1
  fi
}

# Runs one pgsidecar command ("$@", with its environment through `env`) under /usr/bin/time,
# with an empty TMPDIR, sampling its own VmHWM so that the pg_dump or pg_restore it spawns is
# not counted. Sets R_RC, R_WALL, the RSS row (max_rss), R_DISK (peak or leftover bytes under
# TMPDIR), SC_TREE_RSS (RSS with children), SC_DF_GROWTH and SC_LEFTOVER (files left behind).
time_sidecar() {
  local id=$1
  shift
  rm -rf "${SC_TMP:?}"/* "$SC_TMP"/.[!.]* 2>/dev/null || true
  local t0=$EPOCHREALTIME tpid spl
  $TIME -f %M -o "$LOGS/$id.1.rss" "$@" >"$LOGS/$id.1.out" 2>"$LOGS/$id.1.err" </dev/null &
  tpid=$!
  BG_PIDS+=("$tpid")
  sample_sidecar "$tpid" "$LOGS/$id.sample" &
  spl=$!
  BG_PIDS+=("$spl")
  wait "$tpid" || R_RC=$?
  R_WALL=$(elapsed "$t0" "$EPOCHREALTIME")
  wait "$spl" 2>/dev/null || true
  BG_PIDS=()

  local hwm=0 tmpmax=0 dfmax=0 left
  if [ -f "$LOGS/$id.sample" ]; then read -r hwm tmpmax dfmax <"$LOGS/$id.sample" || true; fi
  SC_TREE_RSS=$(rss_of "$LOGS/$id.1.rss")
  if [ "$hwm" -gt 0 ]; then
    max_rss "$hwm" pgsidecar
  else
    max_rss "$SC_TREE_RSS" "pgsidecar+children"
  fi
  left=$(files_bytes "$SC_TMP")
  R_DISK=$(( tmpmax > left ? tmpmax : left ))
  SC_DF_GROWTH=$dfmax
  SC_LEFTOVER=$(find "$SC_TMP" -mindepth 1 | head -n 3 | tr '\n' ' ')
}

# After the caller's own notes: files the run left in TMPDIR are a note, and are removed.
note_leftovers() {
  [ -n "$SC_LEFTOVER" ] || return 0
  R_NOTE="${R_NOTE:+$R_NOTE; }files left in TMPDIR: $SC_LEFTOVER"
  rm -rf "${SC_TMP:?}"/* "$SC_TMP"/.[!.]* 2>/dev/null || true
}
