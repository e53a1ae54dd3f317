# shellcheck shell=bash
# Compose, end to end, as the README tells a user (sourced by scripts/e2e.sh after lib.sh).
# Every `docker` command below is the README's or compose.yml's own wherever the README has it;
# the only difference from a user's machine is compose.override.yml, which swaps the `db` and
# `s3` images for stand-ins built here.

# psql in the db container, over its local socket, as the application's user.
app_sql() { docker compose exec -T db psql -X -q -A -t -v ON_ERROR_STOP=1 -U app "$@"; }
rows_are() { [ "$(app_sql -d "$1" -c "select count(*) from $2")" = "$3" ]; }
# Complete backups in a `list --json` on stdin.
count_listed() { python3 -c 'import json, sys; print(len(json.load(sys.stdin)))'; }
backups() { docker exec sidecar list --json 2>/dev/null | count_listed; }
backups_at_least() { [ "$(backups)" -ge "$1" ]; }
# Files of the stand-in S3 store: s3s-fs keeps `.upload-<id>.json` per open multipart upload
# and `.upload_id-<id>.part-<n>` per stored part.
store_files() { docker compose exec -T s3 ls -A /data; }
part_stored() { store_files | grep -q '^\.upload_id-.*\.part-1$'; }
no_open_upload() { ! store_files | grep -q '^\.upload'; }
# Answers a command's confirmation prompt through a terminal, as a person at `docker exec -it`.
typed() { local answer=$1; shift; (sleep 6; printf '%s\n' "$answer") | script -qefc "$*" /dev/null; }
output_has() { local text=$1; shift; "$@" 2>&1 | contains "$text"; }
readme_has() { grep -qF -- "$1" "$E2E_REPO/README.md"; }
healthy() { [ "$(docker inspect -f '{{.State.Health.Status}}' "$1")" = healthy ]; }

