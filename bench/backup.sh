#!/usr/bin/env bash
# Backup benchmark: pgsidecar versus the usual shell pipelines, on one throwaway
# PostgreSQL 18 cluster and a local S3 server (moto, or s3s-fs). See bench/README.md.
#
#   cargo build --release && bench/backup.sh
#
# Knobs (environment): BENCH_SIZE_GB, BENCH_ROUNDS, BENCH_ZSTD_LEVEL, BENCH_LEVELS,
# BENCH_CODECS, BENCH_DATA_DIR, BENCH_COMMANDS, BENCH_RESULTS_DIR, BENCH_TMP_PARENT,
# BENCH_PG_BIN, PGSIDECAR_BIN.
set -euo pipefail
export LC_ALL=C

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(dirname "$BENCH_DIR")
# shellcheck source=bench/lib.sh
. "$BENCH_DIR/lib.sh"

BENCH_ZSTD_LEVEL=${BENCH_ZSTD_LEVEL:-3}
BENCH_LEVELS=${BENCH_LEVELS:-}
BENCH_CODECS=${BENCH_CODECS:-}
BENCH_COMMANDS=${BENCH_COMMANDS:-a b c d e}

# ---------------------------------------------------------------------------
# Input checks
# ---------------------------------------------------------------------------
bench_check_knobs
valid_level() { [[ $1 =~ ^[0-9]+$ ]] && [ "$1" -ge 1 ] && [ "$1" -le 19 ]; }
# The codecs pgsidecar accepts (src/config/validate.rs): none, zstd 1..19, gzip 1..9.
valid_codec() {
  case $1 in
    none) ;;
    zstd:*) valid_level "${1#zstd:}" ;;
    gzip:*) [[ ${1#gzip:} =~ ^[1-9]$ ]] ;;
    *) return 1 ;;
  esac
}
valid_level "$BENCH_ZSTD_LEVEL" || die "BENCH_ZSTD_LEVEL must be 1..19"
for l in $BENCH_LEVELS; do valid_level "$l" || die "BENCH_LEVELS: '$l' is not a level 1..19"; done
for codec in $BENCH_CODECS; do
  valid_codec "$codec" || die "BENCH_CODECS: '$codec' is not none, zstd:1..19 or gzip:1..9"
done
for c in $BENCH_COMMANDS; do [[ $c =~ ^[a-e]$ ]] || die "BENCH_COMMANDS: '$c' is not one of a b c d e"; done
# BENCH_LEVELS is shorthand for zstd codecs; a codec named twice runs once.
CODECS=()
for codec in $BENCH_CODECS $(for l in $BENCH_LEVELS; do echo "zstd:$l"; done); do
  case $codec in *:*) codec=${codec%%:*}:$((10#${codec#*:})) ;; esac
  case " ${CODECS[*]} " in *" $codec "*) ;; *) CODECS+=("$codec") ;; esac
done
case " ${CODECS[*]} " in
  *" gzip:"*) command -v gzip >/dev/null || die "gzip not installed" ;;
esac

# ---------------------------------------------------------------------------
# Setup: tools, work area, S3 server, PostgreSQL 18 with the `bench` database (bench/lib.sh)
# ---------------------------------------------------------------------------
bench_tools
bench_workdir pgsidecar-bench
FILE_DIR=$WORK/file        # dump file of command (e)
mkdir -p "$FILE_DIR"
bench_s3
bench_postgres
bench_dataset
sidecar_env

# Warm-up (untimed): reads the whole database into the page cache and gives the raw dump size.
log "warm-up dump"
RAW_SIZE=$("$PG_BIN/pg_dump" -Fc -Z0 | wc -c)
log "raw dump (-Fc -Z0): $RAW_SIZE bytes"

