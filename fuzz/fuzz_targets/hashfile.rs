//! Manifest and leaf-index files as found on disk: any bytes are opened as either kind;
//! what opens must read within its bounds.
#![no_main]

use ferry_wire::hashfile::{HashFile, Kind};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    thread_local! {
        static PATH: std::path::PathBuf = {
            let dir = std::env::var_os("FERRY_FUZZ_TMP").map_or_else(std::env::temp_dir, Into::into);
            dir.join(format!("ferry-fuzz-hashfile-{}", std::process::id()))
        };
    }
    let Some((&which, bytes)) = data.split_first() else {
        return;
    };
    PATH.with(|p| {
        if std::fs::write(p, bytes).is_err() {
            return;
        }
        let kind = if which & 1 == 0 {
            Kind::Manifest
        } else {
            Kind::Leaves
        };
        if let Ok(f) = HashFile::open(p, kind) {
            let _ = f.geometry();
            let _ = f.root();
            let n = f.len();
            for i in [0, n / 2, n.saturating_sub(1)] {
                if i < n {
                    let _ = f.hash(i);
                }
            }
            let _ = f.entries().len();
        }
    });
});
