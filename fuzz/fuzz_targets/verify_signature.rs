//! Fuzzes the signature path: decode (either codec), then verify against the golden test key.
//! A forged message must never verify; nothing may panic.
#![no_main]

use grid_proto::signature;
use libfuzzer_sys::fuzz_target;

// The public key of RFC 8032's first test vector (the golden vectors are signed with it).
const PUBLIC: &str = "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a";

fuzz_target!(|data: &[u8]| {
    let key = signature::verifying_key_from_hex(PUBLIC).expect("valid key");
    if let Ok(msg) = grid_proto::decode(data) {
        if signature::verify(&msg, &key).is_ok() {
            // Only the untouched golden bodies can verify; their signed bytes must re-derive.
            assert!(signature::signed_bytes(&msg).is_ok());
        }
    }
});
