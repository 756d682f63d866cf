//! Fuzzes the CBOR decoder: any bytes give a message or a typed error, never a panic or an
//! unbounded allocation, and whatever decodes re-encodes and decodes to the same message.
#![no_main]

use grid_proto::Codec;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(msg) = Codec::Cbor.decode(data) {
        let bytes = Codec::Cbor.encode(&msg).expect("a decoded message re-encodes");
        assert_eq!(Codec::Cbor.decode(&bytes).expect("re-encoded bytes decode"), msg);
        let json = Codec::Json.encode(&msg).expect("and encodes in JSON");
        assert_eq!(Codec::Json.decode(&json).expect("JSON decodes"), msg);
    }
    let _ = grid_proto::decode(data);
});
