#!/bin/sh
# Loads the carve server's Vault policies and, optionally, gives them to responders. Uses only the `vault` CLI and
# POSIX sh (it runs in the hashicorp/vault image, which has no bash). Idempotent: run it again after changes.
#
#   VAULT_ADDR=https://vault.example.com:8200 VAULT_TOKEN=<a token that may write policies> vault/setup.sh
#
# Optional, all by environment:
#   CARVE_VAULT_GROUP=ir-responders          an identity group (internal) that gets osquery-carve-download
#   CARVE_VAULT_ADMIN_GROUP=ir-leads         an identity group that gets osquery-carve-download + osquery-carve-admin
#   CARVE_VAULT_USERPASS_USER=responder      a userpass login with osquery-carve-download (demo / break-glass)
#   CARVE_VAULT_USERPASS_PASSWORD=...        its password (required with CARVE_VAULT_USERPASS_USER)
#   CARVE_VAULT_TOKEN_TTL=1h                 ttl of the tokens those logins get (default 1h, max 8h)
#   VAULT_NAMESPACE=security/ir              Vault Enterprise / OpenBao namespace (the CLI reads it itself)
#
# Policy names must match the service's CARVE_VAULT_POLICY / CARVE_VAULT_ADMIN_POLICY (these defaults).
set -eu

here=$(cd "$(dirname "$0")" && pwd)
download_policy=osquery-carve-download
admin_policy=osquery-carve-admin
ttl=${CARVE_VAULT_TOKEN_TTL:-1h}

: "${VAULT_ADDR:?set VAULT_ADDR (e.g. https://vault.example.com:8200)}"
command -v vault >/dev/null 2>&1 || { echo "setup.sh: the vault CLI is required" >&2; exit 2; }

# Wait for Vault (docker compose starts us right after it); sealed or unreachable Vault fails after ~30 s.
tries=0
until vault status >/dev/null 2>&1; do
  tries=$((tries + 1))
  if [ "$tries" -ge 30 ]; then
    echo "setup.sh: Vault at $VAULT_ADDR is not reachable or sealed" >&2
    vault status >&2 || true
    exit 1
  fi
  sleep 1
done

echo "policies:"
vault policy write "$download_policy" "$here/osquery-carve-download.hcl"
vault policy write "$admin_policy" "$here/osquery-carve-admin.hcl"
# Importing archives collected out of band (POST /api/v1/carves/import) is its own right.
vault policy write "${CARVE_VAULT_IMPORT_POLICY:-osquery-carve-import}" "$here/osquery-carve-import.hcl"

# --- identity groups: the recommended way (policies follow people, apply live, no token re-issue) -------------
# An internal group with members added by entity id. With OIDC/LDAP, use an external group instead and alias it to
# the IdP's group (see vault/README.md); the policies are attached the same way.
if [ -n "${CARVE_VAULT_GROUP:-}" ]; then
  echo "identity group $CARVE_VAULT_GROUP -> $download_policy"
  vault write "identity/group/name/$CARVE_VAULT_GROUP" type=internal policies="$download_policy" >/dev/null
fi
if [ -n "${CARVE_VAULT_ADMIN_GROUP:-}" ]; then
  echo "identity group $CARVE_VAULT_ADMIN_GROUP -> $download_policy, $admin_policy"
  vault write "identity/group/name/$CARVE_VAULT_ADMIN_GROUP" type=internal policies="$download_policy,$admin_policy" >/dev/null
fi

# --- userpass: a responder login for the docker-compose demo or a break-glass account -------------------------
if [ -n "${CARVE_VAULT_USERPASS_USER:-}" ]; then
  : "${CARVE_VAULT_USERPASS_PASSWORD:?set CARVE_VAULT_USERPASS_PASSWORD for CARVE_VAULT_USERPASS_USER}"
  if ! vault auth list 2>/dev/null | grep -q '^userpass/'; then
    vault auth enable userpass >/dev/null
  fi
  echo "userpass login $CARVE_VAULT_USERPASS_USER -> $download_policy (token ttl $ttl)"
  vault write "auth/userpass/users/$CARVE_VAULT_USERPASS_USER" \
    password="$CARVE_VAULT_USERPASS_PASSWORD" \
    token_policies="$download_policy" token_ttl="$ttl" token_max_ttl=8h >/dev/null
fi

cat <<'NOTE'
done. Examples (not run):
  # a responder logs in and checks what the token may do
  vault login -method=userpass username=responder
  vault token capabilities osquery-carves/<carve_id>            # read, list
  # OIDC: give the policy to an OIDC role (auth/oidc must already be configured with your IdP)
  vault write auth/oidc/role/ir-responder user_claim=email allowed_redirect_uris=... \
    bound_claims='{"groups":["ir-responders"]}' token_policies=osquery-carve-download token_ttl=1h
NOTE
