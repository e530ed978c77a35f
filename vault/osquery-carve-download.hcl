# osquery-carve-download: responders who may list carves, read their metadata and file lists, and download them.
#
# The carve service asks Vault about the token a responder sends, in one of two ways (CARVE_VAULT_AUTH_MODE):
#   policy        (default) the token's policies or identity_policies (auth/token/lookup-self) must contain the
#                 NAME of this policy (CARVE_VAULT_POLICY, default osquery-carve-download); its rules are not read.
#   capabilities  the service asks sys/capabilities-self about osquery-carves/<carve_id> ("read" to read or download
#                 one carve) and osquery-carves/ ("list" to list them), so these rules are what counts, and they can
#                 be narrowed (per carve id, deny rules, templated paths) without touching the service.
#
# osquery-carves/ is a name for authorization only: no secrets engine needs to be mounted there (capabilities are
# computed from policies alone). Do not mount one there: this policy would let responders read it.
path "osquery-carves/*" {
  capabilities = ["read", "list"]
}
