#!/usr/bin/env bash
# Backup benchmark: pgsidecar versus the usual shell pipelines, on one throwaway
# PostgreSQL 18 cluster and a local moto S3 server. See bench/README.md.
#
#   cargo build --release && bench/backup.sh
#
# Knobs (environment): BENCH_SIZE_GB, BENCH_ROUNDS, BENCH_ZSTD_LEVEL, BENCH_LEVELS,
# BENCH_DATA_DIR, BENCH_COMMANDS, BENCH_RESULTS_DIR, BENCH_TMP_PARENT, BENCH_PG_BIN,
# PGSIDECAR_BIN.
set -euo pipefail
export LC_ALL=C

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(dirname "$BENCH_DIR")

BENCH_SIZE_GB=${BENCH_SIZE_GB:-1}
BENCH_ROUNDS=${BENCH_ROUNDS:-3}
BENCH_ZSTD_LEVEL=${BENCH_ZSTD_LEVEL:-3}
BENCH_LEVELS=${BENCH_LEVELS:-}
BENCH_DATA_DIR=${BENCH_DATA_DIR:-}
BENCH_COMMANDS=${BENCH_COMMANDS:-a b c d e}
BENCH_RESULTS_DIR=${BENCH_RESULTS_DIR:-$BENCH_DIR/results}
BENCH_TMP_PARENT=${BENCH_TMP_PARENT:-${TMPDIR:-/tmp}}
PGSIDECAR_BIN=${PGSIDECAR_BIN:-$REPO_DIR/target/release/pgsidecar}
BUCKET=pgsidecar-bench

