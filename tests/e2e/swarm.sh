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
