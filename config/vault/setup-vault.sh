#!/usr/bin/env bash
# setup-vault.sh -- configure a HashiCorp Vault server for the runner orchestrator.
#
# The orchestrator is an OIDC issuer: for every CI job it mints a short-lived JWT (claims include
# "pool", audience "vault") and logs in to Vault's JWT auth method with it. This script creates:
#
#   * the JWT auth method at auth/${JWT_MOUNT}, validating job JWTs through the orchestrator's OIDC
#     discovery document (${ORCH_DISCOVERY_URL}/.well-known/openid-configuration -> jwks_uri), with
#     bound_issuer = ${ORCH_ISSUER};
#   * a KV version 2 secrets engine at ${KV_MOUNT}/ (left alone if that path is already mounted);
#   * per pool P: the ACL policy "ci-P-read" and the JWT role "ci-P": role_type jwt, bound_audiences
#     [${ORCH_AUDIENCE}], bound_claims {"pool": "P"}, user_claim "sub", token_policies ["ci-P-read"],
#     token_ttl ${TOKEN_TTL}, token_max_ttl ${TOKEN_MAX_TTL}, token_type service. The policy is
#       ORCH_SCOPE=pool (default): read on ${KV_MOUNT}/data/ci/P/* (policies/ci-pool-read.hcl): every
#         repository building in pool P reads every secret of P;
#       ORCH_SCOPE=repository: read on ${KV_MOUNT}/data/ci/P/<name> (one segment: the pool-wide secrets) and
#         on ${KV_MOUNT}/data/ci/P/<owner>/<repo>/<name> for the job's own owner/repo repository
#         (policies/ci-repository-read.hcl). The role maps the JWT's "repository_owner" and
#         "repository_name" claims into the token's alias metadata (claim_mappings), and the policy path is
#         templated on them ({{identity.entity.aliases.<mount accessor>.metadata.repository_owner}}/...),
#         so a job of acme/app reads ci/P/acme/app/<name> and ci/P/<name>, never ci/P/acme/other/<name>;
#   * optionally (ORCH_DATABASE_URL set) per-job database users: the database secrets engine at ${DB_MOUNT}/,
#     a connection "ci" and per pool P a role "ci-P" that creates a PostgreSQL user valid for one job
#     (policies/ci-pool-database.hcl adds read on ${DB_MOUNT}/creds/ci-P to the pool's policy). Jobs
#     request it as {"path": "${DB_MOUNT}/creds/ci-P", "engine": "generic", "key": "username" / "password"}:
#     one read per path, so both keys come from the same user; revoking the job's token drops the user;
#   * the ACL policy "orchestrator-revoker" (update on auth/token/revoke-accessor only,
#     policies/orchestrator-revoker.hcl) for the orchestrator's own token, which revokes job tokens by
#     accessor when jobs end. Optionally it creates that token (see ORCH_CREATE_REVOKER_TOKEN).
#
# Everything is idempotent: re-running updates policies, config and roles in place.
#
# Usage:
#   VAULT_ADDR=https://vault.example:8200 VAULT_TOKEN=... \
#   ORCH_DISCOVERY_URL=https://orchestrator.example ORCH_POOLS="linux gpu" \
#     config/vault/setup-vault.sh [POOL...]
#
# Environment:
#   VAULT_ADDR                 (required) Vault address, e.g. https://vault.example:8200
#   VAULT_TOKEN                (required) a token allowed to do all of the above (sudo on sys/auth/*)
#   ORCH_DISCOVERY_URL         (required) the orchestrator's public base URL; Vault fetches
#                              <url>/.well-known/openid-configuration and requires its "issuer" to equal
#                              this URL exactly (watch trailing slashes)
#   ORCH_ISSUER                bound_issuer, the JWTs' "iss" (default: ORCH_DISCOVERY_URL)
#   ORCH_AUDIENCE              the JWTs' "aud" (default: vault)
#   ORCH_POOLS                 pools, separated by spaces or commas (or give them as arguments)
#   JWT_MOUNT                  JWT auth mount path (default: jwt)
#   KV_MOUNT                   KV v2 mount path (default: secret)
#   TOKEN_TTL / TOKEN_MAX_TTL  job token TTL / max TTL (default: 15m / 2h)
#   ORCH_JWT_ALGS              optional comma list for jwt_supported_algs (default: Vault's
#                              RS/ES/PS 256-512 and EdDSA)
#   ORCH_CREATE_REVOKER_TOKEN  1 = also create the orchestrator's revoker token (periodic orphan
#                              service token, policy orchestrator-revoker) and write it to
#                              ORCH_REVOKER_TOKEN_FILE (required then; created with mode 0600;
#                              the token is never printed)
#   ORCH_REVOKER_PERIOD        period of that token (default: 24h; the orchestrator must renew-self)
#   ORCH_SCOPE                 pool (default) | repository: see above
#   ORCH_POLICY_PREFIX         prefix of the policy names (default: none), for several orchestrators
#                              or test runs on one Vault
#   VAULT_SETUP_MODE           auto (default: the vault or bao CLI when installed, else curl) | cli | curl
#
# Per-job database users (PostgreSQL; all optional, the step runs when ORCH_DATABASE_URL is set):
#   ORCH_DATABASE_URL          connection_url with Vault's placeholders, e.g.
#                              postgresql://{{username}}:{{password}}@db.example:5432/app?sslmode=verify-full
#   ORCH_DATABASE_USERNAME     the account Vault manages job users with (needs CREATEROLE, not SUPERUSER)
#   ORCH_DATABASE_PASSWORD_FILE  a file holding that account's password (read here, never printed)
#   ORCH_DATABASE_GROUP_ROLE   an existing NOLOGIN role that every job user joins and acts as (ALTER ROLE
#                              ... SET role): what a job creates belongs to it, so dropping the job user
#                              never fails on owned objects. Grant the group what jobs may do.
#   ORCH_DATABASE_ROTATE_ROOT  1 = rotate that account's password right away, so only Vault knows it
#   DB_MOUNT                   database secrets engine mount (default: database)
#   ORCH_DATABASE_TTL / ORCH_DATABASE_MAX_TTL  lease TTLs of job users (default: TOKEN_TTL / TOKEN_MAX_TTL;
#                              the lease is revoked with the job's token anyway)
#   VAULT_CACERT, VAULT_NAMESPACE  honoured in curl mode as the vault CLI honours them
#
# Creating the revoker token by hand instead (as an operator with a sufficiently privileged token):
#   vault token create -orphan -policy=orchestrator-revoker -period=24h \
#       -display-name=orchestrator-revoker -field=token > /etc/orchestrator/vault-revoker-token
#   chmod 0600 /etc/orchestrator/vault-revoker-token
# Being periodic, it lives as long as the orchestrator renews it (auth/token/renew-self, allowed by
# the built-in default policy) at least once per period; it can do nothing else but revoke-accessor.
#
# Needs bash and either the vault CLI or curl. No jq required.

