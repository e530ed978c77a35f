#!/bin/sh
# Renders nginx/templates into OUTPUT_DIR the way the official nginx image does at start (envsubst of the
# template variables only: NGINX's own $variables are left alone), for an NGINX that is not that image, e.g.
# Debian's package:
#
#   set -a; . /etc/osquery-carve/nginx.env; set +a        # NGINX_AGENT_LISTEN=443, ... (nginx/README.md)
#   nginx/render.sh /etc/nginx/conf.d && nginx -t && systemctl reload nginx
#
# OUTPUT_DIR must be the conf.d/ directory next to nginx.conf (the includes say conf.d/carve-server.d/...), and
# nginx.conf must include conf.d/*.conf in its http {} block (Debian's and the official image's do).
# Refuses to render when a variable the templates use is not set (FLEET_* may be unset with NGINX_FLEET_MANAGER=off).
set -eu

out=${1:?usage: nginx/render.sh OUTPUT_DIR   (e.g. /etc/nginx/conf.d)}
templates=$(cd "$(dirname "$0")" && pwd)/templates
command -v envsubst >/dev/null 2>&1 || { echo "render.sh: envsubst is required (Debian: gettext-base)" >&2; exit 2; }

names=$(grep -rhoE '\$\{[A-Z_][A-Z0-9_]*\}' "$templates" | sed 's/^\${//; s/}$//' | sort -u)
missing=""
shell_format=""
for name in $names; do
  eval "value_set=\${$name+x}"
  if [ -z "$value_set" ]; then
    case "$name" in
      FLEET_*) [ "${NGINX_FLEET_MANAGER:-}" = off ] && continue ;;
    esac
    missing="$missing $name"
  fi
  shell_format="$shell_format \${$name}"
done
if [ -n "$missing" ]; then
  echo "render.sh: not set:$missing" >&2
  exit 2
fi

cd "$templates"
find . -type f -name '*.template' | while read -r template; do
  target="$out/${template#./}"
  target=${target%.template}
  mkdir -p "$(dirname "$target")"
  envsubst "$shell_format" <"$template" >"$target"
  echo "rendered $target"
done
