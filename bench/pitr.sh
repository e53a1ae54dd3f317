#!/usr/bin/env bash
# Point-in-time recovery benchmark, on the cluster and data of bench/backup.sh and a local S3
# server (bench/lib.sh). Prints, and writes to bench/results/:
#   (p1) `pg_basebackup -D - -Ft -X none --checkpoint=fast | zstd -3 > /dev/null` versus
#   (p2) `pgsidecar pitr base-backup` to S3 and
#   (p3) `pg_basebackup … | zstd -3 | aws s3 cp -` (the same upload by hand): median wall
#        time, ratio, peak RSS;
#   archive lag under a pgbench write load with `pgsidecar run` archiving: WAL rate, the time
#        from a segment's end on the server to its object in storage (median, max), the
#        daemon's peak RSS, the size of a stored partial segment;
#   restore: `pgsidecar pitr restore --time latest` (download, check, unpack, stage) and the
#        replay until the server promoted, against unpacking the same base backup from a local
#        file (`zstd -dc | tar -x`).
#
#   cargo build --release && bench/pitr.sh
#
# Knobs (environment): BENCH_SIZE_GB, BENCH_ROUNDS, BENCH_PITR_SECONDS (write load, 60),
# BENCH_PITR_ONLY (`base`: the base backup rows alone), BENCH_S3_SERVER, BENCH_S3S_FS,
# BENCH_DATA_DIR, BENCH_RESULTS_DIR, BENCH_TMP_PARENT, BENCH_PG_BIN, PGSIDECAR_BIN.
#
# s3s-fs serves the base backup rows only (BENCH_PITR_ONLY=base): it names a multipart
# upload's metadata file after the whole key in base64, and a WAL segment's key (about 130
# characters with this bucket) makes that longer than a file name may be, so it answers 500.
set -euo pipefail
export LC_ALL=C

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(dirname "$BENCH_DIR")
# shellcheck source=bench/lib.sh
. "$BENCH_DIR/lib.sh"

BENCH_PITR_SECONDS=${BENCH_PITR_SECONDS:-60}
BENCH_PITR_ONLY=${BENCH_PITR_ONLY:-}
case $BENCH_PITR_ONLY in
  ""|base) ;;
  *) die "BENCH_PITR_ONLY must be empty or base, not '$BENCH_PITR_ONLY'" ;;
esac
[ "$BENCH_S3_SERVER" != s3s-fs ] || [ "$BENCH_PITR_ONLY" = base ] \
  || die "with BENCH_S3_SERVER=s3s-fs set BENCH_PITR_ONLY=base: s3s-fs refuses multipart uploads of WAL segments' keys (see the top of bench/pitr.sh)"
[[ $BENCH_PITR_SECONDS =~ ^[1-9][0-9]*$ ]] || die "BENCH_PITR_SECONDS must be a positive integer"
bench_check_knobs
[ -x "$PGSIDECAR_BIN" ] || die "binary not found: $PGSIDECAR_BIN (cargo build --release)"

bench_tools
for t in pg_basebackup pg_receivewal pgbench; do [ -x "$PG_BIN/$t" ] || die "$PG_BIN/$t not found"; done
bench_workdir pgsidecar-bench-pitr
bench_s3
bench_postgres
bench_dataset
sidecar_env
SIDECAR_ENV+=(
  PGSIDECAR_PITR__SPOOL="$WORK/spool"
  PGSIDECAR_PITR__ALLOW_UNBOUNDED_WAL=true
  RUST_LOG=info
)
DAEMON_PID=""
stop_daemon() {
  if [ -n "$DAEMON_PID" ]; then
    kill "$DAEMON_PID" 2>/dev/null || true
    wait "$DAEMON_PID" 2>/dev/null || true
    DAEMON_PID=""
  fi
  # The slot would keep WAL on a kept cluster (BENCH_DATA_DIR).
  sql -d postgres -c "SELECT pg_drop_replication_slot('pgsidecar') FROM pg_replication_slots WHERE slot_name = 'pgsidecar'" >/dev/null 2>&1 || true
}
BENCH_CLEANUP_HOOK=stop_daemon