compose_e2e() {
  local home="$E2E_TMP/user"
  user_checkout "$home/pgsidecar" || { fail "compose: user checkout" "copy failed"; return; }
  cp "$E2E_REPO/tests/e2e/compose.override.yml" "$home/pgsidecar/compose.override.yml"
  cd "$home" || return

  # The quick start, verbatim but for the clone (the checkout is already here).
  local quick; quick=$(readme_block "## Quick start" | sed -n '1,/docker compose --profile local-s3 up -d/p')
  check "the README's quick start ends with compose up" contains "docker compose --profile local-s3 up -d" <<<"$quick"
  quick=${quick/git clone https:\/\/github.com\/pgsidecar\/pgsidecar && /}
  log "the quick start:"; printf '    %s\n' "$quick" >&2
  local up=$SECONDS
  if ! bash -euc "$quick" >"$E2E_TMP/quick-start.log" 2>&1; then
    fail "compose: quick start" "$(tail -n 20 "$E2E_TMP/quick-start.log")"
    return
  fi
  cd "$home/pgsidecar" || return
  check "the catch-up backup is listed within a minute of up" wait_for $((60 - (SECONDS - up))) backups_at_least 1
  log "first backup listed $((SECONDS - up)) s after up"

  # What the quick start shows next, verbatim (the restore answers its prompt).
  check "docker compose exec sidecar list" output_has "app/app/" docker compose exec sidecar list
  check "docker compose exec sidecar verify latest" \
    output_has "sha256 matches the manifest" docker compose exec sidecar verify latest
  check "docker compose exec -it sidecar restore latest (typing the name)" \
    output_has "restored app/app/" typed app docker compose exec -it sidecar restore latest
  check "docker compose exec sidecar health" output_has healthy docker compose exec sidecar health

  # A non-root user; secrets arrive as files under /run/secrets.
  check "the daemon runs as uid 10001" output_has "Uid:	10001" docker exec sidecar grep Uid /proc/1/status
  check "the secrets are mounted under /run/secrets" output_has /run/secrets/s3_secret_access_key \
    docker inspect -f '{{range .Mounts}}{{.Destination}} {{end}}' sidecar
  check "the configuration names secret files" output_has "PASSWORD_FILE=/run/secrets/db_password" \
    docker inspect -f '{{range .Config.Env}}{{println .}}{{end}}' sidecar

  # Data, the runbook's manual backup and check, and its restore beside the original.
  app_sql -d app -c "create table orders (id int primary key, note text);
    insert into orders select i, 'order ' || i from generate_series(1, 5000) i;"
  check "the runbook names docker exec sidecar backup" readme_has 'docker exec sidecar backup'
  check "docker exec sidecar backup" output_has "backup complete" docker exec sidecar backup
  check "docker exec sidecar verify latest" output_has "sha256 matches" docker exec sidecar verify latest
  check "the runbook names the restore beside the original" \
    readme_has 'docker exec -it sidecar restore latest --target-db app_restored'
  check "docker exec -it sidecar restore latest --target-db app_restored (typing the name)" \
    output_has "restored" typed app_restored docker exec -it sidecar restore latest --target-db app_restored
  check "the restored copy has every row" rows_are app_restored orders 5000
  check "the README's one-command restore" readme_has '`docker exec -it sidecar restore latest`'
  app_sql -d app -c "delete from orders where id > 100"
  check "docker exec -it sidecar restore latest (typing the name)" \
    output_has "restored" typed app docker exec -it sidecar restore latest
  check "the in-place restore brought every row back" rows_are app orders 5000
  check "docker exec sidecar list (runbook step 1)" output_has "app/app/" docker exec sidecar list

  # --full while the application holds a connection: the connection is ended, the restored
  # copy takes the name, the old database stays beside it.
  app_sql -d app -c "delete from orders where id > 10"
  docker compose exec -T db psql -U app -d app -c "select pg_sleep(600)" >"$E2E_TMP/app-conn.log" 2>&1 &
  local app_conn=$!
  wait_for 20 sh -c "docker compose exec -T db psql -U app -d postgres -Atc \"select 1 from pg_stat_activity where datname = 'app' and query like '%pg_sleep(600)%' and pid <> pg_backend_pid()\" | grep -q 1" \
    || fail "compose: the application's connection" "never seen in pg_stat_activity"
  check "docker compose exec sidecar restore latest --full --yes" \
    output_has "restored" docker compose exec sidecar restore latest --full --yes
  wait "$app_conn"
  check "the application's connection was ended by the swap" grep -q "terminat" "$E2E_TMP/app-conn.log"
  check "after --full the database has every row again" rows_are app orders 5000
  check "the replaced database is kept as app__pre_restore_*" output_has "app__pre_restore_" \
    app_sql -d postgres -c "select datname from pg_database"

  # The image's HEALTHCHECK (first run after its 60 s interval).
  check "the container's HEALTHCHECK becomes healthy" wait_for 180 healthy sidecar

  compose_stop_mid_backup
  compose_encrypted
  compose_pitr
  compose_copies
  compose_monitoring
  compose_no_secret_in_the_open
}

