#!/usr/bin/env bash
# Destinations benchmark: `pgsidecar backup` of one database to one S3 destination (d1) and to
# two, the primary and a copy on a second S3 server (d2), in the same run, on the cluster and
# data of bench/backup.sh (bench/lib.sh). Prints, and writes to bench/results/: the median
# wall time of each, the ratio d2/d1, and pgsidecar's own peak RSS in each.
#
#   cargo build --release && bench/destinations.sh
#
# The first S3 server (the primary's) is BENCH_S3_SERVER, as for the other scripts; the second
# (the copy's) is BENCH_COPY_S3_SERVER: `moto` (default) or `s3s-fs` (with BENCH_S3S_FS).
# Rounds alternate the order: d1 then d2, then d2 then d1, so that neither always runs on a
# warmer cache. After every run both buckets are emptied (moto keeps objects in memory).
#
# Knobs (environment): BENCH_SIZE_GB, BENCH_ROUNDS, BENCH_COPY_S3_SERVER, BENCH_S3_SERVER,
# BENCH_S3S_FS, BENCH_DATA_DIR, BENCH_RESULTS_DIR, BENCH_TMP_PARENT, BENCH_PG_BIN,
# PGSIDECAR_BIN.
set -euo pipefail
export LC_ALL=C

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(dirname "$BENCH_DIR")
# shellcheck source=bench/lib.sh
. "$BENCH_DIR/lib.sh"

BENCH_COPY_S3_SERVER=${BENCH_COPY_S3_SERVER:-moto}
COPY_BUCKET=pgsidecar-bench-copy

# ---------------------------------------------------------------------------
# Input checks
# ---------------------------------------------------------------------------
bench_check_knobs
case $BENCH_COPY_S3_SERVER in
  moto) ;;
  s3s-fs) [ -x "$BENCH_S3S_FS" ] || die "BENCH_COPY_S3_SERVER=s3s-fs needs BENCH_S3S_FS, the path of an s3s-fs binary (see bench/README.md)" ;;
  *) die "BENCH_COPY_S3_SERVER must be moto or s3s-fs, not '$BENCH_COPY_S3_SERVER'" ;;
esac
[ -x "$PGSIDECAR_BIN" ] || die "binary not found: $PGSIDECAR_BIN (cargo build --release)"

# ---------------------------------------------------------------------------
# Setup: tools, work area, the primary's S3 server, PostgreSQL 18 with `bench` (bench/lib.sh),
# and the copy's S3 server.
# ---------------------------------------------------------------------------
bench_tools
[ "$BENCH_COPY_S3_SERVER" != moto ] || [ -x "$MOTO" ] || die "moto server not found at $MOTO"
bench_workdir pgsidecar-bench-destinations

COPY_S3_PID=""
stop_copy_s3() {
  if [ -n "$COPY_S3_PID" ]; then
    kill "$COPY_S3_PID" 2>/dev/null || true
    wait "$COPY_S3_PID" 2>/dev/null || true
    COPY_S3_PID=""
  fi
}
# bench/lib.sh's cleanup keeps the exit code it finds in $?: stop the second server first,
# then hand it the original code (without errexit, which would end the trap at `exit`).
trap 'rc=$?; set +e; stop_copy_s3; (exit "$rc"); cleanup' EXIT

