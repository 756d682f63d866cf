#!/bin/sh
# Generates a private CA, the broker's certificate, one client certificate for the server
# replicas (CN grid-server) and one per device (CN = device id), for the TLS client-certificate
# setup of mosquitto.conf. Usage:
#
#   deploy/mosquitto/gen-certs.sh OUT_DIR BROKER_HOSTNAME [DEVICE_ID ...]
#
# Keep ca.key offline; copy ca.crt, broker.crt and broker.key to /etc/mosquitto/certs/, give the
# server grid-server.{crt,key} and ca.crt, and each device its own {id}.{crt,key} and ca.crt.
set -eu
out=${1:?usage: gen-certs.sh OUT_DIR BROKER_HOSTNAME [DEVICE_ID ...]}
host=${2:?usage: gen-certs.sh OUT_DIR BROKER_HOSTNAME [DEVICE_ID ...]}
shift 2
mkdir -p "$out"
cd "$out"

if [ ! -f ca.key ]; then
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 3650 \
    -subj "/CN=grid fleet CA" -keyout ca.key -out ca.crt
fi

# client_cert NAME: a key and a certificate whose common name is NAME (the MQTT user name).
client_cert() {
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$1" \
    -keyout "$1.key" -out "$1.csr"
  printf 'extendedKeyUsage = clientAuth\n' > "$1.ext"
  openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days 825 \
    -extfile "$1.ext" -out "$1.crt"
  rm -f "$1.csr" "$1.ext"
}

# The broker: a server certificate for its host name (and localhost for local tests).
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$host" \
  -keyout broker.key -out broker.csr
printf 'subjectAltName = DNS:%s, DNS:localhost, IP:127.0.0.1\nextendedKeyUsage = serverAuth\n' "$host" > broker.ext
openssl x509 -req -in broker.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 825 \
  -extfile broker.ext -out broker.crt
rm -f broker.csr broker.ext

client_cert grid-server
for device in "$@"; do
  client_cert "$device"
done
chmod 600 ./*.key
echo "certificates in $out"
