//! The receive journal as read back after a crash: any bytes (a torn tail, flipped bits)
//! either replay to blocks within the volume or are refused.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(replay) = ferry_wire::journal::decode(data) {
        let _ = format!("{replay:?}");
    }
});
