//! Golden vectors: the exact JSON and CBOR bytes of every example message in
//! `docs/protocol.md`, checked byte for byte in both directions. Run with `GRID_BLESS=1` to
//! rewrite the files after a deliberate format change.
#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions

mod common;

use common::*;
use grid_proto::{Codec, signature};
use std::path::PathBuf;

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

/// The file's content without its single trailing newline.
fn read(name: &str) -> String {
    let text = std::fs::read_to_string(dir().join(name))
        .unwrap_or_else(|e| panic!("{name}: {e} (run with GRID_BLESS=1 to create it)"));
    text.strip_suffix('\n').unwrap_or(&text).to_string()
}

fn check(name: &str, actual: &str) {
    if std::env::var_os("GRID_BLESS").is_some() {
        std::fs::write(dir().join(name), format!("{actual}\n")).unwrap();
    }
    assert_eq!(read(name), actual, "{name} differs from the golden file");
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

#[test]
fn every_body_encodes_to_its_golden_bytes_in_both_codecs() {
    for (name, msg) in golden() {
        let json = Codec::Json.encode(&msg).unwrap();
        check(&format!("{name}.json"), std::str::from_utf8(&json).unwrap());
        let cbor = Codec::Cbor.encode(&msg).unwrap();
        check(&format!("{name}.cbor.hex"), &hex(&cbor));
        assert!(
            cbor.len() < json.len(),
            "{name}: CBOR should be the compact one"
        );
    }
}

#[test]
fn golden_bytes_decode_to_the_messages() {
    for (name, msg) in golden() {
        let json = read(&format!("{name}.json"));
        assert_eq!(
            Codec::Json.decode(json.as_bytes()).unwrap(),
            msg,
            "{name}.json"
        );
        let cbor = unhex(&read(&format!("{name}.cbor.hex")));
        assert_eq!(Codec::Cbor.decode(&cbor).unwrap(), msg, "{name}.cbor");
        assert_eq!(
            grid_proto::decode(&cbor).unwrap(),
            msg,
            "{name}: sniffed codec"
        );
    }
}

#[test]
fn golden_signatures_verify_and_the_signed_bytes_are_pinned() {
    let public = signature::verifying_key_from_hex(TEST_PUBLIC_HEX).unwrap();
    assert_eq!(key().verifying_key(), public);
    for (name, msg) in golden() {
        if msg.signature.is_none() {
            continue;
        }
        check(
            &format!("{name}.signed.hex"),
            &hex(&signature::signed_bytes(&msg).unwrap()),
        );
        // Decoded from either codec, the signature verifies.
        let json = Codec::Json
            .decode(read(&format!("{name}.json")).as_bytes())
            .unwrap();
        signature::verify(&json, &public).unwrap();
        let cbor = Codec::Cbor
            .decode(&unhex(&read(&format!("{name}.cbor.hex"))))
            .unwrap();
        signature::verify(&cbor, &public).unwrap();
    }
}

#[test]
fn the_protocol_document_quotes_every_golden_file() {
    let doc = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/protocol.md"),
    )
    .unwrap();
    let mut files: Vec<_> = std::fs::read_dir(dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    files.sort();
    assert!(files.len() >= 20, "{files:?}");
    for f in files {
        let content = read(&f);
        assert!(
            doc.contains(&content),
            "docs/protocol.md does not quote {f}"
        );
    }
}