bench_s3
COPY_PORT=$(python3 -c '
import socket
s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
EP2=http://127.0.0.1:$COPY_PORT
aws2() { "$AWS" --endpoint-url "$EP2" "$@"; }
log "starting $BENCH_COPY_S3_SERVER (the copy's) on 127.0.0.1:$COPY_PORT"
if [ "$BENCH_COPY_S3_SERVER" = s3s-fs ]; then
  mkdir -p "$WORK/s3-copy"
  "$BENCH_S3S_FS" --host 127.0.0.1 --port "$COPY_PORT" --access-key test --secret-key test \
    "$WORK/s3-copy" >"$LOGS/s3-copy.log" 2>&1 &
else
  "$MOTO" -H 127.0.0.1 -p "$COPY_PORT" >"$LOGS/s3-copy.log" 2>&1 &
fi
COPY_S3_PID=$!
for _ in $(seq 1 150); do
  curl -s -o /dev/null "$EP2/" && break
  kill -0 "$COPY_S3_PID" 2>/dev/null || { cat "$LOGS/s3-copy.log" >&2; die "$BENCH_COPY_S3_SERVER (copy) exited"; }
  sleep 0.2
done
curl -s -o /dev/null "$EP2/" || die "$BENCH_COPY_S3_SERVER (copy) did not come up"
aws2 s3api create-bucket --bucket "$COPY_BUCKET" >/dev/null

bench_postgres
bench_dataset
sidecar_env
# The status file each command records into: not in TMPDIR, which is checked for leftovers.
SIDECAR_ENV+=(PGSIDECAR_HEALTH__STATUS_FILE="$WORK/status.json")
# The copy, by environment as any other setting: its own URL and endpoint.
COPY_ENV=(
  PGSIDECAR_COPIES__OFFSITE__URL="s3://$COPY_BUCKET/bench"
  PGSIDECAR_COPIES__OFFSITE__ENDPOINT="$EP2"
)

# Warm-up (untimed): reads the whole database into the page cache.
log "warm-up dump"
RAW_SIZE=$("$PG_BIN/pg_dump" -Fc -Z0 | wc -c)
log "raw dump (-Fc -Z0): $RAW_SIZE bytes"

# Empties the copy's bucket as purge_bucket does the primary's.
purge_copy() {
  aws2 s3 rm "s3://$COPY_BUCKET" --recursive --quiet >/dev/null 2>&1 || true
  local key id
  while read -r key id; do
    if [ -z "$id" ] || [ "$key" = None ]; then continue; fi
    aws2 s3api abort-multipart-upload --bucket "$COPY_BUCKET" --key "$key" --upload-id "$id" >/dev/null 2>&1 || true
  done < <(aws2 s3api list-multipart-uploads --bucket "$COPY_BUCKET" \
             --query 'Uploads[].[Key,UploadId]' --output text 2>/dev/null || true)
}

# The sha256 field of the one manifest under bench/ at the endpoint $1 in bucket $2, or nothing.
manifest_sha() {
  local key
  key=$("$AWS" --endpoint-url "$1" s3api list-objects-v2 --bucket "$2" --prefix bench/ \
          --query "Contents[?ends_with(Key, '.manifest.json')].Key | [0]" --output text 2>/dev/null || true)
  [ -n "$key" ] && [ "$key" != None ] || return 0
  "$AWS" --endpoint-url "$1" s3 cp "s3://$2/$key" - --only-show-errors 2>/dev/null \
    | python3 -c 'import json, sys; print(json.load(sys.stdin).get("sha256", ""))' 2>/dev/null || true
}

# ---------------------------------------------------------------------------
# Measurements. Each run sets R_RC R_WALL R_RSS (KiB) R_WHO R_NOTE (bench/lib.sh).
# ---------------------------------------------------------------------------
declare -A LABEL=(
  [d1]="(d1) pgsidecar backup to one S3 destination"
  [d2]="(d2) pgsidecar backup to two S3 destinations (primary + copy)"
)
declare -A WALLS=() RSS=() TREE=() FAILED=() NOTE=() STORED=()

run_backup() { # key round
  local k=$1 id=$1.$2
  reset_r
  purge_bucket
  purge_copy
  if [ "$k" = d1 ]; then
    time_sidecar "$id" env "${SIDECAR_ENV[@]}" "$PGSIDECAR_BIN" backup
  else
    time_sidecar "$id" env "${SIDECAR_ENV[@]}" "${COPY_ENV[@]}" "$PGSIDECAR_BIN" backup
  fi
  [ "$R_RC" -eq 0 ] || R_NOTE="exit $R_RC: $(err_tail "$LOGS/$id.1.err")"
  note_leftovers
  # Untimed: each destination holds a backup, and d2's two manifests agree.
  if [ "$R_RC" -eq 0 ]; then
    local a b
    a=$(manifest_sha "$EP" "$BUCKET")
    if [ -z "$a" ]; then
      R_RC=1; R_NOTE="no manifest in the primary after the run"
    elif [ "$k" = d2 ]; then
      b=$(manifest_sha "$EP2" "$COPY_BUCKET")
      if [ "$a" != "$b" ]; then
        R_RC=1; R_NOTE="the copy's manifest sha256 (${b:-none}) differs from the primary's ($a)"
      fi
    fi
    read -r _ "STORED[$k]" < <(prefix_usage bench/)
  fi
}

record() { # key
  local k=$1
  if [ "$R_RC" -ne 0 ]; then
    FAILED[$k]=1
    NOTE[$k]=$R_NOTE
    log "  $k failed: $R_NOTE"
    return
  fi
  WALLS[$k]="${WALLS[$k]:-} $R_WALL"
  if [ "$R_RSS" -gt "${RSS[$k]:-0}" ]; then RSS[$k]=$R_RSS; fi
  if [ "$SC_TREE_RSS" -gt "${TREE[$k]:-0}" ]; then TREE[$k]=$SC_TREE_RSS; fi
  if [ -n "$R_NOTE" ]; then NOTE[$k]=$R_NOTE; fi
  log "  $k ${R_WALL}s, peak RSS $((R_RSS / 1024)) MiB ($R_WHO)"
}

SC_TREE_RSS=0
for r in $(seq 1 "$BENCH_ROUNDS"); do
  log "round $r/$BENCH_ROUNDS"
  if [ $((r % 2)) -eq 1 ]; then order="d1 d2"; else order="d2 d1"; fi
  for k in $order; do
    [ -z "${FAILED[$k]:-}" ] || continue   # a failed command is not retried
    run_backup "$k" "$r"
    record "$k"
  done
done
purge_bucket
purge_copy

# ---------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------
declare -A MED=()
for k in "${!WALLS[@]}"; do
  # shellcheck disable=SC2086
  MED[$k]=$(median ${WALLS[$k]})
done

# shellcheck disable=SC2034  # used through namerefs
HEAD=(command "median s" "vs (d1)" "MiB/s of raw dump" "peak RSS MiB" "runs s")
ROWS=()
for k in d1 d2; do
  if [ -n "${FAILED[$k]:-}" ] || [ -z "${MED[$k]:-}" ]; then
    ROWS+=("$(row "${LABEL[$k]}" failed - - - -)")
    continue
  fi
  v1=-
  [ -z "${MED[d1]:-}" ] || v1=$(ratio "${MED[$k]}" "${MED[d1]}")
  runs=${WALLS[$k]# }
  ROWS+=("$(row "${LABEL[$k]}" "${MED[$k]}" "$v1" "$(mibps "$RAW_SIZE" "${MED[$k]}")" "$(mib "${RSS[$k]}")" "$runs")")
done

bench_describe
INFO=(
  "machine: $(nproc) CPUs, $CPU_MODEL, $MEM_TOTAL RAM, Linux $(uname -r)"
  "PostgreSQL: server $PG_VERSION_STR, $("$PG_BIN/pg_dump" --version)"
  "pgsidecar: $PGSIDECAR_BIN ($SIDECAR_VERSION), repository at $GIT_REV"
  "database: $DB_SIZE_PRETTY ($DB_SIZE_BYTES bytes), ~$ORDER_ROWS rows in orders; BENCH_SIZE_GB=$BENCH_SIZE_GB; raw dump (-Fc -Z0) $(human "$RAW_SIZE"); stored in the primary $(human "${STORED[d1]:-${STORED[d2]:-}}")"
  "primary: s3://$BUCKET/bench on $BENCH_S3_SERVER at 127.0.0.1:$S3_PORT; copy \`offsite\` (d2 only): s3://$COPY_BUCKET/bench on $BENCH_COPY_S3_SERVER at 127.0.0.1:$COPY_PORT, a separate process"
  "work directory (cluster, S3 servers' files, TMPDIR): $WORK, on $(stat -f -c %T "$WORK")${BENCH_S3S_FS:+; s3s-fs binary: $BENCH_S3S_FS}"
  "rounds: $BENCH_ROUNDS, alternating the order (d1 d2, d2 d1, ...); both buckets emptied before every run; after each run (untimed) the primary holds a manifest and, for d2, the copy's manifest has the same sha256"
  "peak RSS: pgsidecar's own VmHWM (sampled); with its children (pg_dump; /usr/bin/time %M): d1 $(mib "${TREE[d1]:-0}") MiB, d2 $(mib "${TREE[d2]:-0}") MiB"
)
NOTES=()
for k in d1 d2; do
  [ -n "${NOTE[$k]:-}" ] && NOTES+=("$k: ${NOTE[$k]}")
done
SUMMARY="d2/d1 median wall time: -"
[ -z "${MED[d1]:-}" ] || [ -z "${MED[d2]:-}" ] || SUMMARY="d2/d1 median wall time: $(ratio "${MED[d2]}" "${MED[d1]}")"

STAMP=$(date -u +%Y-%m-%dT%H%M%SZ)
echo
echo "== pgsidecar destinations benchmark ($STAMP)"
print_text_table HEAD ROWS
echo
echo "$SUMMARY"
printf '%s\n' "${INFO[@]}"
if [ ${#NOTES[@]} -gt 0 ]; then
  echo
  echo "notes:"
  printf '  %s\n' "${NOTES[@]}"
fi

mkdir -p "$BENCH_RESULTS_DIR"
MD=$BENCH_RESULTS_DIR/destinations-$STAMP.md
{
  echo "# pgsidecar destinations benchmark, $STAMP"
  echo
  echo "Median wall time of $BENCH_ROUNDS rounds of \`pgsidecar backup\`, to the primary only (d1) and to"
  echo "the primary and one copy on a second S3 server (d2). Peak RSS is pgsidecar's own."
  echo
  print_md_table HEAD ROWS
  echo
  echo "$SUMMARY"
  echo
  md_setup_and_notes
} >"$MD"
bench_finish