# ---------------------------------------------------------------------------
# (p1) against (p2): base backups
# ---------------------------------------------------------------------------
P1=() P2=() P3=() P1_RSS=0 P2_RSS=0 P3_RSS=0
for round in $(seq 1 "$BENCH_ROUNDS"); do
  sql -d postgres -c CHECKPOINT >/dev/null
  t0=$EPOCHREALTIME
  $TIME -f %M -o "$LOGS/p1.$round.rss" bash -o pipefail -c \
    "'$PG_BIN/pg_basebackup' -D - -Ft -X none --checkpoint=fast --no-manifest -w | zstd -3 -q >/dev/null" \
    2>"$LOGS/p1.$round.err" || die "pg_basebackup | zstd failed: $(err_tail "$LOGS/p1.$round.err")"
  P1+=("$(elapsed "$t0" "$EPOCHREALTIME")")
  r=$(rss_of "$LOGS/p1.$round.rss"); [ "$r" -gt "$P1_RSS" ] && P1_RSS=$r
  log "p1 round $round: ${P1[-1]} s"

  sql -d postgres -c CHECKPOINT >/dev/null
  reset_r
  time_sidecar "p2.$round" env "${SIDECAR_ENV[@]}" "$PGSIDECAR_BIN" pitr base-backup
  [ "$R_RC" -eq 0 ] || die "pgsidecar pitr base-backup failed: $(err_tail "$LOGS/p2.$round.1.err")"
  P2+=("$R_WALL")
  [ "$R_RSS" -gt "$P2_RSS" ] && P2_RSS=$R_RSS
  log "p2 round $round: $R_WALL s"

  sql -d postgres -c CHECKPOINT >/dev/null
  t0=$EPOCHREALTIME
  $TIME -f %M -o "$LOGS/p3.$round.rss" bash -o pipefail -c \
    "'$PG_BIN/pg_basebackup' -D - -Ft -X none --checkpoint=fast --no-manifest -w | zstd -3 -q | '$AWS' --endpoint-url '$EP' s3 cp - 's3://$BUCKET/by-hand/base.$round.tar.zst' --only-show-errors" \
    2>"$LOGS/p3.$round.err" || die "pg_basebackup | zstd | aws s3 cp failed: $(err_tail "$LOGS/p3.$round.err")"
  P3+=("$(elapsed "$t0" "$EPOCHREALTIME")")
  r=$(rss_of "$LOGS/p3.$round.rss"); [ "$r" -gt "$P3_RSS" ] && P3_RSS=$r
  log "p3 round $round: ${P3[-1]} s"
done
BASE_KEY=$(aws_ s3api list-objects-v2 --bucket "$BUCKET" --prefix bench/~pitr/ --query 'Contents[].Key' --output text | tr '\t' '\n' | grep '\.tar\.zst$' | sort | tail -n 1)
BASE_BYTES=$(aws_ s3api head-object --bucket "$BUCKET" --key "$BASE_KEY" --query ContentLength --output text)
CLUSTER_BYTES=$(sql -d postgres -c "SELECT sum(pg_database_size(oid)) FROM pg_database")

