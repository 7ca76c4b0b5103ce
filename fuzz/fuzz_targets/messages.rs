//! The codec of every wire message: the first byte picks the type, the rest is decoded with
//! the limit its stream uses. A message that decodes must encode and decode to itself.
#![no_main]

use ferry_wire::codec::{decode, encode};
use serde::de::DeserializeOwned;
use serde::Serialize;

fn round<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(b: &[u8], limit: usize) {
    if let Ok(v) = decode::<T>(b, limit) {
        let again = encode(&v).expect("a decoded message encodes");
        let back: T = decode(&again, limit.max(again.len())).expect("and decodes again");
        assert_eq!(back, v);
    }
}

/// Decodes only (types without `PartialEq`).
fn once<T: DeserializeOwned>(b: &[u8], limit: usize) {
    let _ = decode::<T>(b, limit);
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Some((&which, b)) = data.split_first() else {
        return;
    };
    use ferry_wire::{control, msg, repl, task};
    match which % 9 {
        0 => round::<msg::Hello>(b, msg::HELLO_LIMIT),
        1 => round::<msg::Control>(b, 1 << 16),
        2 => round::<repl::Request>(b, repl::REPL_CONTROL_LIMIT),
        3 => round::<repl::Response>(b, repl::REPL_CONTROL_LIMIT),
        4 => once::<control::AgentMsg>(b, 1 << 20),
        5 => once::<control::ControllerMsg>(b, 1 << 20),
        6 => once::<task::Task>(b, 1 << 20),
        7 => once::<task::TaskResult>(b, 1 << 20),
        _ => {
            once::<control::ForwardRequest>(b, 1 << 20);
            once::<control::ForwardResponse>(b, 1 << 20);
        }
    }
});