# ---------------------------------------------------------------------------
# Measurements. Each run_* sets R_RC R_WALL R_RSS (KiB) R_WHO R_DISK R_BYTES R_NOTE.
# ---------------------------------------------------------------------------
# The shell tool of a codec, single-threaded like pgsidecar's compressor: COMP (command and
# arguments) and COMP_NAME; DECOMP reads it back.
codec_tools() {
  case $1 in
    none)   COMP=(cat); COMP_NAME="cat"; DECOMP=(cat); CODEC_DESC=uncompressed ;;
    zstd:*) COMP=(zstd -q -T1 "-${1#zstd:}"); COMP_NAME=zstd; DECOMP=(zstd -dcq); CODEC_DESC=zstd-compressed ;;
    gzip:*) COMP=(gzip "-${1#gzip:}"); COMP_NAME=gzip; DECOMP=(gzip -dc); CODEC_DESC=gzip-compressed ;;
  esac
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

# (b) pg_dump -Fc -Z0 | compressor > /dev/null; with a third argument the output is counted
# by wc -c.
run_b() {
  local id=$1 codec=$2 count=${3:-}
  reset_r
  codec_tools "$codec"
  local t0=$EPOCHREALTIME
  if [ -z "$count" ]; then
    $TIME -f %M -o "$LOGS/$id.1.rss" "$PG_BIN/pg_dump" -Fc -Z0 2>"$LOGS/$id.1.err" \
      | $TIME -f %M -o "$LOGS/$id.2.rss" "${COMP[@]}" >/dev/null 2>"$LOGS/$id.2.err" || R_RC=$?
  else
    $TIME -f %M -o "$LOGS/$id.1.rss" "$PG_BIN/pg_dump" -Fc -Z0 2>"$LOGS/$id.1.err" \
      | $TIME -f %M -o "$LOGS/$id.2.rss" "${COMP[@]}" 2>"$LOGS/$id.2.err" \
      | wc -c >"$LOGS/$id.size" || R_RC=$?
    R_BYTES=$(tr -d ' ' <"$LOGS/$id.size")
  fi
  R_WALL=$(elapsed "$t0" "$EPOCHREALTIME")
  max_rss "$(rss_of "$LOGS/$id.1.rss")" pg_dump "$(rss_of "$LOGS/$id.2.rss")" "$COMP_NAME"
  [ "$R_RC" -eq 0 ] || R_NOTE="$(err_tail "$LOGS/$id.1.err") $(err_tail "$LOGS/$id.2.err")"
}

# Checks that the largest object under $1 is a custom-format dump compressed with codec $2.
# Prints "ok <decompressed bytes>" or an error message.
verify_upload() {
  local key res
  codec_tools "$2"
  key=$(largest_key "$1")
  [ -n "$key" ] || { echo "no object to verify"; return; }
  res=$( { aws_ s3 cp "s3://$BUCKET/$key" - 2>/dev/null | "${DECOMP[@]}" 2>/dev/null \
           | { m=$(dd bs=5 count=1 status=none); n=$(wc -c); echo "$m $((n + ${#m}))"; }; } || true)
  case $res in
    "PGDMP "*) echo "ok ${res#PGDMP }" ;;
    *) echo "object $key is not a $CODEC_DESC pg_dump archive" ;;
  esac
}