# The report's head: the setup and the base backup rows (sets MD, the report's path).
base_report() {
  M1=$(median "${P1[@]}") M2=$(median "${P2[@]}") M3=$(median "${P3[@]}")
  bench_describe
  echo "# PITR benchmark, $STAMP"
  echo
  echo "Cluster: $(human "$CLUSTER_BYTES"); base backup stored: $(human "$BASE_BYTES"); rounds: $BENCH_ROUNDS; S3: $BENCH_S3_SERVER${BENCH_S3S_FS:+ ($BENCH_S3S_FS)}; work directory (cluster, S3 server's files, spool): $WORK, on $(stat -f -c %T "$WORK"); pgsidecar at $GIT_REV"
  echo
  echo "| command | median s | vs (p1) | MiB/s of cluster | peak RSS |"
  echo "| --- | ---: | ---: | ---: | ---: |"
  echo "| (p1) \`pg_basebackup -D - -Ft -X none \\| zstd -3 > /dev/null\` | $M1 | 1.00x | $(mibps "$CLUSTER_BYTES" "$M1") | $(mib "$P1_RSS") MiB |"
  echo "| (p2) \`pgsidecar pitr base-backup\` (zstd 3, to S3) | $M2 | $(ratio "$M2" "$M1") | $(mibps "$CLUSTER_BYTES" "$M2") | $(mib "$P2_RSS") MiB |"
  echo "| (p3) \`pg_basebackup … \| zstd -3 \| aws s3 cp -\` | $M3 | $(ratio "$M3" "$M1") | $(mibps "$CLUSTER_BYTES" "$M3") | $(mib "$P3_RSS") MiB |"
  echo
  echo "Runs: p1 ${P1[*]} s; p2 ${P2[*]} s; p3 ${P3[*]} s"
  echo
}
STAMP=$(date -u +%Y-%m-%dT%H%M%SZ)
MD=$BENCH_RESULTS_DIR/pitr-$STAMP.md
mkdir -p "$BENCH_RESULTS_DIR"
if [ "$BENCH_PITR_ONLY" = base ]; then
  base_report | tee "$MD"
  echo "results written to $MD"
  exit 0
fi

# ---------------------------------------------------------------------------
# Archive lag under a write load
# ---------------------------------------------------------------------------
sql -d postgres -c "ALTER SYSTEM SET max_slot_wal_keep_size = '8GB'" -c "SELECT pg_reload_conf()" >/dev/null
"$PG_BIN/pgbench" -i -q -s 10 bench >"$LOGS/pgbench-init.log" 2>&1 || die "pgbench -i failed"
env "${SIDECAR_ENV[@]}" PGSIDECAR_PITR__ENABLED=true "$PGSIDECAR_BIN" run >"$LOGS/daemon.out" 2>"$LOGS/daemon.err" </dev/null &
DAEMON_PID=$!
for _ in $(seq 1 600); do
  grep -q "archiving WAL" "$LOGS/daemon.err" && break
  sleep 0.2
done
grep -q "archiving WAL" "$LOGS/daemon.err" || die "the daemon did not start archiving: $(err_tail "$LOGS/daemon.err")"
# Every segment's end: the first time the server is seen writing the next one.
: >"$LOGS/switches"
(
  last=""
  while kill -0 "$DAEMON_PID" 2>/dev/null; do
    seg=$(sql -d postgres -c "SELECT pg_walfile_name(pg_current_wal_insert_lsn())" 2>/dev/null || true)
    if [ -n "$seg" ] && [ "$seg" != "$last" ]; then
      printf '%s %s\n' "$EPOCHREALTIME" "$seg" >>"$LOGS/switches"
      last=$seg
    fi
    sleep 0.1
  done
) &
SAMPLER=$!
BG_PIDS+=("$SAMPLER")
lsn0=$(sql -d postgres -c "SELECT pg_current_wal_lsn()")
"$PG_BIN/pgbench" -c 4 -j 2 -T "$BENCH_PITR_SECONDS" -n bench >"$LOGS/pgbench.log" 2>&1 || die "pgbench failed"
WAL_BYTES=$(sql -d postgres -c "SELECT pg_current_wal_lsn() - '$lsn0'::pg_lsn")
LAST_SEG=$(sql -d postgres -c "SELECT pg_walfile_name(pg_switch_wal())")
for _ in $(seq 1 600); do
  grep -q "segment=\"$LAST_SEG\"" "$LOGS/daemon.err" && break
  sleep 0.2
