# Policy "orchestrator-revoker": the only thing the orchestrator's own long-lived token may do is revoke
# per-job tokens by their accessor when a job ends or is cancelled (job tokens are orphans, so they are
# not revoked with a parent). Token self-maintenance (lookup-self / renew-self) comes from Vault's built-in
# "default" policy. It can neither read secrets nor look tokens up.
path "auth/token/revoke-accessor" {
  capabilities = ["update"]
}
