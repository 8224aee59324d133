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
#   * per pool P: the ACL policy "ci-P-read" (read on ${KV_MOUNT}/data/ci/P/* only, rendered from
#     policies/ci-pool-read.hcl) and the JWT role "ci-P": role_type jwt, bound_audiences
#     [${ORCH_AUDIENCE}], bound_claims {"pool": "P"}, user_claim "sub", token_policies ["ci-P-read"],
#     token_ttl ${TOKEN_TTL}, token_max_ttl ${TOKEN_MAX_TTL}, token_type service;
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
#   VAULT_SETUP_MODE           auto (default: the vault CLI when installed, else curl) | cli | curl
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
for d in "$TOKEN_TTL" "$TOKEN_MAX_TTL" "$ORCH_REVOKER_PERIOD"; do
  [[ "$d" =~ $duration_re ]] || die "invalid duration: '$d' (e.g. 900, 15m, 2h, 1h30m)"
done
[[ -r "${POLICY_DIR}/ci-pool-read.hcl" && -r "${POLICY_DIR}/orchestrator-revoker.hcl" ]] ||
  die "policy files missing in ${POLICY_DIR}"

case "$VAULT_SETUP_MODE" in
auto) if command -v vault >/dev/null 2>&1; then MODE=cli; else MODE=curl; fi ;;
cli | curl) MODE=$VAULT_SETUP_MODE ;;
*) die "VAULT_SETUP_MODE must be auto, cli or curl" ;;
esac
if [[ $MODE == cli ]]; then
  command -v vault >/dev/null 2>&1 || die "vault CLI not found"
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
    if vault write -format=json "$path" - <<<"$body" >"$out" 2>"$err"; then
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

# 4. policies
revoker_hcl=$(<"${POLICY_DIR}/orchestrator-revoker.hcl")
must_write "policy orchestrator-revoker" "sys/policies/acl/orchestrator-revoker" \
  "{\"policy\":$(json_str "$revoker_hcl")}"

render_pool_policy() { # the ci-pool-read.hcl template for pool $1, without its comment lines
  local pool=$1 line out
  out="# ci-${pool}-read: rendered by setup-vault.sh from policies/ci-pool-read.hcl"$'\n'
  while IFS= read -r line || [[ -n $line ]]; do
    [[ $line =~ ^[[:space:]]*# ]] && continue
    line=${line//@KV_MOUNT@/$KV_MOUNT}
    out+="${line//@POOL@/$pool}"$'\n'
  done <"${POLICY_DIR}/ci-pool-read.hcl"
  printf '%s' "$out"
}

for pool in "${POOLS[@]}"; do
  hcl=$(render_pool_policy "$pool")
  must_write "policy ci-${pool}-read" "sys/policies/acl/ci-${pool}-read" "{\"policy\":$(json_str "$hcl")}"
done

# 5. one role per pool
for pool in "${POOLS[@]}"; do
  role="{\"role_type\":\"jwt\""
  role+=",\"user_claim\":\"sub\""
  role+=",\"bound_audiences\":$(json_list "$ORCH_AUDIENCE")"
  role+=",\"bound_claims_type\":\"string\""
  role+=",\"bound_claims\":{\"pool\":$(json_str "$pool")}"
  role+=",\"token_policies\":$(json_list "ci-${pool}-read")"
  role+=",\"token_ttl\":$(json_str "$TOKEN_TTL")"
  role+=",\"token_max_ttl\":$(json_str "$TOKEN_MAX_TTL")"
  role+=",\"token_type\":\"service\""
  role+="}"
  must_write "role ci-${pool}" "auth/${JWT_MOUNT}/role/ci-${pool}" "$role"
done

# 6. the orchestrator's revoker token
if [[ "$ORCH_CREATE_REVOKER_TOKEN" == 1 || "$ORCH_CREATE_REVOKER_TOKEN" == true ]]; then
  [[ -n "$ORCH_REVOKER_TOKEN_FILE" ]] || die "ORCH_CREATE_REVOKER_TOKEN needs ORCH_REVOKER_TOKEN_FILE"
  request="{\"policies\":[\"orchestrator-revoker\"],\"period\":$(json_str "$ORCH_REVOKER_PERIOD")"
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
    vault token create -orphan -policy=orchestrator-revoker -period=${ORCH_REVOKER_PERIOD} \\
        -display-name=orchestrator-revoker -field=token > /etc/orchestrator/vault-revoker-token
    chmod 0600 /etc/orchestrator/vault-revoker-token
  (or re-run this script with ORCH_CREATE_REVOKER_TOKEN=1 ORCH_REVOKER_TOKEN_FILE=<path>)
EOF
fi
log "jobs log in with: POST ${VAULT_ADDR}/v1/auth/${JWT_MOUNT}/login {\"role\": \"ci-<pool>\", \"jwt\": <job JWT>}"