set -euo pipefail

SCRIPT_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
POLICY_DIR="${SCRIPT_DIR}/policies"

log() { printf 'setup-vault: %s\n' "$*" >&2; }
die() {
  printf 'setup-vault: error: %s\n' "$*" >&2
  exit 1
}

if [[ "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then
  sed -n '2,/^$/s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"
  exit 0
fi

# ------------------------------------------------------------------------------------------ inputs
: "${VAULT_ADDR:?VAULT_ADDR must be set}"
: "${VAULT_TOKEN:?VAULT_TOKEN must be set}"
: "${ORCH_DISCOVERY_URL:?ORCH_DISCOVERY_URL must be set (the orchestrator public URL)}"
ORCH_ISSUER="${ORCH_ISSUER:-$ORCH_DISCOVERY_URL}"
ORCH_AUDIENCE="${ORCH_AUDIENCE:-vault}"
JWT_MOUNT="${JWT_MOUNT:-jwt}"
KV_MOUNT="${KV_MOUNT:-secret}"
TOKEN_TTL="${TOKEN_TTL:-15m}"
TOKEN_MAX_TTL="${TOKEN_MAX_TTL:-2h}"
ORCH_JWT_ALGS="${ORCH_JWT_ALGS:-}"
ORCH_CREATE_REVOKER_TOKEN="${ORCH_CREATE_REVOKER_TOKEN:-0}"
ORCH_REVOKER_TOKEN_FILE="${ORCH_REVOKER_TOKEN_FILE:-}"
ORCH_REVOKER_PERIOD="${ORCH_REVOKER_PERIOD:-24h}"
ORCH_SCOPE="${ORCH_SCOPE:-pool}"
ORCH_POLICY_PREFIX="${ORCH_POLICY_PREFIX:-}"
ORCH_DATABASE_URL="${ORCH_DATABASE_URL:-}"
ORCH_DATABASE_USERNAME="${ORCH_DATABASE_USERNAME:-}"
ORCH_DATABASE_PASSWORD_FILE="${ORCH_DATABASE_PASSWORD_FILE:-}"
ORCH_DATABASE_GROUP_ROLE="${ORCH_DATABASE_GROUP_ROLE:-}"
ORCH_DATABASE_ROTATE_ROOT="${ORCH_DATABASE_ROTATE_ROOT:-0}"
DB_MOUNT="${DB_MOUNT:-database}"
ORCH_DATABASE_TTL="${ORCH_DATABASE_TTL:-$TOKEN_TTL}"
ORCH_DATABASE_MAX_TTL="${ORCH_DATABASE_MAX_TTL:-$TOKEN_MAX_TTL}"
VAULT_SETUP_MODE="${VAULT_SETUP_MODE:-auto}"
VAULT_ADDR="${VAULT_ADDR%/}"

pools_raw="${*:-${ORCH_POOLS:-}}"
read -r -a POOLS <<<"${pools_raw//,/ }"
((${#POOLS[@]} > 0)) || die "no pools given (set ORCH_POOLS or pass pool names as arguments)"

name_re='^[A-Za-z0-9][A-Za-z0-9_.-]*$'
mount_re='^[A-Za-z0-9][A-Za-z0-9_.-]*(/[A-Za-z0-9][A-Za-z0-9_.-]*)*$'
duration_re='^([0-9]+|([0-9]+[smh])+)$'
for pool in "${POOLS[@]}"; do
  [[ "$pool" =~ $name_re ]] || die "invalid pool name: '$pool' (letters, digits, '.', '_', '-')"
done
[[ "$JWT_MOUNT" =~ $mount_re ]] || die "invalid JWT_MOUNT: '$JWT_MOUNT'"
[[ "$KV_MOUNT" =~ $mount_re ]] || die "invalid KV_MOUNT: '$KV_MOUNT'"
[[ "$DB_MOUNT" =~ $mount_re ]] || die "invalid DB_MOUNT: '$DB_MOUNT'"
[[ -z "$ORCH_POLICY_PREFIX" || "$ORCH_POLICY_PREFIX" =~ $name_re ]] ||
  die "invalid ORCH_POLICY_PREFIX: '$ORCH_POLICY_PREFIX'"
for d in "$TOKEN_TTL" "$TOKEN_MAX_TTL" "$ORCH_REVOKER_PERIOD" "$ORCH_DATABASE_TTL" "$ORCH_DATABASE_MAX_TTL"; do
  [[ "$d" =~ $duration_re ]] || die "invalid duration: '$d' (e.g. 900, 15m, 2h, 1h30m)"
done
case "$ORCH_SCOPE" in
pool) POOL_POLICY_TEMPLATE=ci-pool-read.hcl ;;
repository) POOL_POLICY_TEMPLATE=ci-repository-read.hcl ;;
*) die "ORCH_SCOPE must be pool or repository, not '$ORCH_SCOPE'" ;;
esac
for f in "$POOL_POLICY_TEMPLATE" ci-pool-database.hcl orchestrator-revoker.hcl; do
  [[ -r "${POLICY_DIR}/${f}" ]] || die "policy file missing: ${POLICY_DIR}/${f}"
done
if [[ -n "$ORCH_DATABASE_URL" ]]; then
  [[ -n "$ORCH_DATABASE_USERNAME" ]] || die "ORCH_DATABASE_URL needs ORCH_DATABASE_USERNAME"
  [[ -r "$ORCH_DATABASE_PASSWORD_FILE" ]] ||
    die "ORCH_DATABASE_URL needs ORCH_DATABASE_PASSWORD_FILE, a readable file with the password (not: '${ORCH_DATABASE_PASSWORD_FILE}')"
  [[ -z "$ORCH_DATABASE_GROUP_ROLE" || "$ORCH_DATABASE_GROUP_ROLE" =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]] ||
    die "invalid ORCH_DATABASE_GROUP_ROLE: '$ORCH_DATABASE_GROUP_ROLE' (letters, digits, '_')"
fi

case "$VAULT_SETUP_MODE" in
auto)
  if command -v vault >/dev/null 2>&1; then
    MODE=cli CLI=vault
  elif command -v bao >/dev/null 2>&1; then
    MODE=cli CLI=bao
  else
    MODE=curl
  fi
  ;;
cli)
  MODE=cli
  if command -v vault >/dev/null 2>&1; then CLI=vault; elif command -v bao >/dev/null 2>&1; then CLI=bao; else
    die "neither the vault nor the bao CLI is installed"
  fi
  ;;