# (c) pgsidecar backup to the S3 server, configured by environment only. The first successful run of
# each codec is checked by reading the upload back.
declare -A VERIFIED=()
run_c() {
  local id=$1 codec=$2
  reset_r
  if [ ! -x "$PGSIDECAR_BIN" ]; then
    R_RC=127; R_NOTE="binary not found: $PGSIDECAR_BIN (cargo build --release)"; return
  fi
  local comp_env=(PGSIDECAR_COMPRESSION__ALGORITHM="${codec%%:*}") unset_env=()
  if [ "$codec" = none ]; then
    # A level passed through from the caller's environment would mean nothing here.
    unset_env=(-u PGSIDECAR_COMPRESSION__LEVEL)
  else
    comp_env+=(PGSIDECAR_COMPRESSION__LEVEL="${codec#*:}")
  fi
  time_sidecar "$id" env "${unset_env[@]}" "${SIDECAR_ENV[@]}" "${comp_env[@]}" \
    "$PGSIDECAR_BIN" backup

  local n bytes
  read -r n bytes < <(prefix_usage bench/)
  R_BYTES=$bytes
  if [ "$R_RC" -ne 0 ]; then
    R_NOTE="exit $R_RC: $(err_tail "$LOGS/$id.1.err")"
  elif [ "$n" -eq 0 ]; then
    R_RC=1; R_NOTE="exited 0 but uploaded nothing under s3://$BUCKET/bench/"
  elif [ -z "${VERIFIED[$codec]:-}" ]; then
    local v
    v=$(verify_upload bench/ "$codec")
    case $v in
      "ok "*) VERIFIED[$codec]=${v#ok } ;;
      *) R_RC=1; R_NOTE="upload check failed: $v" ;;
    esac
  fi
  note_leftovers
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
MAIN_CODEC=zstd:$((10#$L))
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

run_cmd() { # key round codec; keys of the codec runs are b@<codec> and c@<codec>
  local k=$1 r=$2 codec=$3 cmd=${1%%@*}
  case $cmd in
    a) run_a "$k.$r" ;;
    b) if [ "$k" = b ]; then run_b "$k.$r" "$codec"; else run_b "$k.$r" "$codec" count; fi ;;
    c) run_c "$k.$r" "$codec"
       if [ "$SC_DF_GROWTH" -gt "$SC_DF_MAX" ]; then SC_DF_MAX=$SC_DF_GROWTH; fi
       if [ "$SC_TREE_RSS" -gt "$SC_TREE_MAX" ]; then SC_TREE_MAX=$SC_TREE_RSS; fi ;;
    d) run_d "$k.$r" "$L" ;;
    e) run_e "$k.$r" ;;
  esac
  record "$k"
}

for r in $(seq 1 "$BENCH_ROUNDS"); do
  log "round $r/$BENCH_ROUNDS"
  for c in $BENCH_COMMANDS; do
    [ -z "${FAILED[$c]:-}" ] || continue   # a failed command is not retried
    run_cmd "$c" "$r" "$MAIN_CODEC"
  done
done

if [ ${#CODECS[@]} -gt 0 ]; then
  for r in $(seq 1 "$BENCH_ROUNDS"); do
    log "codecs round $r/$BENCH_ROUNDS"
    for codec in "${CODECS[@]}"; do
      for c in b c; do
        # (b') always runs; (c') only if (c) is in BENCH_COMMANDS and did not fail above.
        if [ "$c" = c ]; then
          case " $BENCH_COMMANDS " in *" c "*) ;; *) continue ;; esac
          if [ -n "${FAILED[c]:-}" ]; then FAILED[c@$codec]=1; continue; fi
        fi
        if [ -n "${FAILED[$c@$codec]:-}" ]; then continue; fi
        run_cmd "$c@$codec" "$r" "$codec"
      done
    done
  done
fi

# ---------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------
declare -A MED=()
for k in "${!WALLS[@]}"; do
  # shellcheck disable=SC2086
  MED[$k]=$(median ${WALLS[$k]})
done

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

# Size against time per codec: (b') is the codec's own tool behind pg_dump, (c') pgsidecar.
# shellcheck disable=SC2034
CODEC_HEAD=(codec "(b') median s" "(b') MiB/s in" "(b') bytes" "(b') ratio" "(c') median s" "(c') MiB/s in" "(c') bytes" "(c') peak RSS MiB")
CODEC_ROWS=()
for codec in "${CODECS[@]}"; do
  cells=("$codec")
  for c in b c; do
    k="$c@$codec"
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
  CODEC_ROWS+=("$(row "${cells[@]}")")
done
CODEC_TOOLS="none: cat; zstd:N: zstd -q -T1 -N; gzip:N: gzip -N"
CODECS_CHECKED=""
for codec in "${CODECS[@]}"; do
  [ -z "${VERIFIED[$codec]:-}" ] || CODECS_CHECKED="${CODECS_CHECKED:+$CODECS_CHECKED, }$codec ${VERIFIED[$codec]}"
done

