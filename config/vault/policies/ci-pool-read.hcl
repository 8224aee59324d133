# Read-only access for CI jobs of one runner pool.
#
# This file is a TEMPLATE: setup-vault.sh renders it once per pool, replacing
#   @KV_MOUNT@ with the KV v2 mount (default "secret") and
#   @POOL@     with the pool name,
# drops these comment lines and stores the result as the ACL policy "ci-<pool>-read", which the
# JWT role "ci-<pool>" attaches to every job token. KV v2 reads go through "<mount>/data/<path>",
# so that is the only path granted; no list/metadata access, so a job cannot enumerate the other
# secrets of its pool.
path "@KV_MOUNT@/data/ci/@POOL@/*" {
  capabilities = ["read"]
}
