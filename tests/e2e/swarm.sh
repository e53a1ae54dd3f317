# shellcheck shell=bash
# Swarm, end to end, as the README and swarm-stack.yml tell a user (sourced by scripts/e2e.sh
# after lib.sh): secrets, the node label, `docker stack deploy`, a scheduled backup, a restore
# through `docker exec $(docker ps -q -f name=app_sidecar)`, a forced update that never runs
# two sidecars at once, and a point-in-time restore moved into the stack's `db`.

sidecar_id() { docker ps -q -f name=app_sidecar; }
swarm_backups() { docker exec "$(sidecar_id)" list --json 2>/dev/null | count_listed; }
swarm_backups_at_least() { [ "$(swarm_backups)" -ge "$1" ]; }
db_sql() { docker exec "$(docker ps -q -f name=app_db)" psql -X -q -A -t -v ON_ERROR_STOP=1 -U app "$@"; }
one_running() { [ "$(docker ps -q -f name=app_sidecar -f status=running | wc -l)" = 1 ]; }

swarm_e2e() {
  local home="$E2E_TMP/swarm-user"
  user_checkout "$home/pgsidecar" || { fail "swarm: user checkout" "copy failed"; return; }
  cd "$home/pgsidecar" || return
  if ! docker swarm init --advertise-addr 127.0.0.1 >/dev/null; then
    fail "swarm: init" "docker swarm init failed"
    return
  fi
  # The README's commands, verbatim, but: the image is already built (through the same
  # Dockerfile, with the host's binary), and the deploy adds the test's override file.
  local block; block=$(readme_block "## Deploy on Docker Swarm")
  check "the README's Swarm block builds, labels, creates four secrets and deploys" \
    test "$(grep -cE 'docker (build|node update|secret create|stack deploy) ' <<<"$block")" = 7
  block=$(grep -v '^docker build ' <<<"$block" |
    sed 's|^docker stack deploy -c swarm-stack.yml app$|docker stack deploy -c swarm-stack.yml -c tests/e2e/swarm.override.yml app|')
  local token; token=$(head -c 12 /dev/urandom | base64 | tr -d '/+')
  export DB_PASSWORD AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY SLACK_WEBHOOK_URL
  DB_PASSWORD=$(head -c 18 /dev/urandom | base64 | tr -d '/+')
  AWS_ACCESS_KEY_ID=$(head -c 12 /dev/urandom | base64 | tr -d '/+')
  AWS_SECRET_ACCESS_KEY=$(head -c 18 /dev/urandom | base64 | tr -d '/+')
  # A webhook nobody answers: deliveries fail (and must not hold up a backup), and its secret
  # path must never be logged.
  SLACK_WEBHOOK_URL="http://slack.invalid/services/T000/B000/$token"
  log "the README's Swarm commands:"; printf '    %s\n' "$block" >&2
  local t0=$SECONDS
  check "the README's Swarm commands run" bash -euc "$block"
  check "the sidecar task runs" wait_for 180 one_running
  # The catch-up at start, then one from the schedule.
  check "a scheduled backup lands" wait_for 180 swarm_backups_at_least 2
  log "two backups listed $((SECONDS - t0)) s after deploy"

  db_sql -d app -c "create table marks (id int); insert into marks select generate_series(1, 777)"
  check "docker exec \$(docker ps -q -f name=app_sidecar) backup" \
    output_has "backup complete" docker exec "$(sidecar_id)" backup
  check "the README's Swarm restore command" readme_has 'docker exec -it $(docker ps -q -f name=app_sidecar) restore latest'
  check "docker exec \$(docker ps -q -f name=app_sidecar) restore latest --target-db app_copy --yes" \
    output_has restored docker exec "$(sidecar_id)" restore latest --target-db app_copy --yes
  check "the copy has every row" test "$(db_sql -d app_copy -c 'select count(*) from marks')" = 777

  # stop-first: during a forced update there is never a second running sidecar.
  local old; old=$(sidecar_id)
  docker service update --force --detach app_sidecar >/dev/null 2>&1
  local most=0 n start=$SECONDS
  while (( SECONDS - start < 120 )); do
    n=$(docker ps -q -f name=app_sidecar -f status=running | wc -l)
    (( n > most )) && most=$n
    if [ "$n" = 1 ] && [ "$(sidecar_id)" != "$old" ]; then break; fi
    sleep 0.2
  done
  check "docker service update --force app_sidecar replaced the task" test "$(sidecar_id)" != "$old"
  check "never two sidecars at once during the update (most seen: $most)" test "$most" -le 1

  swarm_pitr

  local logs; logs=$(docker service logs app_sidecar 2>&1; docker service logs app_db 2>&1)
  check "the sidecar's logs were read" contains "scheduled" <<<"$logs"
  for value in "$DB_PASSWORD" "$AWS_SECRET_ACCESS_KEY" "$token"; do
    check "no secret (${value:0:3}…) in docker service logs" lacks "$value" <<<"$logs"
  done

  docker stack rm app >/dev/null
  wait_for 60 sh -c '[ -z "$(docker ps -q -f name=app_)" ]'
  check "docker swarm leave --force" docker swarm leave --force
  cd "$E2E_REPO" || return
}

