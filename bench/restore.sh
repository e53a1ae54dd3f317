#!/usr/bin/env bash
# Restore benchmark: `pgsidecar restore` from S3 versus pg_restore from a local file of the
# same archive, on the cluster and data of bench/backup.sh and a local S3 server. See
# bench/README.md.
#
#   cargo build --release && bench/restore.sh
#
# Knobs (environment): BENCH_SIZE_GB, BENCH_ROUNDS, BENCH_RESTORE_JOBS, BENCH_RESTORE_COMMANDS,
# BENCH_DATA_DIR, BENCH_RESULTS_DIR, BENCH_TMP_PARENT, BENCH_PG_BIN, PGSIDECAR_BIN.
set -euo pipefail
export LC_ALL=C

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(dirname "$BENCH_DIR")
# shellcheck source=bench/lib.sh
. "$BENCH_DIR/lib.sh"

BENCH_RESTORE_JOBS=${BENCH_RESTORE_JOBS:-2}
BENCH_RESTORE_COMMANDS=${BENCH_RESTORE_COMMANDS:-r1 r2 r3 r4}

# Every database this script restores into has this prefix, so that an interrupted run on a
# kept cluster (BENCH_DATA_DIR) leaves nothing behind the next run would trip over.
DB_PREFIX=benchrestore_

# ---------------------------------------------------------------------------
# Input checks
# ---------------------------------------------------------------------------
bench_check_knobs
# pgsidecar accepts --jobs 1..64.
if ! [[ $BENCH_RESTORE_JOBS =~ ^[1-9][0-9]*$ ]] || [ "$BENCH_RESTORE_JOBS" -gt 64 ]; then
  die "BENCH_RESTORE_JOBS must be 1..64"
fi
for c in $BENCH_RESTORE_COMMANDS; do
  [[ $c =~ ^r[1-4]$ ]] || die "BENCH_RESTORE_COMMANDS: '$c' is not one of r1 r2 r3 r4"
done
[ -x "$PGSIDECAR_BIN" ] || die "binary not found: $PGSIDECAR_BIN (cargo build --release)"

# ---------------------------------------------------------------------------
# Setup: tools, work area, S3 server, PostgreSQL 18 with the `bench` database (bench/lib.sh)
# ---------------------------------------------------------------------------
bench_tools
bench_workdir pgsidecar-bench-restore
DUMP_FILE=$WORK/bench.dump   # the local copy r1 and r3 read
bench_s3
bench_postgres

drop_restored() {
  local db
  while read -r db; do
    [ -n "$db" ] || continue
    sql -d postgres -c "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)" >/dev/null \
      || log "could not drop database $db; drop it by hand"
  done < <(sql -d postgres -c "SELECT datname FROM pg_database WHERE starts_with(datname, '$DB_PREFIX')" 2>/dev/null || true)
}
BENCH_CLEANUP_HOOK=drop_restored
drop_restored

bench_dataset
sidecar_env
# The check after every restore compares with this exact count (ORDER_ROWS is an estimate).
SRC_ROWS=$(sql -c "SELECT count(*) FROM orders")

# One backup (untimed), and the archive it holds as a local file: both kinds of restore read
# the same bytes.
log "pgsidecar backup to $BENCH_S3_SERVER (untimed)"
env "${SIDECAR_ENV[@]}" "$PGSIDECAR_BIN" backup >"$LOGS/backup.out" 2>"$LOGS/backup.err" </dev/null \
  || { tail -n 20 "$LOGS/backup.err" >&2; die "pgsidecar backup failed"; }
DUMP_KEY=$(largest_key bench/)
[ -n "$DUMP_KEY" ] || die "pgsidecar backup uploaded nothing under s3://$BUCKET/bench/"
case $DUMP_KEY in
  *.dump.zst) DECOMP=(zstd -dcq); CODEC=zstd ;;
  *.dump.gz)  DECOMP=(gzip -dc); CODEC=gzip ;;
  *.dump)     DECOMP=(cat); CODEC=none ;;
  *.age)      die "$DUMP_KEY is encrypted; run the benchmark without PGSIDECAR_ENCRYPTION__* settings" ;;
  *)          die "$DUMP_KEY does not look like a dump" ;;
esac
STORED_BYTES=$(aws_ s3api head-object --bucket "$BUCKET" --key "$DUMP_KEY" --query ContentLength --output text)
log "downloading $DUMP_KEY ($STORED_BYTES bytes, $CODEC) to $DUMP_FILE (untimed)"
aws_ s3 cp "s3://$BUCKET/$DUMP_KEY" - --only-show-errors | "${DECOMP[@]}" >"$DUMP_FILE" \
  || die "could not download and decompress $DUMP_KEY"
[ "$(head -c 5 "$DUMP_FILE")" = PGDMP ] || die "$DUMP_KEY did not decompress to a custom-format archive"
RAW_SIZE=$(stat -c %s "$DUMP_FILE")
log "archive: $RAW_SIZE bytes"

