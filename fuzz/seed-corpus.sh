#!/usr/bin/env bash
# Seeds fuzz/corpus/<target>/ with the golden vectors of grid-proto/tests/golden/ (the exact
# payloads of docs/protocol.md), so every fuzz target starts from valid messages.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
golden="$here/../grid-proto/tests/golden"
corpus="$here/corpus"
mkdir -p "$corpus"/{decode_json,decode_cbor,topic_parse,verify_signature,inbox_message}
for f in "$golden"/*.json; do
    name="$(basename "$f" .json)"
    # The files end with one newline that is not part of the payload.
    printf '%s' "$(cat "$f")" > "$corpus/decode_json/$name"
    cp "$corpus/decode_json/$name" "$corpus/verify_signature/$name.json"
done
for f in "$golden"/*.cbor.hex; do
    name="$(basename "$f" .cbor.hex)"
    xxd -r -p "$f" > "$corpus/decode_cbor/$name"
    cp "$corpus/decode_cbor/$name" "$corpus/verify_signature/$name.cbor"
done
# inbox_message: first byte 0 = schedule topic, 1 = command topic.
for name in schedule_assign command_set_power command_idle command_cancel_schedule; do
    pick='\x00'; [[ $name == command_* ]] && pick='\x01'
    { printf "$pick"; cat "$corpus/decode_json/$name"; } > "$corpus/inbox_message/$name.json"
    { printf "$pick"; cat "$corpus/decode_cbor/$name"; } > "$corpus/inbox_message/$name.cbor"
done
i=0
for t in grid/v1/bat-0042/down/schedule grid/v1/bat-0042/down/command grid/v1/bat-0042/up/hello \
         grid/v1/bat-0042/up/ack grid/v1/bat-0042/up/telemetry grid/v1/bat-0042/up/status \
         'grid/v1/+/up/+' '$share/grid/grid/v1/+/up/+'; do
    printf '%s' "$t" > "$corpus/topic_parse/seed-$i"; i=$((i + 1))
done
echo "seeded $(find "$corpus" -type f | wc -l) files under $corpus"
