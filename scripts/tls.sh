#!/usr/bin/env bash
# The team stack's TLS files: a small CA of its own and a server certificate for the names other
# machines use, or the team's own certificate and key.
#
#   scripts/tls.sh DIR NAME...    make DIR/ca.crt, DIR/server.crt and DIR/server.key (idempotent)
#
# NAME: an IP address or a DNS name clients connect to (the first is the stack's HOST). With
# TLS_CERT and TLS_KEY set (and TLS_CA, the CA that signed them, when it is not a public one),
# those are copied in instead and nothing is made. Keys are mode 600, certificates 640; only ca.crt goes to clients.
set -euo pipefail
[[ $# -ge 2 ]] || { echo "usage: $0 DIR NAME..."; exit 2; }
dir=$1; shift
mkdir -p "$dir"
chmod 700 "$dir"

if [[ -n ${TLS_CERT:-} || -n ${TLS_KEY:-} ]]; then
  [[ -f ${TLS_CERT:-} && -f ${TLS_KEY:-} ]] || { echo "TLS_CERT and TLS_KEY must both name files" >&2; exit 2; }
  install -m 640 "$TLS_CERT" "$dir/server.crt"
  install -m 600 "$TLS_KEY" "$dir/server.key"
  install -m 640 "${TLS_CA:-$TLS_CERT}" "$dir/ca.crt"
  echo "tls: the team's certificate $TLS_CERT"
  exit 0
fi

subject_names() {  # IP:a,DNS:b,... for the certificate's subjectAltName
  local name list=()
  for name in "$@"; do
    if [[ $name =~ ^[0-9.]+$ || $name == *:* ]]; then list+=("IP:$name"); else list+=("DNS:$name"); fi
  done
  (IFS=,; echo "${list[*]}")
}
names=$(subject_names "$@")

umask 077
if [[ ! -f $dir/ca.key ]]; then
  openssl req -x509 -newkey rsa:3072 -sha256 -days 1825 -nodes -keyout "$dir/ca.key" -out "$dir/ca.crt" \
    -subj "/CN=skillops team stack CA" -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
  chmod 640 "$dir/ca.crt"
fi
# A new server certificate when the names change (another HOST), else the one there is kept.
if [[ ! -f $dir/server.crt || $(cat "$dir/server.names" 2>/dev/null) != "$names" ]]; then
  openssl req -newkey rsa:3072 -sha256 -nodes -keyout "$dir/server.key" -out "$dir/server.csr" \
    -subj "/CN=$1" 2>/dev/null
  openssl x509 -req -in "$dir/server.csr" -CA "$dir/ca.crt" -CAkey "$dir/ca.key" -CAcreateserial \
    -days 825 -sha256 -out "$dir/server.crt" \
    -extfile <(printf 'subjectAltName=%s\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n' "$names") 2>/dev/null
  rm -f "$dir/server.csr"
  chmod 640 "$dir/server.crt"
  echo "$names" >"$dir/server.names"
  echo "tls: server certificate for $names, signed by the stack's CA ($dir/ca.crt)"
fi
