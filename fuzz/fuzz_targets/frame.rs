//! The framing of every stream: length-prefixed frames pushed in arbitrary pieces, with a
//! limit. No input may panic, and a frame given out is never over the limit.
#![no_main]

use ferry_wire::frame::FrameDecoder;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Some((&cut, rest)) = data.split_first() else {
        return;
    };
    let limit = 1 + usize::from(cut) * 97;
    let mut d = FrameDecoder::new(limit);
    // Pieces of varying size, as the network hands them over.
    let mut at = 0;
    let mut step = usize::from(cut % 13) + 1;
    while at < rest.len() {
        let end = (at + step).min(rest.len());
        if d.push(&rest[at..end]).is_err() {
            return;
        }
        loop {
            match d.next_frame() {
                Ok(Some(f)) => assert!(f.len() <= limit),
                Ok(None) => break,
                Err(_) => return,
            }
        }
        at = end;
        step = step * 2 % 61 + 1;
    }
    let _ = d.finish();
});
