//! The HTTP API's request bodies and query strings as a handler takes them: parsed, then
//! validated. Nothing may panic; a body that validates names only valid things.
#![no_main]

use ferry_controller::policy::model::{Object, PlanSpec};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Some((&which, b)) = data.split_first() else {
        return;
    };
    match which % 4 {
        0 => {
            if let Ok(o) = serde_json::from_slice::<Object>(b) {
                let _ = o.validate();
            }
        }
        1 => {
            if let Ok(p) = serde_json::from_slice::<PlanSpec>(b) {
                let objects: Vec<Object> = Vec::new();
                let _ = p.validate(|n| objects.iter().find(|o| &o.name == n));
            }
        }
        2 => {
            if let Ok(s) = std::str::from_utf8(b) {
                let _ = ferry_wire::units::parse_size(s);
            }
        }
        _ => {
            if let Ok(q) = std::str::from_utf8(b) {
                if let Ok((limit, _)) = ferry_controller::http::page::read_query(q) {
                    assert!((1..=ferry_controller::http::page::MAX_LIMIT).contains(&limit));
                }
            }
        }
    }
});
