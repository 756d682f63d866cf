//! Fuzzes the agent's whole downlink path: topic check, decoding, signature verification,
//! deduplication and the inbox state machine. The first byte picks the topic.
#![no_main]

use grid_core::{DeviceId, Timestamp};
use grid_proto::inbox::{Inbox, InboxConfig};
use grid_proto::signature;
use libfuzzer_sys::fuzz_target;

const PUBLIC: &str = "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a";
const TOPICS: [&str; 4] = [
    "grid/v1/bat-0042/down/schedule",
    "grid/v1/bat-0042/down/command",
    "grid/v1/bat-0042/up/ack",
    "grid/v1/bat-9/down/schedule",
];

fuzz_target!(|data: &[u8]| {
    let Some((&pick, payload)) = data.split_first() else { return };
    let config = InboxConfig {
        verifying_key: Some(signature::verifying_key_from_hex(PUBLIC).expect("valid key")),
        ..InboxConfig::default()
    };
    let mut inbox = Inbox::new(DeviceId::new("bat-0042").expect("valid id"), config);
    let now = Timestamp::from_second(1_795_000_000).expect("valid instant");
    let topic = TOPICS[usize::from(pick) % TOPICS.len()];
    let _ = inbox.on_message(now, topic, payload);
    let _ = inbox.on_message(now, topic, payload);
    let _ = inbox.poll(now);
});
