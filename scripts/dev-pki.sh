#!/usr/bin/env bash
# Development PKI for the mutual-TLS front: a CA, the server certificate NGINX presents, agent client certificates
# and a responder client certificate, made with openssl. FOR DEVELOPMENT AND TESTS ONLY: the keys are unencrypted
# and the CA key sits next to the certificates. The output directory (default ./pki) is git-ignored: never commit
# what this script makes.
#
# usage: scripts/dev-pki.sh [options] [DIR]
#   DIR                    output directory (default ./pki); created if missing
#   --server-name NAME     extra DNS name (or IP address) for the server certificate, besides DNS:localhost and
#                          IP:127.0.0.1 (repeatable; e.g. the --tls_hostname agents use, without the port)
#   --agent NAME           make an agent client certificate agents/NAME.{pem,key} (repeatable; default: agent-1)
#   --responder NAME       CN of the responder client certificate (default: responder-1)
#   --other-ca             also make a second, unrelated CA and an agent certificate from it (other-ca/), for
#                          tests that a certificate from another CA is refused
#   --days N               validity of every certificate (default 825)
#   --key-type ec|rsa      ec: P-256 (default, fast); rsa: 2048-bit (3072 for CAs)
#   --force                overwrite an existing PKI in DIR (otherwise existing files are kept and reused)
#
# Output (PEM):
#   ca.pem ca.key                        the dev CA: agents' --tls_server_certs, NGINX_AGENT_CA, NGINX_RESPONDER_CA
#   server.pem server.key                NGINX's certificate (serverAuth; SAN localhost, 127.0.0.1, --server-name)
#   server-chain.pem                     server.pem followed by ca.pem
#   agents/NAME.pem agents/NAME.key      agent client certificates (clientAuth): --tls_client_cert/--tls_client_key
#   responder.pem responder.key          a responder's client certificate (clientAuth), for
#                                        NGINX_RESPONDER_VERIFY_CLIENT=optional|on
#   other-ca/ca.pem other-ca/agent.pem other-ca/agent.key   (with --other-ca)
set -euo pipefail

out=./pki
server_names=()
agents=()
responder="responder-1"
other_ca=false
days=825
key_type=ec
force=false

die() {
  echo "dev-pki: $*" >&2
  exit 2
}

while [ $# -gt 0 ]; do
  case "$1" in
    --server-name) [ $# -ge 2 ] || die "--server-name needs a value"; server_names+=("$2"); shift 2 ;;
    --agent) [ $# -ge 2 ] || die "--agent needs a value"; agents+=("$2"); shift 2 ;;
    --responder) [ $# -ge 2 ] || die "--responder needs a value"; responder=$2; shift 2 ;;
    --other-ca) other_ca=true; shift ;;
    --days) [ $# -ge 2 ] || die "--days needs a value"; days=$2; shift 2 ;;
    --key-type) [ $# -ge 2 ] || die "--key-type needs a value"; key_type=$2; shift 2 ;;
    --force) force=true; shift ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    -*) die "unknown option $1 (see --help)" ;;
    *) out=$1; shift ;;
  esac
done
[ ${#agents[@]} -gt 0 ] || agents=(agent-1)
command -v openssl >/dev/null || die "openssl is required"
[[ "$days" =~ ^[0-9]+$ ]] || die "--days must be a number"
case "$key_type" in
  ec) ca_key=(-newkey ec -pkeyopt ec_paramgen_curve:P-256); leaf_key=("${ca_key[@]}"); leaf_usage=digitalSignature ;;
  rsa) ca_key=(-newkey rsa:3072); leaf_key=(-newkey rsa:2048); leaf_usage=digitalSignature,keyEncipherment ;;
  *) die "--key-type must be ec or rsa" ;;
esac

# Names become file names and CNs: keep them boring.
for name in "${agents[@]}" "$responder"; do
  [[ "$name" =~ ^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$ ]] || die "invalid certificate name: $name"
done

mkdir -p "$out/agents"
umask 077
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
made=()

