#!/bin/sh
# Checks mosquitto.conf and grid.acl end to end on this machine: generates throw-away
# certificates, starts Mosquitto with the production config on 127.0.0.1:18883, and verifies that
# a device reaches only its own topics, the server's shared subscription gets uplinks, and a client
# without a certificate is refused. Needs mosquitto, mosquitto-clients and openssl. Exit 0 = pass.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
dir=$(mktemp -d)
trap 'kill "$pid" 2>/dev/null || true; [ "${KEEP:-}" ] || rm -rf "$dir"' EXIT
"$here/gen-certs.sh" "$dir" localhost bat-1 bat-2 >/dev/null 2>&1
chmod 755 "$dir"; chmod 644 "$dir"/*.key   # mosquitto drops root privileges before reading them
cp "$here/grid.acl" "$dir/"
sed -e "s|/etc/mosquitto/certs|$dir|g" -e "s|/etc/mosquitto/grid.acl|$dir/grid.acl|" \
    -e 's|^listener 8883|listener 18883 127.0.0.1|' -e 's|^persistence true|persistence false|' \
    "$here/mosquitto.conf" > "$dir/test.conf"
mosquitto -c "$dir/test.conf" > "$dir/broker.log" 2>&1 &
pid=$!
sleep 1
cd "$dir"
S="--cafile ca.crt -h localhost -p 18883"
timeout 4 mosquitto_sub $S --cert grid-server.crt --key grid-server.key -i srv \
  -t '$share/grid-server/grid/v1/+/up/+' -v > server.out 2>&1 &
timeout 4 mosquitto_sub $S --cert bat-1.crt --key bat-1.key -i bat-1 \
  -t 'grid/v1/bat-1/down/#' -t 'grid/v1/bat-2/down/#' -v > device.out 2>&1 &
sleep 1
mosquitto_pub $S --cert bat-1.crt --key bat-1.key -i p1 -q 1 -t grid/v1/bat-1/up/ack -m own
mosquitto_pub $S --cert bat-1.crt --key bat-1.key -i p1 -q 1 -t grid/v1/bat-2/up/ack -m spoofed
mosquitto_pub $S --cert bat-1.crt --key bat-1.key -i p1 -q 1 -t grid/v1/bat-1/down/schedule -m forged
mosquitto_pub $S --cert grid-server.crt --key grid-server.key -i p2 -q 1 -t grid/v1/bat-1/down/schedule -m mine
mosquitto_pub $S --cert grid-server.crt --key grid-server.key -i p2 -q 1 -t grid/v1/bat-2/down/schedule -m other
if mosquitto_pub $S -i anon -t grid/v1/bat-1/up/ack -m nocert 2>/dev/null; then
  echo "FAIL: a client without certificate was accepted"; exit 1
fi
sleep 3
fail=0
[ "$(cat server.out)" = "grid/v1/bat-1/up/ack own" ] || { echo "FAIL: server saw: $(cat server.out)"; fail=1; }
[ "$(cat device.out)" = "grid/v1/bat-1/down/schedule mine" ] || { echo "FAIL: device saw: $(cat device.out)"; fail=1; }
[ $fail = 0 ] && echo "PASS: TLS client certificates and the ACL confine devices to their own topics"
exit $fail