log() { printf '%s bench: %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 2; }

# ---------------------------------------------------------------------------
# Input checks
# ---------------------------------------------------------------------------
[[ $BENCH_ROUNDS =~ ^[1-9][0-9]*$ ]] || die "BENCH_ROUNDS must be a positive integer"
[[ $BENCH_SIZE_GB =~ ^[0-9]*\.?[0-9]+$ ]] || die "BENCH_SIZE_GB must be a number (GiB)"
valid_level() { [[ $1 =~ ^[0-9]+$ ]] && [ "$1" -ge 1 ] && [ "$1" -le 19 ]; }
valid_level "$BENCH_ZSTD_LEVEL" || die "BENCH_ZSTD_LEVEL must be 1..19"
for l in $BENCH_LEVELS; do valid_level "$l" || die "BENCH_LEVELS: '$l' is not a level 1..19"; done
for c in $BENCH_COMMANDS; do [[ $c =~ ^[a-e]$ ]] || die "BENCH_COMMANDS: '$c' is not one of a b c d e"; done
TARGET_BYTES=$(awk -v g="$BENCH_SIZE_GB" 'BEGIN { printf "%.0f", g * 1024 * 1024 * 1024 }')
[ "$TARGET_BYTES" -gt 0 ] || die "BENCH_SIZE_GB must be > 0"

# ---------------------------------------------------------------------------
# Tools
# ---------------------------------------------------------------------------
if [ -z "${PGSC_TEST_PG18_BIN:-}" ] || [ -z "${PGSC_TEST_MOTO:-}" ] || [ -z "${PGSC_TEST_VENV:-}" ]; then
  log "PGSC_TEST_* not set; running scripts/test-deps.sh"
  eval "$("$REPO_DIR/scripts/test-deps.sh")"
fi
PG_BIN=${BENCH_PG_BIN:-$PGSC_TEST_PG18_BIN}
MOTO=$PGSC_TEST_MOTO
AWS=$PGSC_TEST_VENV/bin/aws
for t in initdb pg_ctl psql pg_dump; do [ -x "$PG_BIN/$t" ] || die "$PG_BIN/$t not found"; done
[ -x "$MOTO" ] || die "moto server not found at $MOTO"
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

# ---------------------------------------------------------------------------
# Work area and cleanup
# ---------------------------------------------------------------------------
WORK=$(mktemp -d "$BENCH_TMP_PARENT/pgsidecar-bench.XXXXXX")
chmod 711 "$WORK"
PG_RUN=$WORK/pg            # socket, server log, password file (owned by the server user)
LOGS=$WORK/logs            # stderr and /usr/bin/time output of every run
SC_TMP=$WORK/sidecar-tmp   # TMPDIR of pgsidecar: must stay empty
FILE_DIR=$WORK/file        # dump file of command (e)
mkdir -p "$PG_RUN" "$LOGS" "$SC_TMP" "$FILE_DIR"
chown "$PG_OWNER" "$PG_RUN"

PG_STARTED=""
MOTO_PID=""
BG_PIDS=()
DATA=""

cleanup() {
  local rc=$?
  set +e
  trap - EXIT INT TERM
  local p
  for p in "${BG_PIDS[@]}"; do kill "$p" 2>/dev/null; done
  if [ -n "$PG_STARTED" ]; then
    as_pg "$PG_BIN/pg_ctl" -D "$DATA" -m fast -w -t 60 stop >/dev/null 2>&1 \
      || log "could not stop PostgreSQL (data dir $DATA)"
  fi
  if [ -n "$MOTO_PID" ]; then
    kill "$MOTO_PID" 2>/dev/null
    wait "$MOTO_PID" 2>/dev/null
  fi
  rm -rf "$WORK"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

read -r PG_PORT MOTO_PORT < <(python3 -c '
import socket
a, b = socket.socket(), socket.socket()
a.bind(("127.0.0.1", 0)); b.bind(("127.0.0.1", 0))
print(a.getsockname()[1], b.getsockname()[1])')
EP=http://127.0.0.1:$MOTO_PORT

# ---------------------------------------------------------------------------
# S3 (moto)
# ---------------------------------------------------------------------------
unset AWS_PROFILE AWS_SESSION_TOKEN AWS_DEFAULT_PROFILE
: >"$WORK/aws-config"
export AWS_CONFIG_FILE=$WORK/aws-config AWS_SHARED_CREDENTIALS_FILE=$WORK/aws-config
export AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test
export AWS_REGION=us-east-1 AWS_DEFAULT_REGION=us-east-1
export AWS_EC2_METADATA_DISABLED=true AWS_ENDPOINT_URL=$EP
aws_() { "$AWS" --endpoint-url "$EP" "$@"; }

log "starting moto on 127.0.0.1:$MOTO_PORT"
"$MOTO" -H 127.0.0.1 -p "$MOTO_PORT" >"$LOGS/moto.log" 2>&1 &
MOTO_PID=$!
for _ in $(seq 1 150); do
  curl -s -o /dev/null "$EP/" && break
  kill -0 "$MOTO_PID" 2>/dev/null || { cat "$LOGS/moto.log" >&2; die "moto exited"; }
  sleep 0.2
done
curl -s -o /dev/null "$EP/" || die "moto did not come up"
aws_ s3api create-bucket --bucket "$BUCKET" >/dev/null

# Deletes every object and aborts unfinished multipart uploads: moto keeps them in memory.
purge_bucket() {
  aws_ s3 rm "s3://$BUCKET" --recursive --quiet >/dev/null 2>&1 || true
  local key id
  while read -r key id; do
    [ -n "$id" ] && [ "$key" != None ] || continue
    aws_ s3api abort-multipart-upload --bucket "$BUCKET" --key "$key" --upload-id "$id" >/dev/null 2>&1 || true
  done < <(aws_ s3api list-multipart-uploads --bucket "$BUCKET" \
             --query 'Uploads[].[Key,UploadId]' --output text 2>/dev/null || true)
}

# "objects bytes" under a prefix.
prefix_usage() {
  aws_ s3api list-objects-v2 --bucket "$BUCKET" --prefix "$1" \
    --query '[length(Contents || `[]`), sum(Contents[].Size || `[0]`)]' --output text 2>/dev/null \
    | awk 'NF >= 2 { print $1, $2; ok = 1 } END { if (!ok) print 0, 0 }'
}

# ---------------------------------------------------------------------------
# PostgreSQL 18
# ---------------------------------------------------------------------------
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
sql() { PGOPTIONS='-c client_min_messages=warning' "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -tA "$@"; }

# ---------------------------------------------------------------------------
# Data set
# ---------------------------------------------------------------------------
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

loaded=0
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

# Warm-up (untimed): reads the whole database into the page cache and gives the raw dump size.
log "warm-up dump"
RAW_SIZE=$("$PG_BIN/pg_dump" -Fc -Z0 | wc -c)
log "raw dump (-Fc -Z0): $RAW_SIZE bytes"

# ---------------------------------------------------------------------------
# Measurements. Each run_* sets R_RC R_WALL R_RSS (KiB) R_WHO R_DISK R_BYTES R_NOTE.
# ---------------------------------------------------------------------------
rss_of() { # last line of a /usr/bin/time -f %M file, in KiB
  local v
  v=$(tail -n 1 "$1" 2>/dev/null || true)
  [[ $v =~ ^[0-9]+$ ]] && echo "$v" || echo 0
}
files_bytes() { find "$1" -type f -printf '%s\n' 2>/dev/null | awk '{ s += $1 } END { printf "%.0f\n", s }'; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", b - a }'; }
err_tail() { # short one-line summary of a stderr file
  tail -n 3 "$1" 2>/dev/null | tr '\n' ' ' | cut -c1-300
}
reset_r() { R_RC=0; R_WALL=0; R_RSS=0; R_WHO=""; R_DISK=0; R_BYTES=""; R_NOTE=""; }
# Keeps the largest RSS among (kib, name) pairs.
max_rss() {
  while [ $# -ge 2 ]; do
    if [ "$1" -gt "$R_RSS" ]; then R_RSS=$1; R_WHO=$2; fi
    shift 2
  done
}

# (a) pg_dump -Fc -Z0 > /dev/null
run_a() {
  local id=$1
  reset_r
  local t0=$EPOCHREALTIME
  $TIME -f %M -o "$LOGS/$id.1.rss" "$PG_BIN/pg_dump" -Fc -Z0 >/dev/null 2>"$LOGS/$id.1.err" || R_RC=$?
  R_WALL=$(elapsed "$t0" "$EPOCHREALTIME")
  max_rss "$(rss_of "$LOGS/$id.1.rss")" pg_dump
  [ "$R_RC" -eq 0 ] || R_NOTE="pg_dump: $(err_tail "$LOGS/$id.1.err")"
}

# (b) pg_dump -Fc -Z0 | zstd > /dev/null; with a third argument the output is counted by wc -c.
run_b() {
  local id=$1 level=$2 count=${3:-}
  reset_r
  local t0=$EPOCHREALTIME
  if [ -z "$count" ]; then
    $TIME -f %M -o "$LOGS/$id.1.rss" "$PG_BIN/pg_dump" -Fc -Z0 2>"$LOGS/$id.1.err" \
      | $TIME -f %M -o "$LOGS/$id.2.rss" zstd -q -T1 "-$level" >/dev/null 2>"$LOGS/$id.2.err" || R_RC=$?
  else
    $TIME -f %M -o "$LOGS/$id.1.rss" "$PG_BIN/pg_dump" -Fc -Z0 2>"$LOGS/$id.1.err" \
      | $TIME -f %M -o "$LOGS/$id.2.rss" zstd -q -T1 "-$level" 2>"$LOGS/$id.2.err" \
      | wc -c >"$LOGS/$id.size" || R_RC=$?
    R_BYTES=$(tr -d ' ' <"$LOGS/$id.size")
  fi
  R_WALL=$(elapsed "$t0" "$EPOCHREALTIME")
  max_rss "$(rss_of "$LOGS/$id.1.rss")" pg_dump "$(rss_of "$LOGS/$id.2.rss")" zstd
  [ "$R_RC" -eq 0 ] || R_NOTE="$(err_tail "$LOGS/$id.1.err") $(err_tail "$LOGS/$id.2.err")"
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

# Checks that the largest object under $1 is a zstd-compressed custom-format dump.
# Prints "ok <decompressed bytes>" or an error message.
verify_upload() {
  local key res
  key=$(aws_ s3api list-objects-v2 --bucket "$BUCKET" --prefix "$1" \
          --query 'sort_by(Contents, &Size)[-1].Key' --output text 2>/dev/null || true)
  [ -n "$key" ] && [ "$key" != None ] || { echo "no object to verify"; return; }
  res=$( { aws_ s3 cp "s3://$BUCKET/$key" - 2>/dev/null | zstd -dcq 2>/dev/null \
           | { m=$(dd bs=5 count=1 status=none); n=$(wc -c); echo "$m $((n + ${#m}))"; }; } || true)
  case $res in
    "PGDMP "*) echo "ok ${res#PGDMP }" ;;
    *) echo "object $key is not a zstd-compressed pg_dump archive" ;;
  esac
}

# (c) pgsidecar backup to moto, configured by environment only.
SIDECAR_VERIFIED=""
run_c() {
  local id=$1 level=$2
  reset_r
  if [ ! -x "$PGSIDECAR_BIN" ]; then
    R_RC=127; R_NOTE="binary not found: $PGSIDECAR_BIN (cargo build --release)"; return
  fi
  rm -rf "${SC_TMP:?}"/* "$SC_TMP"/.[!.]* 2>/dev/null || true
  local t0=$EPOCHREALTIME tpid spl
  $TIME -f %M -o "$LOGS/$id.1.rss" env \
    TMPDIR="$SC_TMP" \
    PGHOST=127.0.0.1 PGPORT="$PG_PORT" PGUSER=postgres PGPASSWORD="$PGPASS" PGDATABASE=bench \
    PGSIDECAR_STORAGE__URL="s3://$BUCKET/bench" \
    AWS_ENDPOINT_URL="$EP" AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_REGION=us-east-1 \
    PGSIDECAR_TOOLS__BIN_DIRS="$PG_BIN" \
    PGSIDECAR_COMPRESSION__LEVEL="$level" \
    "$PGSIDECAR_BIN" backup >"$LOGS/$id.1.out" 2>"$LOGS/$id.1.err" </dev/null &
  tpid=$!
  BG_PIDS+=("$tpid")
  sample_sidecar "$tpid" "$LOGS/$id.sample" &
  spl=$!
  BG_PIDS+=("$spl")
  wait "$tpid" || R_RC=$?
  R_WALL=$(elapsed "$t0" "$EPOCHREALTIME")
  wait "$spl" 2>/dev/null || true
  BG_PIDS=()

  local hwm=0 tmpmax=0 dfmax=0 tree_rss
  if [ -f "$LOGS/$id.sample" ]; then read -r hwm tmpmax dfmax <"$LOGS/$id.sample" || true; fi
  tree_rss=$(rss_of "$LOGS/$id.1.rss")
  if [ "$hwm" -gt 0 ]; then
    max_rss "$hwm" pgsidecar
  else
    max_rss "$tree_rss" "pgsidecar+children"
  fi
  # Local disk: peak bytes seen under TMPDIR during the run, or what is left there after it.
  local left
  left=$(files_bytes "$SC_TMP")
  R_DISK=$(( tmpmax > left ? tmpmax : left ))
  local leftover
  leftover=$(find "$SC_TMP" -mindepth 1 | head -n 3 | tr '\n' ' ')
  SC_DF_GROWTH=$dfmax
  SC_TREE_RSS=$tree_rss

  local n bytes
  read -r n bytes < <(prefix_usage bench/)
  R_BYTES=$bytes
  if [ "$R_RC" -ne 0 ]; then
    R_NOTE="exit $R_RC: $(err_tail "$LOGS/$id.1.err")"
  elif [ "$n" -eq 0 ]; then
    R_RC=1; R_NOTE="exited 0 but uploaded nothing under s3://$BUCKET/bench/"
  elif [ -z "$SIDECAR_VERIFIED" ]; then
    local v
    v=$(verify_upload bench/)
    case $v in
      "ok "*) SIDECAR_VERIFIED="largest object decompresses to a PGDMP archive of ${v#ok } bytes" ;;
      *) R_RC=1; R_NOTE="upload check failed: $v" ;;
    esac
  fi
  if [ -n "$leftover" ]; then
    R_NOTE="${R_NOTE:+$R_NOTE; }files left in TMPDIR: $leftover"
    rm -rf "${SC_TMP:?}"/* "$SC_TMP"/.[!.]* 2>/dev/null || true
  fi
  purge_bucket
}

# (d) pg_dump -Fc -Z0 | zstd | aws s3 cp -
run_d() {
  local id=$1 level=$2
  reset_r
  local t0=$EPOCHREALTIME
  $TIME -f %M -o "$LOGS/$id.1.rss" "$PG_BIN/pg_dump" -Fc -Z0 2>"$LOGS/$id.1.err" \
    | $TIME -f %M -o "$LOGS/$id.2.rss" zstd -q -T1 "-$level" 2>"$LOGS/$id.2.err" \
    | $TIME -f %M -o "$LOGS/$id.3.rss" "$AWS" s3 cp - "s3://$BUCKET/pipe/x.dump.zst" \
        --endpoint-url "$EP" --only-show-errors 2>"$LOGS/$id.3.err" || R_RC=$?
  R_WALL=$(elapsed "$t0" "$EPOCHREALTIME")
  max_rss "$(rss_of "$LOGS/$id.1.rss")" pg_dump "$(rss_of "$LOGS/$id.2.rss")" zstd \
          "$(rss_of "$LOGS/$id.3.rss")" aws
  local n bytes
  read -r n bytes < <(prefix_usage pipe/)
  R_BYTES=$bytes
  [ "$R_RC" -eq 0 ] || R_NOTE="$(err_tail "$LOGS/$id.1.err") $(err_tail "$LOGS/$id.3.err")"
  purge_bucket
}

# (e) pg_dump -Fc -f file (default compression), aws s3 cp file, rm file
run_e() {
  local id=$1 f=$FILE_DIR/x.dump
  reset_r
  local t0=$EPOCHREALTIME
  $TIME -f %M -o "$LOGS/$id.1.rss" "$PG_BIN/pg_dump" -Fc -f "$f" 2>"$LOGS/$id.1.err" || R_RC=$?
  if [ "$R_RC" -eq 0 ]; then
    R_DISK=$(stat -c %s "$f")
    $TIME -f %M -o "$LOGS/$id.2.rss" "$AWS" s3 cp "$f" "s3://$BUCKET/file/x.dump" \
      --endpoint-url "$EP" --only-show-errors 2>"$LOGS/$id.2.err" || R_RC=$?
  fi
  rm -f "$f"
  R_WALL=$(elapsed "$t0" "$EPOCHREALTIME")
  max_rss "$(rss_of "$LOGS/$id.1.rss")" pg_dump "$(rss_of "$LOGS/$id.2.rss")" aws
  local n bytes
  read -r n bytes < <(prefix_usage file/)
  R_BYTES=$bytes
  [ "$R_RC" -eq 0 ] || R_NOTE="$(err_tail "$LOGS/$id.1.err") $(err_tail "$LOGS/$id.2.err" 2>/dev/null)"
  purge_bucket
}

L=$BENCH_ZSTD_LEVEL
declare -A LABEL=(
  [a]="(a) pg_dump -Fc -Z0 > /dev/null"
  [b]="(b) pg_dump -Fc -Z0 | zstd -$L > /dev/null"
  [c]="(c) pgsidecar backup (zstd -$L, S3)"
  [d]="(d) pg_dump -Fc -Z0 | zstd -$L | aws s3 cp -"
  [e]="(e) pg_dump -Fc -f file; aws s3 cp file; rm"
)
declare -A WALLS=() RSS=() WHO=() DISK=() BYTES=() FAILED=() NOTE=()
SC_DF_GROWTH=0
SC_TREE_RSS=0
SC_DF_MAX=0
SC_TREE_MAX=0

record() { # key
  local k=$1
  if [ "$R_RC" -ne 0 ]; then
    FAILED[$k]=1
    NOTE[$k]=$R_NOTE
    log "  $k failed: $R_NOTE"
    return
  fi
  WALLS[$k]="${WALLS[$k]:-} $R_WALL"
  if [ "$R_RSS" -gt "${RSS[$k]:-0}" ]; then RSS[$k]=$R_RSS; WHO[$k]=$R_WHO; fi
  if [ "$R_DISK" -gt "${DISK[$k]:-0}" ] || [ -z "${DISK[$k]:-}" ]; then DISK[$k]=$R_DISK; fi
  if [ -n "$R_BYTES" ]; then BYTES[$k]=$R_BYTES; fi
  if [ -n "$R_NOTE" ]; then NOTE[$k]=$R_NOTE; fi
  log "  $k ${R_WALL}s, peak RSS $((R_RSS / 1024)) MiB ($R_WHO)${R_BYTES:+, $R_BYTES bytes out}"
}

run_cmd() { # key round level
  local k=$1 r=$2 lv=$3 cmd=${1%%@*}
  case $cmd in
    a) run_a "$k.$r" ;;
    b) if [ "$k" = b ]; then run_b "$k.$r" "$lv"; else run_b "$k.$r" "$lv" count; fi ;;
    c) run_c "$k.$r" "$lv"
       if [ "$SC_DF_GROWTH" -gt "$SC_DF_MAX" ]; then SC_DF_MAX=$SC_DF_GROWTH; fi
       if [ "$SC_TREE_RSS" -gt "$SC_TREE_MAX" ]; then SC_TREE_MAX=$SC_TREE_RSS; fi ;;
    d) run_d "$k.$r" "$lv" ;;
    e) run_e "$k.$r" ;;
  esac
  record "$k"
}

for r in $(seq 1 "$BENCH_ROUNDS"); do
  log "round $r/$BENCH_ROUNDS"
  for c in $BENCH_COMMANDS; do
    [ -z "${FAILED[$c]:-}" ] || continue   # a failed command is not retried
    run_cmd "$c" "$r" "$L"
  done
done

if [ -n "$BENCH_LEVELS" ]; then
  for r in $(seq 1 "$BENCH_ROUNDS"); do
    log "levels round $r/$BENCH_ROUNDS"
    for lv in $BENCH_LEVELS; do
      for c in b c; do
        # (b) always runs here; (c) only if it is in BENCH_COMMANDS and did not fail above.
        if [ "$c" = c ]; then
          case " $BENCH_COMMANDS " in *" c "*) ;; *) continue ;; esac
          if [ -n "${FAILED[c]:-}" ]; then FAILED[c@$lv]=1; continue; fi
        fi
        if [ -n "${FAILED[$c@$lv]:-}" ]; then continue; fi
        run_cmd "$c@$lv" "$r" "$lv"
      done
    done
  done
fi

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

declare -A MED=()
for k in "${!WALLS[@]}"; do
  # shellcheck disable=SC2086
  MED[$k]=$(median ${WALLS[$k]})
done

row() { local IFS=$'\t'; echo "$*"; }
# shellcheck disable=SC2034  # used through namerefs
HEAD=(command "median s" "vs (a)" "vs (b)" "peak RSS MiB" "local disk bytes")
ROWS=()
for c in $BENCH_COMMANDS; do
  if [ -n "${FAILED[$c]:-}" ] || [ -z "${MED[$c]:-}" ]; then
    ROWS+=("$(row "${LABEL[$c]}" failed - - - -)")
  else
    ra=-; rb=-
    [ -n "${MED[a]:-}" ] && ra=$(ratio "${MED[$c]}" "${MED[a]}")
    [ -n "${MED[b]:-}" ] && rb=$(ratio "${MED[$c]}" "${MED[b]}")
    ROWS+=("$(row "${LABEL[$c]}" "${MED[$c]}" "$ra" "$rb" "$(mib "${RSS[$c]}") (${WHO[$c]})" "${DISK[$c]}")")
  fi
done

# shellcheck disable=SC2034
LEVEL_HEAD=(level "(b) median s" "(b) MiB/s in" "(b) bytes" "(b) ratio" "(c) median s" "(c) MiB/s in" "(c) bytes" "(c) peak RSS MiB")
LEVEL_ROWS=()
mibps() { awk -v b="$1" -v s="$2" 'BEGIN { if (s > 0) printf "%.1f", b / 1048576 / s; else printf "-" }'; }
for lv in $BENCH_LEVELS; do
  cells=("$lv")
  for c in b c; do
    k="$c@$lv"
    if [ -n "${MED[$k]:-}" ] && [ -z "${FAILED[$k]:-}" ]; then
      cells+=("${MED[$k]}" "$(mibps "$RAW_SIZE" "${MED[$k]}")" "${BYTES[$k]:--}")
      if [ "$c" = b ]; then
        cells+=("$(awk -v r="$RAW_SIZE" -v z="${BYTES[$k]:-0}" 'BEGIN { if (z > 0) printf "%.2f", r / z; else printf "-" }')")
      else
        cells+=("$(mib "${RSS[$k]}")")
      fi
    elif [ -n "${FAILED[$k]:-}" ]; then
      cells+=(failed - - -)
    else
      cells+=("not run" - - -)
    fi
  done
  LEVEL_ROWS+=("$(row "${cells[@]}")")
done

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

SIDECAR_VERSION=$( { [ -x "$PGSIDECAR_BIN" ] && timeout 10 "$PGSIDECAR_BIN" --version 2>/dev/null | head -n 1; } || true)
SIDECAR_VERSION=${SIDECAR_VERSION:-version unknown}
GIT_REV=$(git -C "$REPO_DIR" describe --always --dirty 2>/dev/null || echo "no commit")
CPU_MODEL=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)
MEM_TOTAL=$(awk '/^MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo)
human() { [ -n "$1" ] && [ "$1" != - ] && echo "$1 bytes ($(numfmt --to=iec-i --suffix=B "$1"))" || echo "-"; }
ZSTD_SIZE=${BYTES[d]:-}
[ -n "$ZSTD_SIZE" ] || ZSTD_SIZE=${BYTES[b@$L]:-}
INFO=(
  "machine: $(nproc) CPUs, $CPU_MODEL, $MEM_TOTAL RAM, Linux $(uname -r)"
  "PostgreSQL: server $PG_VERSION_STR, $("$PG_BIN/pg_dump" --version); zstd $(zstd --version | grep -o 'v[0-9][0-9.]*' | head -n 1)"
  "pgsidecar: $PGSIDECAR_BIN ($SIDECAR_VERSION), repository at $GIT_REV"
  "database: $DB_SIZE_PRETTY ($DB_SIZE_BYTES bytes), ~$ORDER_ROWS rows in orders; BENCH_SIZE_GB=$BENCH_SIZE_GB"
  "raw dump (pg_dump -Fc -Z0): $(human "$RAW_SIZE")"
  "compressed, zstd -$L -T1 (from d): $(human "$ZSTD_SIZE")"
  "pg_dump -Fc default compression (from e): $(human "${DISK[e]:-}")"
  "uploaded by pgsidecar (from c): $(human "${BYTES[c]:-}")${SIDECAR_VERIFIED:+; $SIDECAR_VERIFIED}"
  "rounds: $BENCH_ROUNDS (round robin: $BENCH_COMMANDS), zstd level $L, S3: moto on 127.0.0.1"
)
if [ -n "${MED[c]:-}" ] && [ -z "${FAILED[c]:-}" ]; then
  INFO+=("pgsidecar TMPDIR: peak $(human "${DISK[c]:-0}") written; peak growth of used space on its file system during a run: $(human "$SC_DF_MAX") (includes other activity)"
         "pgsidecar peak RSS incl. its children such as pg_dump (/usr/bin/time %M): $(mib "$SC_TREE_MAX") MiB")
fi
NOTES=()
for k in $BENCH_COMMANDS $(for lv in $BENCH_LEVELS; do echo "b@$lv c@$lv"; done); do
  [ -n "${NOTE[$k]:-}" ] && NOTES+=("$k: ${NOTE[$k]}")
done

echo
echo "== pgsidecar backup benchmark ($(date '+%Y-%m-%d %H:%M'))"
print_text_table HEAD ROWS
if [ ${#LEVEL_ROWS[@]} -gt 0 ]; then
  echo
  echo "== zstd levels (b: pg_dump | zstd -T1 | wc -c; c: pgsidecar backup)"
  print_text_table LEVEL_HEAD LEVEL_ROWS
fi
echo
printf '%s\n' "${INFO[@]}"
if [ ${#NOTES[@]} -gt 0 ]; then
  echo
  echo "notes:"
  printf '  %s\n' "${NOTES[@]}"
fi

mkdir -p "$BENCH_RESULTS_DIR"
MD=$BENCH_RESULTS_DIR/backup-$(date +%Y-%m-%d-%H%M%S).md
{
  echo "# pgsidecar backup benchmark, $(date '+%Y-%m-%d %H:%M')"
  echo
  echo "Median wall time of $BENCH_ROUNDS rounds. Peak RSS is that of the largest single process"
  echo "(for pgsidecar: its own VmHWM), local disk is the most bytes written to local disk."
  echo
  print_md_table HEAD ROWS
  if [ ${#LEVEL_ROWS[@]} -gt 0 ]; then
    echo
    echo "## zstd levels"
    echo
    print_md_table LEVEL_HEAD LEVEL_ROWS
  fi
  echo
  echo "## Setup"
  echo
  printf -- '- %s\n' "${INFO[@]}"
  if [ ${#NOTES[@]} -gt 0 ]; then
    echo
    echo "## Notes"
    echo
    printf -- '- %s\n' "${NOTES[@]}"
  fi
} >"$MD"
echo
echo "results written to $MD"

nfail=0
for k in "${!FAILED[@]}"; do nfail=$((nfail + 1)); done
if [ "$nfail" -gt 0 ]; then
  log "$nfail command(s) failed: ${!FAILED[*]}"
  exit 1
fi
