//! Fuzzes the JSON decoder: any bytes give a message or a typed error, never a panic, and
//! whatever decodes re-encodes and decodes to the same message.
#![no_main]

use grid_proto::Codec;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(msg) = Codec::Json.decode(data) {
        let bytes = Codec::Json.encode(&msg).expect("a decoded message re-encodes");
        assert_eq!(Codec::Json.decode(&bytes).expect("re-encoded bytes decode"), msg);
        let cbor = Codec::Cbor.encode(&msg).expect("and encodes in CBOR");
        assert_eq!(Codec::Cbor.decode(&cbor).expect("CBOR decodes"), msg);
    }
});
