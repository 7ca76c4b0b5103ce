//! Block payloads as a receiver unpacks them: zstd frames decompressed into a bounded
//! buffer, page deltas applied to a base block, then the hash check.
#![no_main]

use ferry_wire::repl::{apply_pages, verify_block, PAGE_SIZE};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Some((&head, payload)) = data.split_first() else {
        return;
    };
    // 4 KiB to 64 KiB blocks.
    let block_size = PAGE_SIZE * (1 << (head & 0x3).min(4)) * if head & 0x4 != 0 { 4 } else { 1 };
    let compressed = head & 0x8 != 0;
    let pages = head & 0x10 != 0;
    let cap = block_size + (block_size / PAGE_SIZE).div_ceil(8);
    let plain = if compressed {
        match ferry_agent::replication::receive::unzstd(payload, cap) {
            Some(p) => p,
            None => return,
        }
    } else {
        payload.to_vec()
    };
    assert!(plain.len() <= cap.max(payload.len()));
    let mut block = vec![0x5au8; block_size];
    let data = if pages {
        if apply_pages(&mut block, &plain).is_none() {
            return;
        }
        block
    } else {
        plain
    };
    let want = ferry_wire::BlockHash::of(&data);
    assert!(verify_block(0, want, data.len() as u64, &data).is_ok());
});