curl) MODE=curl ;;
*) die "VAULT_SETUP_MODE must be auto, cli or curl" ;;
esac
if [[ $MODE == cli ]]; then
  export BAO_ADDR="${BAO_ADDR:-$VAULT_ADDR}" BAO_TOKEN="${BAO_TOKEN:-$VAULT_TOKEN}"
else
  command -v curl >/dev/null 2>&1 || die "neither the vault CLI nor curl is installed"
fi

WORKDIR=$(umask 077 && mktemp -d)
trap 'rm -rf -- "$WORKDIR"' EXIT

# ------------------------------------------------------------------------------------------ JSON
json_str() { # a JSON string literal for $1
  local s=$1
  s=${s//\\/\\\\}
  s=${s//\"/\\\"}
  s=${s//$'\n'/\\n}
  s=${s//$'\r'/\\r}
  s=${s//$'\t'/\\t}
  printf '"%s"' "$s"
}

json_list() { # a JSON array of strings for "$@"
  local out="" item
  for item in "$@"; do
    out+="${out:+,}$(json_str "$item")"
  done
  printf '[%s]' "$out"
}

# ------------------------------------------------------------------------------------------ Vault API
# vault_write PATH JSON -- POST/PUT JSON to /v1/PATH. On success RESP_BODY holds the response body.
# On failure (non-2xx or unreachable) returns 1 with RESP_ERR describing it.
RESP_BODY=""
RESP_ERR=""

if [[ $MODE == curl ]]; then
  HEADERS="${WORKDIR}/headers"
  (
    umask 077
    printf 'X-Vault-Token: %s\n' "$VAULT_TOKEN" >"$HEADERS"
    printf 'X-Vault-Request: true\n' >>"$HEADERS"
    if [[ -n "${VAULT_NAMESPACE:-}" ]]; then printf 'X-Vault-Namespace: %s\n' "$VAULT_NAMESPACE" >>"$HEADERS"; fi
  )
  CURL_OPTS=(--silent --show-error --connect-timeout 10 --max-time 60 -H "@${HEADERS}" -H 'Content-Type: application/json')
  if [[ -n "${VAULT_CACERT:-}" ]]; then CURL_OPTS+=(--cacert "$VAULT_CACERT"); fi
fi

vault_write() {
  local path=$1 body=$2 code out="${WORKDIR}/response" err="${WORKDIR}/stderr"
  RESP_BODY=""
  RESP_ERR=""
  if [[ $MODE == cli ]]; then
    if "$CLI" write -format=json "$path" - <<<"$body" >"$out" 2>"$err"; then
      RESP_BODY=$(<"$out")
      return 0
    fi
    RESP_ERR=$(cat "$err" "$out")
    return 1
  fi
  : >"$out"
  if ! code=$(curl "${CURL_OPTS[@]}" -X POST --data-binary @- -o "$out" -w '%{http_code}' \
    "${VAULT_ADDR}/v1/${path}" <<<"$body" 2>"$err"); then
    RESP_ERR="cannot reach ${VAULT_ADDR}: $(<"$err")"
    return 1
  fi
  RESP_BODY=$(<"$out")
  if [[ $code == 2?? ]]; then
    return 0
  fi
  RESP_ERR="HTTP ${code} from POST /v1/${path}: ${RESP_BODY}"
  return 1
}

# vault_read PATH -- GET /v1/PATH into RESP_BODY; returns 1 with RESP_ERR on failure.
vault_read() {
  local path=$1 code out="${WORKDIR}/response" err="${WORKDIR}/stderr"
  RESP_BODY=""
  RESP_ERR=""
  if [[ $MODE == cli ]]; then
    if "$CLI" read -format=json "$path" >"$out" 2>"$err"; then
      RESP_BODY=$(<"$out")
      return 0
    fi
    RESP_ERR=$(cat "$err" "$out")
    return 1
  fi
  : >"$out"
  if ! code=$(curl "${CURL_OPTS[@]}" -o "$out" -w '%{http_code}' "${VAULT_ADDR}/v1/${path}" 2>"$err"); then
    RESP_ERR="cannot reach ${VAULT_ADDR}: $(<"$err")"
    return 1
  fi
  RESP_BODY=$(<"$out")
  [[ $code == 2?? ]] && return 0
  RESP_ERR="HTTP ${code} from GET /v1/${path}: ${RESP_BODY}"
  return 1
}

must_write() { # must_write WHAT PATH JSON
  local what=$1
  shift
  vault_write "$@" || die "${what} failed: ${RESP_ERR}"
  log "${what}: ok"
}

# ------------------------------------------------------------------------------------------ steps
log "configuring ${VAULT_ADDR} via ${MODE} (JWT mount '${JWT_MOUNT}', KV mount '${KV_MOUNT}', pools: ${POOLS[*]})"

# 1. JWT auth method
if vault_write "sys/auth/${JWT_MOUNT}" \
  "{\"type\":\"jwt\",\"description\":$(json_str "runner orchestrator CI job JWTs")}"; then
  log "enabled the jwt auth method at auth/${JWT_MOUNT}"
elif [[ $RESP_ERR == *"path is already in use"* ]]; then
  log "auth/${JWT_MOUNT} is already enabled"
else
  die "enabling the jwt auth method failed: ${RESP_ERR}"
fi

# 2. KV v2 secrets engine
if vault_write "sys/mounts/${KV_MOUNT}" "{\"type\":\"kv\",\"options\":{\"version\":\"2\"}}"; then
  log "mounted a KV v2 engine at ${KV_MOUNT}/"
elif [[ $RESP_ERR == *"path is already in use"* ]]; then
  log "${KV_MOUNT}/ is already mounted (it must be KV version 2)"
else
  die "mounting KV v2 at ${KV_MOUNT}/ failed: ${RESP_ERR}"
fi

# 3. JWT auth config: keys from the orchestrator's OIDC discovery document
config="{\"oidc_discovery_url\":$(json_str "$ORCH_DISCOVERY_URL"),\"bound_issuer\":$(json_str "$ORCH_ISSUER")"
if [[ -n "$ORCH_JWT_ALGS" ]]; then
  read -r -a algs <<<"${ORCH_JWT_ALGS//,/ }"
  config+=",\"jwt_supported_algs\":$(json_list "${algs[@]}")"
fi
config+="}"
must_write "auth/${JWT_MOUNT}/config (discovery ${ORCH_DISCOVERY_URL})" "auth/${JWT_MOUNT}/config" "$config"

# 4. per-job database users (optional): the engine, the connection Vault manages users through, a role per pool
if [[ -n "$ORCH_DATABASE_URL" ]]; then
  if vault_write "sys/mounts/${DB_MOUNT}" "{\"type\":\"database\"}"; then
    log "mounted the database secrets engine at ${DB_MOUNT}/"
  elif [[ $RESP_ERR == *"path is already in use"* ]]; then
    log "${DB_MOUNT}/ is already mounted (it must be the database engine)"
  else
    die "mounting the database engine at ${DB_MOUNT}/ failed: ${RESP_ERR}"
  fi
  db_roles=()
  for pool in "${POOLS[@]}"; do db_roles+=("ci-${pool}"); done
  db_password=$(<"$ORCH_DATABASE_PASSWORD_FILE")
  db_password=${db_password%$'\n'}
  connection="{\"plugin_name\":\"postgresql-database-plugin\""
  connection+=",\"connection_url\":$(json_str "$ORCH_DATABASE_URL")"
  connection+=",\"username\":$(json_str "$ORCH_DATABASE_USERNAME"),\"password\":$(json_str "$db_password")"
  connection+=",\"allowed_roles\":$(json_list "${db_roles[@]}"),\"verify_connection\":true}"
  unset db_password
  must_write "database connection ${DB_MOUNT}/config/ci" "${DB_MOUNT}/config/ci" "$connection"
  if [[ "$ORCH_DATABASE_ROTATE_ROOT" == 1 || "$ORCH_DATABASE_ROTATE_ROOT" == true ]]; then
    must_write "rotating ${ORCH_DATABASE_USERNAME}'s password (only Vault knows it now)" \
      "${DB_MOUNT}/rotate-root/ci" "{}"
  fi
  create=("CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}'")
  revoke=()
  if [[ -n "$ORCH_DATABASE_GROUP_ROLE" ]]; then
    # NOINHERIT: the user's own identity has no rights (it cannot own anything a job creates, which would make
    # DROP ROLE fail and keep the user alive); every session starts as the group (SET role) instead.
    create[0]+=" NOINHERIT IN ROLE \"${ORCH_DATABASE_GROUP_ROLE}\""
    create+=("ALTER ROLE \"{{name}}\" SET role = '${ORCH_DATABASE_GROUP_ROLE}'")
    revoke=("DROP ROLE IF EXISTS \"{{name}}\"")
  fi
  for pool in "${POOLS[@]}"; do
    role="{\"db_name\":\"ci\",\"default_ttl\":$(json_str "$ORCH_DATABASE_TTL")"
    role+=",\"max_ttl\":$(json_str "$ORCH_DATABASE_MAX_TTL")"
    role+=",\"creation_statements\":$(json_list "${create[@]}")"
    if ((${#revoke[@]} > 0)); then role+=",\"revocation_statements\":$(json_list "${revoke[@]}")"; fi
    role+="}"
    must_write "database role ${DB_MOUNT}/roles/ci-${pool}" "${DB_MOUNT}/roles/ci-${pool}" "$role"
  done
fi

# 5. policies
must_write "policy ${ORCH_POLICY_PREFIX}orchestrator-revoker" "sys/policies/acl/${ORCH_POLICY_PREFIX}orchestrator-revoker" \
  "{\"policy\":$(json_str "$(<"${POLICY_DIR}/orchestrator-revoker.hcl")")}"

JWT_ACCESSOR=""
if [[ $ORCH_SCOPE == repository ]]; then
  vault_read "sys/auth/${JWT_MOUNT}" || die "reading the accessor of auth/${JWT_MOUNT} failed: ${RESP_ERR}"
  accessor_re='"accessor"[[:space:]]*:[[:space:]]*"(auth_[A-Za-z0-9_]+)"'
  [[ $RESP_BODY =~ $accessor_re ]] || die "no accessor in the answer for sys/auth/${JWT_MOUNT}"
  JWT_ACCESSOR=${BASH_REMATCH[1]}
fi

render_policy() { # render_policy TEMPLATE POOL: a policies/ template for pool $2, without its comment lines
  local file=$1 pool=$2 line out=""
  while IFS= read -r line || [[ -n $line ]]; do
    [[ $line =~ ^[[:space:]]*# ]] && continue
    line=${line//@KV_MOUNT@/$KV_MOUNT}
    line=${line//@DB_MOUNT@/$DB_MOUNT}
    line=${line//@JWT_ACCESSOR@/$JWT_ACCESSOR}
    out+="${line//@POOL@/$pool}"$'\n'
  done <"${POLICY_DIR}/${file}"
  printf '%s' "$out"
}

for pool in "${POOLS[@]}"; do
  hcl="# ${ORCH_POLICY_PREFIX}ci-${pool}-read: rendered by setup-vault.sh from policies/${POOL_POLICY_TEMPLATE}"$'\n'
  hcl+=$(render_policy "$POOL_POLICY_TEMPLATE" "$pool")
  if [[ -n "$ORCH_DATABASE_URL" ]]; then hcl+=$'\n'$(render_policy ci-pool-database.hcl "$pool"); fi
  must_write "policy ${ORCH_POLICY_PREFIX}ci-${pool}-read (scope: ${ORCH_SCOPE})" \
    "sys/policies/acl/${ORCH_POLICY_PREFIX}ci-${pool}-read" "{\"policy\":$(json_str "$hcl")}"
done

# 6. one role per pool
for pool in "${POOLS[@]}"; do
  role="{\"role_type\":\"jwt\""
  role+=",\"user_claim\":\"sub\""
  role+=",\"bound_audiences\":$(json_list "$ORCH_AUDIENCE")"
  role+=",\"bound_claims_type\":\"string\""
  role+=",\"bound_claims\":{\"pool\":$(json_str "$pool")}"
  role+=",\"claim_mappings\":{\"repository\":\"repository\",\"pool\":\"pool\""
  role+=",\"repository_owner\":\"repository_owner\",\"repository_name\":\"repository_name\"}"
  role+=",\"token_policies\":$(json_list "${ORCH_POLICY_PREFIX}ci-${pool}-read")"
  role+=",\"token_ttl\":$(json_str "$TOKEN_TTL")"
  role+=",\"token_max_ttl\":$(json_str "$TOKEN_MAX_TTL")"
  role+=",\"token_type\":\"service\""
  role+="}"
  must_write "role ci-${pool}" "auth/${JWT_MOUNT}/role/ci-${pool}" "$role"
done

# 7. the orchestrator's revoker token
if [[ "$ORCH_CREATE_REVOKER_TOKEN" == 1 || "$ORCH_CREATE_REVOKER_TOKEN" == true ]]; then
  [[ -n "$ORCH_REVOKER_TOKEN_FILE" ]] || die "ORCH_CREATE_REVOKER_TOKEN needs ORCH_REVOKER_TOKEN_FILE"
  request="{\"policies\":[$(json_str "${ORCH_POLICY_PREFIX}orchestrator-revoker")],\"period\":$(json_str "$ORCH_REVOKER_PERIOD")"
  request+=",\"display_name\":\"orchestrator-revoker\",\"renewable\":true}"
  vault_write "auth/token/create-orphan" "$request" || die "creating the revoker token failed: ${RESP_ERR}"
  client_token_re='"client_token"[[:space:]]*:[[:space:]]*"([^"]+)"'
  [[ $RESP_BODY =~ $client_token_re ]] || die "no client_token in the token creation response"
  (
    umask 077
    printf '%s\n' "${BASH_REMATCH[1]}" >"$ORCH_REVOKER_TOKEN_FILE"
  )
  log "created the orchestrator-revoker token; written to ${ORCH_REVOKER_TOKEN_FILE}"
else
  cat >&2 <<EOF
setup-vault: done. Now create the orchestrator's revoker token (it may only revoke job tokens by accessor):
    vault token create -orphan -policy=${ORCH_POLICY_PREFIX}orchestrator-revoker -period=${ORCH_REVOKER_PERIOD} \\
        -display-name=orchestrator-revoker -field=token > /etc/orchestrator/vault-revoker-token
    chmod 0600 /etc/orchestrator/vault-revoker-token
  (or re-run this script with ORCH_CREATE_REVOKER_TOKEN=1 ORCH_REVOKER_TOKEN_FILE=<path>)
EOF
fi
log "jobs log in with: POST ${VAULT_ADDR}/v1/auth/${JWT_MOUNT}/login {\"role\": \"ci-<pool>\", \"jwt\": <job JWT>}"