# new_ca DIR CN: a self-signed CA (key usage keyCertSign/cRLSign, pathlen 1 so an intermediate is possible).
new_ca() {
  local dir=$1 cn=$2
  if [ -s "$dir/ca.pem" ] && [ -s "$dir/ca.key" ] && [ "$force" = false ]; then return; fi
  mkdir -p "$dir"
  openssl req -x509 "${ca_key[@]}" -sha256 -nodes -days "$days" \
    -keyout "$dir/ca.key" -out "$dir/ca.pem" -subj "/O=osquery-carve-server dev/CN=$cn" \
    -addext "basicConstraints=critical,CA:TRUE,pathlen:1" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -addext "subjectKeyIdentifier=hash" 2>/dev/null
  made+=("$dir/ca.pem" "$dir/ca.key")
}

# issue CA_DIR OUT_BASE SUBJECT EXTFILE: a key and a certificate signed by the CA in CA_DIR.
issue() {
  local ca_dir=$1 base=$2 subject=$3 ext=$4
  if [ -s "$base.pem" ] && [ -s "$base.key" ] && [ "$force" = false ]; then return; fi
  openssl req -new "${leaf_key[@]}" -sha256 -nodes -keyout "$base.key" -out "$work/req.csr" -subj "$subject" 2>/dev/null
  openssl x509 -req -in "$work/req.csr" -CA "$ca_dir/ca.pem" -CAkey "$ca_dir/ca.key" -CAcreateserial \
    -CAserial "$work/ca.srl" -days "$days" -sha256 -extfile "$ext" -out "$base.pem" 2>/dev/null
  made+=("$base.pem" "$base.key")
}

client_ext="$work/client.ext"
cat >"$client_ext" <<EOF
basicConstraints=critical,CA:FALSE
keyUsage=critical,$leaf_usage
extendedKeyUsage=clientAuth
subjectKeyIdentifier=hash
authorityKeyIdentifier=keyid
EOF

san="DNS:localhost,IP:127.0.0.1"
for name in "${server_names[@]+"${server_names[@]}"}"; do
  if [[ "$name" =~ ^[0-9.]+$ || "$name" == *:* ]]; then san+=",IP:$name"; else san+=",DNS:$name"; fi
done
server_ext="$work/server.ext"
cat >"$server_ext" <<EOF
basicConstraints=critical,CA:FALSE
keyUsage=critical,$leaf_usage
extendedKeyUsage=serverAuth
subjectAltName=$san
subjectKeyIdentifier=hash
authorityKeyIdentifier=keyid
EOF

new_ca "$out" "osquery-carve dev CA"
server_cn=${server_names[0]:-localhost}
issue "$out" "$out/server" "/O=osquery-carve-server dev/CN=$server_cn" "$server_ext"
cat "$out/server.pem" "$out/ca.pem" >"$out/server-chain.pem"
for name in "${agents[@]}"; do
  issue "$out" "$out/agents/$name" "/O=osquery-carve-server dev/OU=agents/CN=$name" "$client_ext"
done
issue "$out" "$out/responder" "/O=osquery-carve-server dev/OU=responders/CN=$responder" "$client_ext"

if [ "$other_ca" = true ]; then
  new_ca "$out/other-ca" "some other CA"
  issue "$out/other-ca" "$out/other-ca/agent" "/O=somebody else/OU=agents/CN=${agents[0]}" "$client_ext"
fi

# Certificates are public; keys stay readable by the owner only (umask 077 above).
find "$out" -name '*.pem' -exec chmod 0644 {} +
chmod 0755 "$out" "$out/agents"
[ -d "$out/other-ca" ] && chmod 0755 "$out/other-ca"

echo "dev PKI in $out (development only: never commit these keys)"
if [ ${#made[@]} -eq 0 ]; then
  echo "  nothing new: every file already existed (use --force to remake them)"
else
  for f in "${made[@]}"; do echo "  made $f"; done
fi
echo "  server certificate: $(openssl x509 -in "$out/server.pem" -noout -ext subjectAltName | tail -n +2 | sed 's/^ *//')"
echo "  agents:    ${agents[*]}"
echo "  responder: $responder"