# ---------------------------------------------------------------------------
# Measurements. Each run_* sets R_RC R_WALL R_RSS (KiB) R_WHO R_DISK R_BYTES R_NOTE.
# ---------------------------------------------------------------------------
# The flags src/restore/ gives pg_restore for --target-db: not one transaction, no --clean
# (the database is new), --jobs only when asked; the database is named last before the file.
restore_flags() { # jobs (empty for none), database
  RESTORE_FLAGS=(--no-password --exit-on-error)
  [ -z "$1" ] || RESTORE_FLAGS+=("--jobs=$1")
  RESTORE_FLAGS+=("--dbname=dbname='$2'")
}

# Untimed: no run pays for the writes of the one before it.
checkpoint() { sql -d postgres -c "CHECKPOINT"; }

# (r1), (r3): pg_restore from the local file into a new empty database, created the way
# pgsidecar creates its scratch database.
run_local() {
  local id=$1 db=$2 jobs=$3
  reset_r
  if ! sql -d postgres -c "CREATE DATABASE \"$db\" TEMPLATE template0" 2>"$LOGS/$id.create.err"; then
    R_RC=1; R_NOTE="could not create $db: $(err_tail "$LOGS/$id.create.err")"; return
  fi
  checkpoint
  restore_flags "$jobs" "$db"
  local t0=$EPOCHREALTIME
  $TIME -f %M -o "$LOGS/$id.1.rss" "$PG_BIN/pg_restore" "${RESTORE_FLAGS[@]}" "$DUMP_FILE" \
    >/dev/null 2>"$LOGS/$id.1.err" </dev/null || R_RC=$?
  R_WALL=$(elapsed "$t0" "$EPOCHREALTIME")
  max_rss "$(rss_of "$LOGS/$id.1.rss")" pg_restore
  [ "$R_RC" -eq 0 ] || R_NOTE="pg_restore exit $R_RC: $(err_tail "$LOGS/$id.1.err")"
}

# (r2), (r4): pgsidecar restore latest --target-db, the whole command timed. Its own peak
# RSS is sampled (VmHWM), so the pg_restore it runs is not counted.
run_sidecar() {
  local id=$1 db=$2 jobs=$3
  reset_r
  checkpoint
  local args=(restore latest --target-db "$db" --yes)
  [ -z "$jobs" ] || args+=(--jobs "$jobs")
  time_sidecar "$id" env "${SIDECAR_ENV[@]}" "$PGSIDECAR_BIN" "${args[@]}"
  [ "$R_RC" -eq 0 ] || R_NOTE="exit $R_RC: $(err_tail "$LOGS/$id.1.err")"
  note_leftovers
}

# Untimed, after every run: the restored database must hold every row of orders.
check_restored() { # database
  [ "$R_RC" -eq 0 ] || return 0
  local n
  n=$(sql -d "$1" -c "SELECT count(*) FROM orders" 2>"$LOGS/check.err" || true)
  if [ "$n" != "$SRC_ROWS" ]; then
    R_RC=1
    R_NOTE="${R_NOTE:+$R_NOTE; }orders in $1 has ${n:-no} rows, the source $SRC_ROWS"
    [ ! -s "$LOGS/check.err" ] || R_NOTE="$R_NOTE: $(err_tail "$LOGS/check.err")"
  fi
}

declare -A LABEL=(
  [r1]="(r1) pg_restore from local file"
  [r2]="(r2) pgsidecar restore --target-db (S3)"
  [r3]="(r3) pg_restore -j $BENCH_RESTORE_JOBS from local file"
  [r4]="(r4) pgsidecar restore --target-db --jobs $BENCH_RESTORE_JOBS (S3)"
)
declare -A LOCAL_OF=([r2]=r1 [r4]=r3)
declare -A WALLS=() RSS=() WHO=() DISK=() TREE=() FAILED=() NOTE=()
SC_TREE_RSS=0

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
  if [ -n "$R_NOTE" ]; then NOTE[$k]=$R_NOTE; fi
  log "  $k ${R_WALL}s, peak RSS $((R_RSS / 1024)) MiB ($R_WHO)"
}

run_cmd() { # key round
  local k=$1 r=$2 db=$DB_PREFIX${1}_$2
  case $k in
    r1) run_local "$k.$r" "$db" "" ;;
    r2) run_sidecar "$k.$r" "$db" "" ;;
    r3) run_local "$k.$r" "$db" "$BENCH_RESTORE_JOBS" ;;
    r4) run_sidecar "$k.$r" "$db" "$BENCH_RESTORE_JOBS" ;;
  esac
  check_restored "$db"
  case $k in
    r2|r4) if [ "$SC_TREE_RSS" -gt "${TREE[$k]:-0}" ]; then TREE[$k]=$SC_TREE_RSS; fi ;;
  esac
  drop_restored
  record "$k"
}