# The running sidecar task (during an update the old one may still be listed while it stops).
running_sidecar() { docker ps -q -f name=app_sidecar -f status=running | head -n 1; }
swarm_pitr_list() { docker exec "$(running_sidecar)" list --pitr --json 2>/dev/null; }
# The application's connection to `db` over the stack's network (see app_conn in compose.sh).
swarm_app_conn() {
  docker exec "$(running_sidecar)" sh -c \
    'PGPASSWORD=$(cat /run/secrets/db_password) exec psql -X -q -A -t -v ON_ERROR_STOP=1 -h db -U app -d app -c "$1"' sh "$1"
}
no_db_task() { [ -z "$(docker ps -q -f name=app_db)" ]; }
# The README's Swarm blocks with the test's deploy (its override file) and images.
swarm_test_bits() {
  sed -e 's|^docker stack deploy -c swarm-stack.yml app$|docker stack deploy -c swarm-stack.yml -c tests/e2e/swarm.override.yml app|' \
      -e 's| postgres:17$| pgsidecar-e2e/postgres:17|' -e "s/2026-11-30 14:05:00+01/$1/g"
}

# Point-in-time recovery in Swarm, as the README's "Restore to a moment (Swarm)" says: on, a
# disaster, a restore into app_db-restored by a one-off job on the database's node, a check
# beside the stack, `db` moved by a redeploy, and archiving on the new timeline.
swarm_pitr() {
  local started=$SECONDS heading="### Restore to a moment (Swarm)"
  check "swarm-stack.yml's db updates stop-first" sh -c \
    "docker service inspect app_db -f '{{.Spec.UpdateConfig.Order}}' | grep -qx stop-first"
  check "the initdb script (a config) put the replication line into pg_hba.conf" test \
    "$(db_sql -d app -c "select count(*) from pg_hba_file_rules where 'replication' = any(database) and address = 'samenet'")" = 1
  local block; block=$(readme_block "$heading" 1 | swarm_test_bits x)
  check "the README's Swarm PITR block: the bound, PITR on, deploy" bash -euc "$block"
  check "swarm-stack.yml has PITR on" grep -q 'PGSIDECAR_PITR__ENABLED: "true"' swarm-stack.yml
  check "the first base backup is listed" wait_for 180 pitr_through swarm_pitr_list pitr_base_on_timeline 1
  log "PITR (Swarm): first base backup listed $((SECONDS - started)) s after the start"

  pitr_marks_around_a_moment db_sql swarm_app_conn swarm_pitr_list
  local moment=$PITR_MOMENT
  # The disaster: the task is killed. Swarm would start it again; the README's step 1 scales
  # the service to 0 first.
  docker kill "$(docker ps -q -f name=app_db)" >/dev/null
  block=$(readme_block "$heading" 2 | swarm_test_bits "$moment")
  check "the README's Swarm step 1: db scaled to 0, list --pitr" output_has "restorable from" bash -euc "$block"
  check "no db task runs" wait_for 30 no_db_task
  check "the old volume app_db-data exists" docker volume inspect app_db-data
  local before; before=$(volume_digest app_db-data)

  block=$(readme_block "$heading" 3 | swarm_test_bits "$moment")
  check "the README's Swarm step 2: a one-off job restores into app_db-restored" \
    output_has "next: start PostgreSQL 17" timeout 300 bash -euc "$block"
  check "the job and its env file are gone" sh -c '! docker service inspect pitr-restore >/dev/null 2>&1 && [ ! -e sidecar.env ]'
  check "what the restore wrote belongs to 999:999 (the image's postgres)" owned_by_postgres app_db-restored

  block=$(readme_block "$heading" 4 | swarm_test_bits "$moment")
  check "the README's Swarm step 3 verifies db-restored, then stops it" timeout 300 bash -euc "$(
    sed "s|pitr verify --host db-restored --time '$moment'|& --query \"$PITR_VERIFY_QUERY\"|" <<<"$block")"
  check "the checked server is gone (service removed, no container running)" sh -c \
    '! docker service inspect db-restored >/dev/null 2>&1 && [ -z "$(docker ps -q -f name=db-restored)" ]'

  block=$(readme_block "$heading" 5 | swarm_test_bits "$moment")
  check "the README's Swarm step 4: swarm-stack.yml edited, deployed again" bash -euc "$block"
  check "swarm-stack.yml's db is on db-restored with the restored PGDATA" sh -c \
    'grep -q -- "- db-restored:/var/lib/postgresql/data" swarm-stack.yml && grep -q "PGDATA: /var/lib/postgresql/data/pgdata" swarm-stack.yml'
  check "the db task runs on app_db-restored" wait_for 120 sh -c \
    'docker inspect -f "{{range .Mounts}}{{.Name}} {{end}}" $(docker ps -q -f name=app_db -f status=running) | grep -q app_db-restored'
  check "db accepts the application's connection" wait_for 120 swarm_app_conn "select 1"
  pitr_after_the_move swarm_app_conn swarm_pitr_list app_db-data "$before" Swarm
  docker exec "$(running_sidecar)" list --pitr 2>/dev/null | sed 's/^/    /' >&2
  log "PITR (Swarm) took $((SECONDS - started)) s"
}
