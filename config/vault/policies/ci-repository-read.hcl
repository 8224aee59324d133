# Read-only access for CI jobs of one runner pool, scoped to the job's repository (ORCH_SCOPE=repository).
#
# A TEMPLATE like ci-pool-read.hcl: setup-vault.sh replaces @KV_MOUNT@, @POOL@ and @JWT_ACCESSOR@ (the JWT
# auth mount's accessor, e.g. auth_jwt_1a2b3c4d) and stores the result as "ci-<pool>-read". The JWT role maps
# the job JWT's "repository_owner" and "repository_name" claims (present for owner/name repositories) into the
# token's entity-alias metadata (claim_mappings), and Vault fills the {{identity...}} placeholders from them at
# every request. The two segments are templated separately because Vault refuses to substitute a value
# containing "/" (and then fails the token's whole ACL). A job whose repository is not owner/name has no such
# metadata: the templated path then matches nothing, and it reads the pool-wide secrets only.
#
# "+" matches exactly one path segment, so:
#   ci/<pool>/<name>                  pool-wide secrets, readable by every repository of the pool;
#   ci/<pool>/<owner>/<repo>/<name>   the secrets of that repository alone.
# No other repository's path matches, and no job can list what else exists.
path "@KV_MOUNT@/data/ci/@POOL@/+" {
  capabilities = ["read"]
}

path "@KV_MOUNT@/data/ci/@POOL@/{{identity.entity.aliases.@JWT_ACCESSOR@.metadata.repository_owner}}/{{identity.entity.aliases.@JWT_ACCESSOR@.metadata.repository_name}}/+" {
  capabilities = ["read"]
}
