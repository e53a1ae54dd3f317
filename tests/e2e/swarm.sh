# shellcheck shell=bash
# Swarm, end to end, as the README and swarm-stack.yml tell a user (sourced by scripts/e2e.sh
# after lib.sh): secrets, the node label, `docker stack deploy`, a scheduled backup, a restore
# through `docker exec $(docker ps -q -f name=app_sidecar)`, and a forced update that never
# runs two sidecars at once.

sidecar_id() { docker ps -q -f name=app_sidecar; }
swarm_backups() { docker exec "$(sidecar_id)" list --json 2>/dev/null | count_listed; }
swarm_backups_at_least() { [ "$(swarm_backups)" -ge "$1" ]; }
db_sql() { docker exec "$(docker ps -q -f name=app_db)" psql -X -q -A -t -v ON_ERROR_STOP=1 -U app "$@"; }
one_running() { [ "$(docker ps -q -f name=app_sidecar -f status=running | wc -l)" = 1 ]; }

swarm_e2e() {
  cd "$E2E_TMP" || return
  if ! docker swarm init --advertise-addr 127.0.0.1 >/dev/null; then
    fail "swarm: init" "docker swarm init failed"
    return
  fi
  # The secrets as the README creates them; the Slack webhook as its "none".
  local DB_PASSWORD AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY
  DB_PASSWORD=$(head -c 18 /dev/urandom | base64 | tr -d '/+')
  AWS_ACCESS_KEY_ID=$(head -c 12 /dev/urandom | base64 | tr -d '/+')
  AWS_SECRET_ACCESS_KEY=$(head -c 18 /dev/urandom | base64 | tr -d '/+')
  local block; block=$(readme_block "## Deploy on Docker Swarm")
  check "the README creates the three secrets this test creates" \
    contains 'printf '"'"'%s'"'"' "$AWS_SECRET_ACCESS_KEY" | docker secret create s3_secret_access_key -' <<<"$block"
  printf '%s' "$DB_PASSWORD" | docker secret create db_password - >/dev/null
  printf '%s' "$AWS_ACCESS_KEY_ID" | docker secret create s3_access_key_id - >/dev/null
  printf '%s' "$AWS_SECRET_ACCESS_KEY" | docker secret create s3_secret_access_key - >/dev/null
  check "the README's way to say 'no Slack'" readme_has 'echo | docker secret create'
  echo | docker secret create slack_webhook - >/dev/null
  # The label swarm-stack.yml pins the database with, as its comment says.
  check "swarm-stack.yml says how to label the database's node" \
    grep -qF 'docker node update --label-add db=true NODE' "$E2E_REPO/swarm-stack.yml"
  docker node update --label-add db=true "$(docker node ls -q)" >/dev/null

  local t0=$SECONDS
  check "docker stack deploy -c swarm-stack.yml app" docker stack deploy \
    -c "$E2E_REPO/swarm-stack.yml" -c "$E2E_REPO/tests/e2e/swarm.override.yml" app
  check "the sidecar task runs" wait_for 180 one_running
  # The catch-up at start, then one from the schedule.
  check "a scheduled backup lands" wait_for 180 swarm_backups_at_least 2
  log "two backups listed $((SECONDS - t0)) s after deploy"

  db_sql -d app -c "create table marks (id int); insert into marks select generate_series(1, 777)"
  docker exec "$(sidecar_id)" backup >/dev/null 2>&1 || fail "swarm: backup" "docker exec … backup failed"
  check "the README's Swarm restore command" readme_has 'docker exec -it $(docker ps -q -f name=app_sidecar) restore latest'
  check "docker exec \$(docker ps -q -f name=app_sidecar) restore latest --target-db app_copy --yes" \
    output_has restored docker exec "$(sidecar_id)" restore latest --target-db app_copy --yes
  check "the copy has every row" sh -c "[ \"\$(docker exec \$(docker ps -q -f name=app_db) psql -U app -d app_copy -Atc 'select count(*) from marks')\" = 777 ]"

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

  docker stack rm app >/dev/null
  wait_for 60 sh -c '[ -z "$(docker ps -q -f name=app_)" ]'
  check "docker swarm leave --force" docker swarm leave --force
}
