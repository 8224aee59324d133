# Per-job database users for one pool: appended to "ci-<pool>-read" when setup-vault.sh configures the
# database secrets engine (ORCH_DATABASE_URL). Reading this path creates a database user whose lease belongs
# to the job's token; revoking the token when the job ends revokes the lease, and Vault drops the user.
path "@DB_MOUNT@/creds/ci-@POOL@" {
  capabilities = ["read"]
}