for r in $(seq 1 "$BENCH_ROUNDS"); do
  log "round $r/$BENCH_ROUNDS"
  for c in $BENCH_RESTORE_COMMANDS; do
    [ -z "${FAILED[$c]:-}" ] || continue   # a failed command is not retried
    run_cmd "$c" "$r"
  done
done

# ---------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------
declare -A MED=()
for k in "${!WALLS[@]}"; do
  # shellcheck disable=SC2086
  MED[$k]=$(median ${WALLS[$k]})
done

# shellcheck disable=SC2034  # used through namerefs
HEAD=(command "median s" "vs local" "vs (r1)" "peak RSS MiB")
ROWS=()
for c in $BENCH_RESTORE_COMMANDS; do
  if [ -n "${FAILED[$c]:-}" ] || [ -z "${MED[$c]:-}" ]; then
    ROWS+=("$(row "${LABEL[$c]}" failed - - -)")
    continue
  fi
  vl=-; v1=-
  case $c in
    r1|r3) vl=1.00x ;;
    *) lc=${LOCAL_OF[$c]}; [ -z "${MED[$lc]:-}" ] || vl=$(ratio "${MED[$c]}" "${MED[$lc]}") ;;
  esac
  [ -z "${MED[r1]:-}" ] || v1=$(ratio "${MED[$c]}" "${MED[r1]}")
  ROWS+=("$(row "${LABEL[$c]}" "${MED[$c]}" "$vl" "$v1" "$(mib "${RSS[$c]}") (${WHO[$c]})")")
done

bench_describe
restore_flags "" DBNAME
FLAGS_SERIAL="${RESTORE_FLAGS[*]}"
restore_flags "$BENCH_RESTORE_JOBS" DBNAME
FLAGS_JOBS="${RESTORE_FLAGS[*]}"
INFO=(
  "machine: $(nproc) CPUs, $CPU_MODEL, $MEM_TOTAL RAM, Linux $(uname -r)"
  "PostgreSQL: server $PG_VERSION_STR, $("$PG_BIN/pg_restore" --version); zstd $(zstd --version | grep -o 'v[0-9][0-9.]*' | head -n 1)"
  "pgsidecar: $PGSIDECAR_BIN ($SIDECAR_VERSION), repository at $GIT_REV"
  "database: $DB_SIZE_PRETTY ($DB_SIZE_BYTES bytes), $SRC_ROWS rows in orders; BENCH_SIZE_GB=$BENCH_SIZE_GB"
  "dump: $DUMP_KEY, $(human "$STORED_BYTES") stored ($CODEC); archive (bench.dump, decompressed): $(human "$RAW_SIZE")"
  "pg_restore as pgsidecar runs it for --target-db: pg_restore $FLAGS_SERIAL bench.dump (r1); pg_restore $FLAGS_JOBS bench.dump (r3); pgsidecar feeds r2's pg_restore on stdin and gives r4's its checked temp copy"
  "every restore checked afterwards (untimed): orders has $SRC_ROWS rows; each run restores into a new database, dropped afterwards"
  "rounds: $BENCH_ROUNDS (round robin: $BENCH_RESTORE_COMMANDS), S3: $BENCH_S3_SERVER on 127.0.0.1"
)
for k in r2 r4; do
  if [ -n "${MED[$k]:-}" ] && [ -z "${FAILED[$k]:-}" ]; then
    INFO+=("pgsidecar $k: peak RSS incl. its children such as pg_restore (/usr/bin/time %M): $(mib "${TREE[$k]:-0}") MiB; TMPDIR peak $(human "${DISK[$k]:-0}")")
  fi
done
NOTES=()
for k in $BENCH_RESTORE_COMMANDS; do
  [ -n "${NOTE[$k]:-}" ] && NOTES+=("$k: ${NOTE[$k]}")
done

echo
echo "== pgsidecar restore benchmark ($(date '+%Y-%m-%d %H:%M'))"
print_text_table HEAD ROWS
echo
printf '%s\n' "${INFO[@]}"
if [ ${#NOTES[@]} -gt 0 ]; then
  echo
  echo "notes:"
  printf '  %s\n' "${NOTES[@]}"
fi

mkdir -p "$BENCH_RESULTS_DIR"
MD=$BENCH_RESULTS_DIR/restore-$(date +%Y-%m-%d-%H%M%S).md
{
  echo "# pgsidecar restore benchmark, $(date '+%Y-%m-%d %H:%M')"
  echo
  echo "Median wall time of $BENCH_ROUNDS rounds. vs local: r2 against r1, r4 against r3. Peak RSS"
  echo "is pgsidecar's own VmHWM for r2 and r4, pg_restore's for r1 and r3."
  echo
  print_md_table HEAD ROWS
  echo
  md_setup_and_notes
} >"$MD"
bench_finish
