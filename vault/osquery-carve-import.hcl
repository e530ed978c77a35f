# osquery-carve-import: evidence custodians who may import archives collected out of band (a carve that failed on
# the host, an EDR export, a file copied by hand) as new carves: POST /api/v1/carves/import, see
# docs/import-and-verify.md. It grants nothing else: give osquery-carve-download too so importers can see, download
# and verify what they imported.
#
# policy mode (default): the token's policies or identity_policies must contain this policy's NAME
# (CARVE_VAULT_IMPORT_POLICY, default osquery-carve-import). capabilities mode: "create" on
# osquery-carves-import/import (CARVE_VAULT_IMPORT_PATH). That path is a name for authorization only: no secrets
# engine needs to be mounted there; do not mount one there.
path "osquery-carves-import/import" {
  capabilities = ["create"]
}