# What Prometheus and a browser in the stack see: /metrics and the status page fetched by
# another container on the stack's network; and the monitoring profile as compose reads it.
in_stack() { docker run --rm --network pgsidecar_default --entrypoint curl pgsidecar-e2e/s3:local -fsS "$@"; }
stack_metrics_have() { in_stack http://sidecar:9187/metrics 2>/dev/null | grep -q "$1"; }
compose_monitoring() {
  local metrics page services
  # The backup by hand reaches the daemon's status at its next heartbeat (15 s).
  check "/metrics from inside the stack: the database's last success" \
    wait_for 60 stack_metrics_have '^pgsidecar_last_success_timestamp_seconds{job="default",database="app"}'
  metrics=$(in_stack http://sidecar:9187/metrics 2>&1)
  check "/metrics from inside the stack: the copy's destination metrics" \
    contains 'destination="offsite"' <<<"$metrics"
  # The sidecar was just recreated with the copy: its first lag reading takes a moment.
  check "/metrics from inside the stack: the PITR archive lag" \
    wait_for 120 stack_metrics_have '^pgsidecar_pitr_archive_lag_seconds'
  page=$(in_stack http://sidecar:9187/ 2>&1)
  check "the status page from inside the stack: its title" contains "<title>pgsidecar status</title>" <<<"$page"
  check "the status page from inside the stack: the database app" contains '<span class="name">app</span>' <<<"$page"
  check "the status page from inside the stack: the PITR archive" contains "Point-in-time recovery" <<<"$page"
  services=$(docker compose --profile monitoring config --services 2>&1)
  check "the monitoring profile runs prometheus" grep -qx prometheus <<<"$services"
  check "the monitoring profile runs grafana" grep -qx grafana <<<"$services"
}

# A second destination as .env.example shows it: another bucket of the same store, named in
# .env; one backup lands in both, and `list` says where.
compose_copies() {
  check ".env.example has the second destination's line" grep -q '^PGSIDECAR_COPIES__OFFSITE__URL=$' .env.example
  sed -i 's|^PGSIDECAR_COPIES__OFFSITE__URL=.*|PGSIDECAR_COPIES__OFFSITE__URL=s3://backups-offsite/app|' .env
  docker compose up -d sidecar >/dev/null 2>&1
  check "docker exec sidecar backup stores in the primary and in offsite" \
    output_has "stored in offsite: app/app/" docker exec sidecar backup
  check "list names both destinations for the new backup" sh -c \
    'docker exec sidecar list --json 2>/dev/null | python3 -c "import json, sys; sys.exit(0 if json.load(sys.stdin)[0].get(\"destinations\") == [\"primary\", \"offsite\"] else 1)"'
  check "restore --from offsite reads the copy (with the archive's identity)" output_has "restored" \
    docker compose run --rm --no-deps -T --user "$(id -u)" -v "$PWD/backup-identity.txt:/identity:ro" sidecar \
    restore latest --from offsite --identity /identity --target-db app_from_offsite --yes
}

# `docker compose stop sidecar` while a backup is uploading: the daemon gets its shutdown
# grace, cancels, aborts the upload and exits 0 before stop_grace_period; `start` catches up.
compose_stop_mid_backup() {
  # Enough data for parts to be in flight (about 200 MB stored), and a schedule that fires
  # every minute, set the way a user sets it: in .env, then `up -d` recreates the sidecar.
  app_sql -d app -c "create table big as select i, md5(i::text) || md5((i * 7)::text) || md5((i * 13)::text) as t
    from generate_series(1, 4000000) i"
  sed -i 's/^PGSIDECAR_SCHEDULE=.*/PGSIDECAR_SCHEDULE=* * * * */' .env
  local before; before=$(backups)
  docker compose --profile local-s3 up -d sidecar >/dev/null 2>&1
  if ! wait_for 100 part_stored; then
    fail "compose: a scheduled backup starts uploading" "no multipart part seen within 100 s"
    return
  fi
  # Hold the store still, as a stalled S3 would: the backup cannot finish within the shutdown
  # grace (30 s), so the daemon must cancel it cleanly.
  docker compose pause s3 >/dev/null
  local t0=$SECONDS
  docker compose stop sidecar >"$E2E_TMP/stop.log" 2>&1 &
  local stopper=$!
  # The store comes back once the grace is over and the daemon has cancelled, so the abort
  # goes through.
  wait_for 50 sh -c 'docker logs sidecar 2>&1 | grep -q "cancelling the running backup"'
  docker compose unpause s3 >/dev/null
  wait "$stopper"
  local took=$((SECONDS - t0))
  log "docker compose stop sidecar took ${took} s mid-backup (stop_grace_period: 60 s)"
  check "stop mid-backup ends before stop_grace_period" test "$took" -lt 60
  check "the daemon exited 0 (not killed)" output_has 0 docker inspect -f '{{.State.ExitCode}}' sidecar
  check "the daemon cancelled the running backup" output_has "cancelling the running backup" \
    docker compose logs sidecar
  check "the cancelled backup left no manifest" output_has "$before" \
    sh -c 'docker compose run --rm --no-deps -T sidecar list --json 2>/dev/null | python3 -c "import json, sys; print(len(json.load(sys.stdin)))"'
  check "the cancelled backup left no open multipart upload" no_open_upload

  # The cancelled firing is the one missed: the start catches it up at once.
  local since; since=$(date -u +%Y-%m-%dT%H:%M:%SZ)
  docker compose start sidecar >/dev/null 2>&1
  check "docker compose start sidecar catches up" wait_for 90 sh -c \
    "docker compose logs --since $since sidecar | grep -q 'catching up now'"
  check "the catch-up backup is stored" wait_for 120 backups_at_least $((before + 1))
}

# The README's encryption steps: recipients in .env, encrypted backups, and a restore from a
# one-off container that holds the identity (the sidecar never does).
compose_encrypted() {
  app_sql -d app -c "drop table big"
  local block; block=$(readme_block "## Encryption")
  check "the README's encryption block makes a key, sets it, restarts and restores" \
    test "$(grep -cE '^(age-keygen|echo "PGSIDECAR_ENCRYPTION__RECIPIENTS|docker compose (up|run))' <<<"$block")" = 4
  # Its commands verbatim; the restore goes into a new database, without a prompt.
  block=$(sed 's|restore latest --identity /identity$|restore latest --identity /identity --target-db app_enc --yes|' <<<"$block")
  log "the README's encryption commands:"; printf '    %s\n' "$block" >&2
  local before; before=$(backups)
  bash -euc "$(grep -v '^docker compose run' <<<"$block")" >"$E2E_TMP/encryption.log" 2>&1 \
    || fail "compose: encryption set-up" "$(tail -n 5 "$E2E_TMP/encryption.log")"
  check "docker exec sidecar backup, encrypted" output_has "backup complete" docker exec sidecar backup
  check "the encrypted backup (.age) is listed" output_has ".dump.zst.age" docker exec sidecar list
  check "the sidecar cannot read it: verify asks for the identity (exit 2)" sh -c \
    'docker exec sidecar verify latest >/dev/null 2>&1; [ $? = 2 ]'
  check "the README's one-off restore with the identity" \
    output_has "restored" bash -euc "$(grep '^docker compose run' <<<"$block")"
  check "the decrypted copy has every row" rows_are app_enc orders 5000
  check "the encrypted backups were added to the others" backups_at_least $((before + 1))
}

# No secret value in the logs of any service, nor in any container's configuration.
compose_no_secret_in_the_open() {
  local logs inspect
  logs=$(docker compose --profile local-s3 logs --no-color 2>&1)
  # shellcheck disable=SC2046
  inspect=$(docker inspect $(docker ps -aq) 2>&1)
  check "the logs were read (the daemon's schedule is in them)" contains "scheduled" <<<"$logs"
  for s in db_password s3_access_key_id s3_secret_access_key; do
    local value; value=$(cat "secrets/$s")
    check "the $s value is in no docker compose logs" lacks "$value" <<<"$logs"
    check "the $s value is in no docker inspect" lacks "$value" <<<"$inspect"
  done
}

# The application's own connection: TCP to `db` as `app` with its password (read from the
# secret inside the container, so it reaches psql through the environment, not argv).
app_conn() {
  docker compose exec -T sidecar sh -c \
    'PGPASSWORD=$(cat /run/secrets/db_password) exec psql -X -q -A -t -v ON_ERROR_STOP=1 -h db -U app -d app -c "$1"' sh "$1"
}
pitr_list() { docker exec sidecar list --pitr --json 2>/dev/null; }
# The README's block with the test's moment in place of its example.
at_moment() { sed "s/2026-11-30 14:05:00+01/$1/g"; }

# Point-in-time recovery the README's way: the replication line from compose.yml's initdb
# script, the bound, archiving on in compose.yml; then a disaster, a restore to a moment into a
# new volume, a check beside the stack, the move of `db` to it, and archiving on the new
# timeline. The archive is encrypted here (compose_encrypted set recipients), so the restore
# takes the identity as the README says.
compose_pitr() {
  local started=$SECONDS
  check "compose.yml's initdb script is the README's" test \
    "$(readme_block "### What the database server needs" | grep -v '^#')" = "$(grep -v '^#' initdb/replication.sh)"
  check "the initdb script put the replication line into pg_hba.conf" test \
    "$(app_sql -d app -c "select count(*) from pg_hba_file_rules where 'replication' = any(database) and address = 'samenet'")" = 1
  local bound; bound=$(readme_block "### What the database server needs" 2 | grep 'max_slot_wal_keep_size')
  check "the README's bound on the slot's WAL" bash -euc "$bound"
  check "docker compose exec sidecar pgsidecar pitr check" docker compose exec sidecar pgsidecar pitr check
  # Archiving on, as the README says: the sidecar's environment in compose.yml, then
  # `docker compose up -d sidecar`; partials every 5 s and a commit every 2 s keep the test short.
  check "the README turns archiving on in compose.yml" readme_has 'add `PGSIDECAR_PITR__ENABLED: "true"`'
  sed -i 's|^      PGSIDECAR_LOG__FORMAT: .*|&\n      PGSIDECAR_PITR__ENABLED: "true"\n      PGSIDECAR_PITR__HEARTBEAT: 2s\n      PGSIDECAR_PITR__PARTIAL_INTERVAL: 5s|' compose.yml
  check "compose.yml's sidecar has PITR on" grep -q 'PGSIDECAR_PITR__ENABLED: "true"' compose.yml
  docker compose up -d sidecar >/dev/null 2>&1
  check "the first base backup is listed" wait_for 120 pitr_through pitr_list pitr_base_on_timeline 1
  log "PITR (Compose): first base backup listed $((SECONDS - started)) s after the start"

  pitr_marks_around_a_moment app_sql app_conn pitr_list
  local moment=$PITR_MOMENT
  docker kill "$(docker compose ps -q db)" >/dev/null
  check "the database was killed and stays down" sh -c \
    "sleep 3; [ \"\$(docker inspect -f '{{.State.Running}}' $(docker compose ps -aq db))\" = false ]"

  # 1. Stop and see the window (the README's block).
  local block; block=$(readme_block "### Restore to a moment (Compose)" 1)
  check "the README's step 1: stop db, list --pitr" output_has "restorable from" bash -euc "$block"
  check "the old volume pgsidecar_db-data exists" docker volume inspect pgsidecar_db-data
  local before; before=$(volume_digest pgsidecar_db-data)

  # 2. The restore, with the identity of the encrypted archive as the README says.
  block=$(readme_block "### Restore to a moment (Compose)" 2 | at_moment "$moment" |
    sed -e 's|-v pgsidecar_db-restored:/restore sidecar|-v pgsidecar_db-restored:/restore -v "$PWD/backup-identity.txt:/identity:ro" sidecar|' \
        -e 's|--owner 999:999$|--owner 999:999 --identity /identity|')
  check "the README's step 2 restores the moment's data into pgsidecar_db-restored" \
    output_has "next: start PostgreSQL 17" timeout 300 bash -euc "$block"
  check "what the restore wrote belongs to 999:999 (the image's postgres)" owned_by_postgres pgsidecar_db-restored
  check "the restore made no volume outside the project" sh -c '! docker volume inspect db-restored >/dev/null 2>&1'
  check "compose owns the restored volume" output_has "pgsidecar" \
    docker volume inspect -f '{{index .Labels "com.docker.compose.project"}}' pgsidecar_db-restored

  # 3. Beside the stack, checked by pitr verify: the README's command, then with the marks.
  block=$(readme_block "### Restore to a moment (Compose)" 3 | at_moment "$moment")
  check "the README's step 3: db-restored up, pitr verify passes" timeout 300 bash -euc "$block"
  local out rc=0
  out=$(docker compose exec -T sidecar pgsidecar pitr verify --host db-restored --time "$moment" \
    --query "$PITR_VERIFY_QUERY" --wait 1m 2>&1) || rc=$?
  log "pitr verify --host db-restored --time '$moment' --query (batch A present, batch B absent):"
  printf '%s\n' "$out" | grep -E '^(ok|FAIL)' | sed 's/^/    /' >&2
  check "pitr verify with the marks query exits 0" test "$rc" = 0
  check "pitr verify: every check ok, the marks query among them" bash -c \
    '[ "$(grep -c "^ok" <<<"$1")" -ge 5 ] && ! grep -q "^FAIL" <<<"$1"' bash "$out"
  check "pitr verify fails on a query that does not hold (exit 1)" sh -c \
    "docker compose exec -T sidecar pgsidecar pitr verify --host db-restored --time '$moment' --query 'SELECT count(*) = 150 FROM pitr_marks' --wait 1m >/dev/null 2>&1; [ \$? = 1 ]"

  # 4. db moves to the restored volume.
  block=$(readme_block "### Restore to a moment (Compose)" 4)
  check "the README's step 4 recreates db" contains "docker compose up -d --wait db" <<<"$block"
  check "the README's step 4: db-restored stopped, db on the restored volume" timeout 300 bash -euc "$block"
  check "the checked server is gone" test -z "$(docker compose --profile restore ps -aq db-restored)"
  check "db runs on pgsidecar_db-restored" output_has "pgsidecar_db-restored" \
    docker inspect -f '{{range .Mounts}}{{.Name}} {{end}}' "$(docker compose ps -q db)"
  pitr_after_the_move app_conn pitr_list pgsidecar_db-data "$before" Compose
  docker exec sidecar list --pitr 2>/dev/null | sed 's/^/    /' >&2
  compose_pitr_drill
  log "PITR (Compose) took $((SECONDS - started)) s"
}

# The build of $2… fails, saying $1.
build_refuses() {
  local text=$1 out; shift
  if out=$(build_pgsidecar_image "$@" 2>&1); then
    echo "the build succeeded"
    return 1
  fi
  contains "$text" <<<"$out"
}

# A PITR drill in the image built with the server (PG_SERVER=true), as the README says, on
# the archive as the move left it: the newest moment, on the new timeline, holds batch A alone.
compose_pitr_drill() {
  check "the README builds the drill image from .env's PGSIDECAR_PG_SERVER" \
    readme_has 'set `PGSIDECAR_PG_SERVER=true` in `.env`'
  check "compose.yml passes PGSIDECAR_PG_SERVER to the build as PG_SERVER" sh -c \
    'PGSIDECAR_PG_SERVER=true docker compose config sidecar | grep -q "PG_SERVER: \"true\""'
  check "the image builds with PG_SERVER=true" \
    build_pgsidecar_image pgsidecar:local-server --build-arg PG_SERVER=true
  check "a bad PG_SERVER fails the build, naming it" build_refuses "PG_SERVER must be true or false" \
    pgsidecar:local-bad --build-arg PG_SERVER=yes
  local size; size=$(docker image inspect -f '{{.Size}}' pgsidecar:local-server 2>/dev/null || echo 0)
  log "image pgsidecar:local-server: $((size / 1000000)) MB"
  # The container's user (10001) reads the identity, as a drill of the daemon would.
  install -m 0400 -o 10001 -g 10001 backup-identity.txt drill-identity.txt
  local out rc=0
  out=$(PGSIDECAR_IMAGE=pgsidecar:local-server docker compose run --rm --no-deps -T \
    -v "$PWD/drill-identity.txt:/identity:ro" \
    -e PGSIDECAR_PITR__DRILL__QUERY="SELECT count(*) = 100 FROM pitr_marks" \
    sidecar pitr drill --time newest --identity /identity 2>&1) || rc=$?
  log "pitr drill --time newest in pgsidecar:local-server:"
  printf '%s\n' "$out" | grep -E '^(ok|FAIL|drill)' | sed 's/^/    /' >&2
  check "the drill in the server image passes (exit 0)" test "$rc" = 0
  check "the drill says what it restored, with its RTO" contains "drill passed: restored" <<<"$out"
  check "the stock image names the build argument a drill needs (exit 1)" sh -c \
    'out=$(docker compose run --rm --no-deps -T -v "$PWD/drill-identity.txt:/identity:ro" sidecar pitr drill --time newest --identity /identity 2>&1); rc=$?; echo "$out"; [ $rc = 1 ] && echo "$out" | grep -q "PG_SERVER=true"'
  rm -f drill-identity.txt
}
