//! Fuzzes the topic parser: any string parses to a topic that prints back to the same string,
//! or is a typed error.
#![no_main]

use grid_proto::topic::Topic;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(topic) = Topic::parse(text) {
            assert_eq!(topic.to_string(), text);
        }
    }
});
