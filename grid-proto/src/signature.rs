//! Ed25519 signatures over schedule and command bodies: the server signs, the agent verifies
//! against a configured public key before executing, so a compromised broker cannot command a
//! battery.
//!
//! The signed bytes are, concatenated:
//!
//! 1. the ASCII domain string `grid/v1/sig` followed by one zero byte;
//! 2. the device id, the message id and the body kind (`schedule_assign` or `command`), each as
//!    one length byte followed by its ASCII bytes;
//! 3. the body encoded in CBOR exactly as in a CBOR message ([`crate::Codec::Cbor`]: a map with
//!    definite length, fields in the documented order, absent optional fields left out, floats
//!    in the shortest width that keeps their value).
//!
//! The signature therefore binds the body to one device and one message id: it cannot be
//! replayed to another device, and a replay to the same device is a duplicate the inbox drops.
//! The verifier re-encodes the body it decoded, so the same rules apply to JSON messages.
//!
//! ```
//! use grid_proto::{signature, v1::*};
//! use grid_core::DeviceId;
//! let key = signature::SigningKey::from_bytes(&[7; 32]);
//! let mut msg = Envelope::new(
//!     MessageId::new("m-1")?, DeviceId::new("bat-1")?, "2026-11-27T00:00:00Z".parse()?,
//!     Body::Command(Command { valid_until: "2026-11-27T00:05:00Z".parse()?, action: CommandAction::Idle }),
//! );
//! signature::sign(&mut msg, &key)?;
//! signature::verify(&msg, &key.verifying_key())?;
//! msg.device = DeviceId::new("bat-2")?; // replayed to another device
//! assert_eq!(signature::verify(&msg, &key.verifying_key()), Err(grid_proto::Error::BadSignature));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use crate::codec::Codec;
use crate::error::{Error, Result};
use crate::v1::{Body, Envelope, Signature};
pub use ed25519_dalek::{SigningKey, VerifyingKey};

/// The domain separation prefix of the signed bytes.
pub const DOMAIN: &[u8] = b"grid/v1/sig\0";

/// The bytes the signature covers (see the [module docs](self)).
pub fn signed_bytes(envelope: &Envelope) -> Result<Vec<u8>> {
    let body = match &envelope.body {
        Body::ScheduleAssign(b) => Codec::Cbor.to_vec(b)?,
        Body::Command(b) => Codec::Cbor.to_vec(b)?,
        _ => {
            return Err(Error::NotSignable {
                kind: envelope.kind().as_str(),
            });
        }
    };
    let mut out = Vec::with_capacity(DOMAIN.len() + 3 * 65 + body.len());
    out.extend_from_slice(DOMAIN);
    for part in [
        envelope.device.as_str(),
        envelope.id.as_str(),
        envelope.kind().as_str(),
    ] {
        // Ids are at most 64 bytes and kinds are short, so one length byte suffices.
        out.push(u8::try_from(part.len()).unwrap_or(u8::MAX));
        out.extend_from_slice(part.as_bytes());
    }
    out.extend_from_slice(&body);
    Ok(out)
}

/// Signs a schedule or command message in place (sets `envelope.signature`).
pub fn sign(envelope: &mut Envelope, key: &SigningKey) -> Result<()> {
    use ed25519_dalek::Signer;
    let bytes = signed_bytes(envelope)?;
    envelope.signature = Some(Signature(key.sign(&bytes).to_bytes()));
    Ok(())
}

/// Verifies a message's signature against `key` (strict Ed25519 verification: no malleable
/// signatures, no weak keys). Unsigned messages fail with [`Error::MissingSignature`], wrong
/// ones with [`Error::BadSignature`].
pub fn verify(envelope: &Envelope, key: &VerifyingKey) -> Result<()> {
    let sig = envelope.signature.ok_or(Error::MissingSignature)?;
    let bytes = signed_bytes(envelope)?;
    key.verify_strict(&bytes, &ed25519_dalek::Signature::from_bytes(&sig.0))
        .map_err(|_| Error::BadSignature)
}

/// Reads a public key from 64 hex digits (the form in configuration files).
pub fn verifying_key_from_hex(hex: &str) -> Result<VerifyingKey> {
    let bytes = parse_hex32("verifying_key", hex)?;
    VerifyingKey::from_bytes(&bytes)
        .map_err(|_| Error::invalid("verifying_key", "not a valid Ed25519 public key"))
}

/// Reads a secret key (seed) from 64 hex digits.
pub fn signing_key_from_hex(hex: &str) -> Result<SigningKey> {
    Ok(SigningKey::from_bytes(&parse_hex32("signing_key", hex)?))
}

fn parse_hex32(field: &str, hex: &str) -> Result<[u8; 32]> {
    let hex = hex.trim();
    let bad = || Error::invalid(field, "must be 64 hex digits");
    if hex.len() != 64 || !hex.is_ascii() {
        return Err(bad());
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
    }
    Ok(out)
}