bench_describe
ZSTD_SIZE=${BYTES[d]:-}
[ -n "$ZSTD_SIZE" ] || ZSTD_SIZE=${BYTES[b@$MAIN_CODEC]:-}
SIDECAR_VERIFIED=""
[ -z "${VERIFIED[$MAIN_CODEC]:-}" ] || [ -z "${BYTES[c]:-}" ] \
  || SIDECAR_VERIFIED="largest object decompresses to a PGDMP archive of ${VERIFIED[$MAIN_CODEC]} bytes"
TOOL_VERSIONS="zstd $(zstd --version | grep -o 'v[0-9][0-9.]*' | head -n 1)"
case " ${CODECS[*]} " in
  *" gzip:"*) TOOL_VERSIONS="$TOOL_VERSIONS, $(gzip --version | head -n 1)" ;;
esac
INFO=(
  "machine: $(nproc) CPUs, $CPU_MODEL, $MEM_TOTAL RAM, Linux $(uname -r)"
  "PostgreSQL: server $PG_VERSION_STR, $("$PG_BIN/pg_dump" --version); $TOOL_VERSIONS"
  "pgsidecar: $PGSIDECAR_BIN ($SIDECAR_VERSION), repository at $GIT_REV"
  "database: $DB_SIZE_PRETTY ($DB_SIZE_BYTES bytes), ~$ORDER_ROWS rows in orders; BENCH_SIZE_GB=$BENCH_SIZE_GB"
  "raw dump (pg_dump -Fc -Z0): $(human "$RAW_SIZE")"
  "compressed, zstd -$L -T1 (from d): $(human "$ZSTD_SIZE")"
  "pg_dump -Fc default compression (from e): $(human "${DISK[e]:-}")"
  "uploaded by pgsidecar (from c): $(human "${BYTES[c]:-}")${SIDECAR_VERIFIED:+; $SIDECAR_VERIFIED}"
  "rounds: $BENCH_ROUNDS (round robin: $BENCH_COMMANDS), zstd level $L, S3: $BENCH_S3_SERVER on 127.0.0.1"
)
if [ -n "${MED[c]:-}" ] && [ -z "${FAILED[c]:-}" ]; then
  INFO+=("pgsidecar TMPDIR: peak $(human "${DISK[c]:-0}") written; peak growth of used space on its file system during a run: $(human "$SC_DF_MAX") (includes other activity)"
         "pgsidecar peak RSS incl. its children such as pg_dump (/usr/bin/time %M): $(mib "$SC_TREE_MAX") MiB")
fi
if [ -n "$CODECS_CHECKED" ]; then
  INFO+=("pgsidecar's upload read back per codec (bytes of the PGDMP archive it decompresses to): $CODECS_CHECKED")
fi
NOTES=()
for k in $BENCH_COMMANDS $(for codec in "${CODECS[@]}"; do echo "b@$codec c@$codec"; done); do
  [ -n "${NOTE[$k]:-}" ] && NOTES+=("$k: ${NOTE[$k]}")
done

echo
echo "== pgsidecar backup benchmark ($(date '+%Y-%m-%d %H:%M'))"
print_text_table HEAD ROWS
if [ ${#CODEC_ROWS[@]} -gt 0 ]; then
  echo
  echo "== codecs, size against time (b': pg_dump -Fc -Z0 | tool | wc -c; c': pgsidecar backup)"
  echo "   tools: $CODEC_TOOLS; MiB/s of raw dump; ratio = raw dump / output"
  print_text_table CODEC_HEAD CODEC_ROWS
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
  if [ ${#CODEC_ROWS[@]} -gt 0 ]; then
    echo
    echo "## Codecs"
    echo
    echo "(b') \`pg_dump -Fc -Z0 | tool | wc -c\` with the tool of the codec ($CODEC_TOOLS);"
    echo "(c') \`pgsidecar backup\` with \`PGSIDECAR_COMPRESSION__ALGORITHM\` and \`__LEVEL\`."
    echo "MiB/s of raw dump; ratio = raw dump / output; (c') bytes include the manifest."
    echo
    print_md_table CODEC_HEAD CODEC_ROWS
  fi
  echo
  md_setup_and_notes
} >"$MD"
bench_finish
