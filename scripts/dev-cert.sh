#!/bin/sh
# dev-cert.sh DIR - make a self-signed development certificate for localhost
# (ECDSA P-256, 825 days) as DIR/dev.crt and DIR/dev.key, unless both exist.
# Never for production; conf/certs/ is git-ignored.
set -eu

dir=${1:?usage: dev-cert.sh DIR}
crt="$dir/dev.crt"
key="$dir/dev.key"

if [ -f "$crt" ] && [ -f "$key" ]; then
    exit 0
fi

mkdir -p "$dir"
umask 077
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -days 825 -subj "/CN=localhost" \
    -addext "subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1" \
    -keyout "$key.tmp" -out "$crt.tmp" 2>/dev/null
chmod 600 "$key.tmp"
chmod 644 "$crt.tmp"
mv "$key.tmp" "$key"
mv "$crt.tmp" "$crt"
echo "dev-cert: wrote $crt and $key (self-signed, for localhost)"
