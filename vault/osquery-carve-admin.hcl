# osquery-carve-admin: carve administrators who may also delete carves, place and lift legal holds, and read the
# audit trail. Give it on top of osquery-carve-download (an admin usually downloads too).
#
# policy mode (default): the token's policies or identity_policies must contain this policy's NAME
# (CARVE_VAULT_ADMIN_POLICY, default osquery-carve-admin). capabilities mode: "delete" on osquery-carves/<carve_id>
# to delete, "update" for legal holds, and "read" on osquery-carves-admin/audit (CARVE_VAULT_AUDIT_PATH) for the
# audit trail. Neither path needs a mounted secrets engine; do not mount one there.
path "osquery-carves/*" {
  capabilities = ["read", "list", "delete", "update"]
}

path "osquery-carves-admin/*" {
  capabilities = ["read"]
}