done
HWM=$(awk '/^VmHWM:/ { print $2 }' "/proc/$DAEMON_PID/status")
# Idle: one partial upload of the segment being written.
sql -d postgres -c "SELECT txid_current()" >/dev/null
sleep 35
# shellcheck disable=SC2016  # a JMESPath literal, not shell
PARTIAL=$(aws_ s3api list-objects-v2 --bucket "$BUCKET" --prefix bench/~pitr/ --query 'Contents[?contains(Key, `.partial.`)].[Size]' --output text | tail -n 1)
# What the archive stores of that WAL: complete segments, compressed.
# shellcheck disable=SC2016  # a JMESPath literal, not shell
read -r WAL_OBJECTS WAL_STORED <<<"$(aws_ s3api list-objects-v2 --bucket "$BUCKET" --prefix bench/~pitr/ \
  --query 'Contents[?contains(Key, `/wal/`) && !contains(Key, `.partial.`) && !contains(Key, `.history`)].Size' --output text |
  tr '\t' '\n' | awk 'NF { n++; s += $1 } END { print n + 0, s + 0 }')"
stop_daemon
kill "$SAMPLER" 2>/dev/null || true
# Lag of segment N: its "archived" log time minus the first sighting of segment N+1.
LAGS=$(python3 - "$LOGS/switches" "$LOGS/daemon.err" <<'PY'
import re, sys, datetime
seen = {}
for line in open(sys.argv[1]):
    t, seg = line.split()
    seen.setdefault(seg, float(t))
def nxt(seg):
    n = int(seg[16:], 16) + 1
    return seg[:16] + "%08X" % n
lags = []
for line in open(sys.argv[2]):
    m = re.match(r'(\S+Z) .*archived WAL segment segment="([0-9A-F]{24})"', line)
    if not m:
        continue
    at = datetime.datetime.fromisoformat(m.group(1).replace("Z", "+00:00")).timestamp()
    end = seen.get(nxt(m.group(2)))
    if end is not None and at >= end - 1:
        lags.append(max(at - end, 0.0))
lags.sort()
if lags:
    print("%d %.2f %.2f" % (len(lags), lags[len(lags) // 2], lags[-1]))
else:
    print("0 - -")
PY
)
read -r LAG_N LAG_MED LAG_MAX <<<"$LAGS"

# ---------------------------------------------------------------------------
# Restore: prepare, then replay
# ---------------------------------------------------------------------------
RESTORE_ROOT=$WORK/restored
mkdir -p "$RESTORE_ROOT"
chown "$PG_OWNER" "$RESTORE_ROOT"
OWNER=$(id -u "$PG_OWNER"):$(id -g "$PG_OWNER")
reset_r
time_sidecar restore env "${SIDECAR_ENV[@]}" "$PGSIDECAR_BIN" pitr restore --time latest --to "$RESTORE_ROOT/data" --owner "$OWNER"
[ "$R_RC" -eq 0 ] || die "pitr restore failed: $(err_tail "$LOGS/restore.1.err")"
PREPARE_S=$R_WALL PREPARE_RSS=$R_RSS
STAGED=$(find "$RESTORE_ROOT/data.wal" -type f | wc -l)
RPORT=$((PG_PORT + 1))
t0=$EPOCHREALTIME
as_pg "$PG_BIN/pg_ctl" -D "$RESTORE_ROOT/data" -l "$RESTORE_ROOT/log" -w -t 600 -o "\
 -c listen_addresses=127.0.0.1 -c port=$RPORT -c unix_socket_directories=$RESTORE_ROOT" start >/dev/null \
  || die "the restored server did not start: $(tail -n 5 "$RESTORE_ROOT/log")"
until [ "$(sql -h 127.0.0.1 -p "$RPORT" -d postgres -c 'SELECT pg_is_in_recovery()' 2>/dev/null)" = f ]; do sleep 0.1; done
REPLAY_S=$(elapsed "$t0" "$EPOCHREALTIME")
RESTORED_ROWS=$(sql -h 127.0.0.1 -p "$RPORT" -d bench -c "SELECT count(*) FROM pgbench_history")
SOURCE_ROWS=$(sql -d bench -c "SELECT count(*) FROM pgbench_history")
as_pg "$PG_BIN/pg_ctl" -D "$RESTORE_ROOT/data" -m fast -w stop >/dev/null
# The same files from a local copy: the base backup unpacked, the staged WAL copied.
aws_ s3 cp "s3://$BUCKET/$BASE_KEY" "$WORK/base.tar.zst" --only-show-errors
cp -r "$RESTORE_ROOT/data.wal" "$WORK/wal-copy"
mkdir -p "$WORK/local"
sync
t0=$EPOCHREALTIME
zstd -dcq "$WORK/base.tar.zst" | tar -x -C "$WORK/local"
cp -r "$WORK/wal-copy" "$WORK/local.wal"
LOCAL_S=$(elapsed "$t0" "$EPOCHREALTIME")
rm -rf "$WORK/local" "$WORK/local.wal" "$WORK/wal-copy" "$WORK/base.tar.zst" "$RESTORE_ROOT"

# A point-in-time drill of the newest moment: restore, start, verify, remove.
DRILL_DIR=$WORK/drills
mkdir -p "$DRILL_DIR"
chown "$PG_OWNER" "$DRILL_DIR"
reset_r
time_sidecar drill env "${SIDECAR_ENV[@]}" PGSIDECAR_PITR__DRILL__DIR="$DRILL_DIR" \
  PGSIDECAR_PITR__DRILL__QUERY="SELECT count(*) > 0 FROM pgbench_accounts" "$PGSIDECAR_BIN" pitr drill --time newest
[ "$R_RC" -eq 0 ] || die "pitr drill failed: $(tail -n 3 "$LOGS/drill.1.out") $(err_tail "$LOGS/drill.1.err")"
DRILL_S=$R_WALL DRILL_RSS=$R_RSS
DRILL_RTO=$(grep -o 'checked in [0-9.]*s' "$LOGS/drill.1.out" | grep -o '[0-9.]*' | head -n 1)

# ---------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------
{
  base_report
  echo "Archive under \`pgbench -c 4 -T $BENCH_PITR_SECONDS\`: WAL $(human "$WAL_BYTES") ($(mibps "$WAL_BYTES" "$BENCH_PITR_SECONDS") MiB/s); segment end to stored: median $LAG_MED s, max $LAG_MAX s over $LAG_N segments; daemon peak RSS $(mib "${HWM:-0}") MiB; one stored partial segment (idle): ${PARTIAL:-?} bytes"
  echo
  echo "WAL stored: $WAL_OBJECTS complete segments in $(human "$WAL_STORED"), $(python3 -c "print(f'{$WAL_STORED / ($WAL_OBJECTS * 16777216):.3f}')") of their 16 MiB each; a day at this rate: $(python3 -c "print(f'{$WAL_STORED / ($WAL_OBJECTS * 16777216) * $WAL_BYTES / $BENCH_PITR_SECONDS * 86400 / 2**30:.1f}')") GiB stored"
  echo "Drill: \`pitr drill --time newest\` RTO $DRILL_RTO s (restore to a promoted, checked server), $DRILL_S s wall (peak RSS $(mib "$DRILL_RSS") MiB; restore, replay, verify, stop, remove)"
  echo "Restore: \`pitr restore --time latest\` $PREPARE_S s (peak RSS $(mib "$PREPARE_RSS") MiB, $STAGED WAL files staged), replay until promoted $REPLAY_S s; the same base backup unpacked from a local file and the staged WAL copied locally $LOCAL_S s; pgbench_history rows restored $RESTORED_ROWS of $SOURCE_ROWS"
} | tee "$MD"
[ "$RESTORED_ROWS" = "$SOURCE_ROWS" ] || die "the restored cluster lacks rows"
echo
echo "results written to $MD"
