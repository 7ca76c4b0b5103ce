//! The volume store through the real `ferry-agent` binary, on both backends: the copy backend on
//! the machine's ordinary filesystem and the reflink backend on XFS.

use std::path::Path;

use ferry_tests::{
    block_hashes, file_hash, manifest_hashes, random_page_writes, rng, write_random, Env, Fs,
};

const MIB: u64 = 1 << 20;

/// Runs a test body on both backends (reflink on XFS and on btrfs).
macro_rules! both {
    ($name:ident, $body:expr) => {
        mod $name {
            use super::*;
            #[test]
            fn copy() {
                if let Some(env) = Env::new(Fs::Local) {
                    assert_eq!(env.ok(&["info"])["backend"], "copy");
                    ($body)(&env);
                }
            }
            #[test]
            fn reflink_xfs() {
                if let Some(env) = Env::new(Fs::Xfs) {
                    assert_eq!(env.ok(&["info"])["backend"], "reflink");
                    ($body)(&env);
                }
            }
            #[test]
            fn reflink_btrfs() {
                if let Some(env) = Env::new(Fs::Btrfs) {
                    assert_eq!(env.ok(&["info"])["backend"], "reflink");
                    assert_eq!(env.ok(&["info"])["filesystem"], "btrfs");
                    ($body)(&env);
                }
            }
        }
    };
}

fn copy_file(from: &Path, to: &Path) {
    std::fs::copy(from, to).expect("copy");
}

both!(snapshot_is_frozen_while_writes_go_on, |env: &Env| {
    let mut r = rng("frozen");
    env.ok(&["volume", "create", "v", "--size", "48M"]);
    let vol = env.volume_path("v");
    write_random(&vol, 0, 20 * MIB as usize, &mut r);
    write_random(&vol, 30 * MIB, 4096 * 3 + 100, &mut r);
    let expected = env.path("expected");
    copy_file(&vol, &expected);
    let s1 = env.ok(&["snapshot", "create", "v", "s1"]);
    assert_eq!(s1["manifest"]["mode"], "full");
    // Writes after the snapshot, including while later snapshots are taken.
    random_page_writes(&vol, 48 * MIB, 500, &mut r);
    env.ok(&["snapshot", "create", "v", "s2"]);
    write_random(&vol, 0, MIB as usize, &mut r);
    let img = env.snapshot_dir("v", "s1").join("data.img");
    assert_eq!(
        file_hash(&img),
        file_hash(&expected),
        "snapshot content changed after writes"
    );
    assert_eq!(
        manifest_hashes(env, "v", "s1"),
        block_hashes(&expected, 65536)
    );
    assert_eq!(env.ok(&["snapshot", "verify", "v", "s1"])["ok"], true);
    assert_eq!(env.ok(&["snapshot", "verify", "v", "s2"])["ok"], true);
});

both!(diff_reports_every_changed_block, |env: &Env| {
    let mut r = rng("diff");
    let size = 64 * MIB;
    env.ok(&["volume", "create", "v", "--size", "64M"]);
    let vol = env.volume_path("v");
    write_random(&vol, 0, 40 * MIB as usize, &mut r);
    env.ok(&["snapshot", "create", "v", "a"]);
    let before = block_hashes(&vol, 4096);
    let pages = random_page_writes(&vol, size, 300, &mut r);
    let snap_b = env.ok(&["snapshot", "create", "v", "b"]);
    let after = block_hashes(&vol, 4096);
    let d = env.ok(&["snapshot", "diff", "v", "a", "b"]);
    let ranges: Vec<(u64, u64)> = d["ranges"]
        .as_array()
        .expect("ranges")
        .iter()
        .map(|r| (r[0].as_u64().expect("start"), r[1].as_u64().expect("end")))
        .collect();
    let covered = |off: u64| ranges.iter().any(|&(s, e)| s <= off && off < e);
    for &p in &pages {
        assert!(covered(p * 4096), "changed page {p} not reported");
    }
    if env.fs.reflink() {
        assert_eq!(d["method"], "fiemap");
        // Exactly the written pages, nothing else.
        let mut reported = Vec::new();
        for &(s, e) in &ranges {
            assert_eq!(s % 4096, 0);
            assert_eq!(e % 4096, 0);
            reported.extend(s / 4096..e / 4096);
        }
        assert_eq!(
            reported, pages,
            "reflink diff must report exactly the written pages"
        );
        assert_eq!(snap_b["manifest"]["mode"], "incremental");
        assert!(snap_b["manifest"]["bytes_read"].as_u64().expect("bytes") <= 300 * 16384);
    } else {
        assert_eq!(d["method"], "manifest");
        // Every reported block really changed.
        for &(s, e) in &ranges {
            for b in (s / 65536)..(e / 65536) {
                let first = (b * 16) as usize;
                assert_ne!(
                    before[first..first + 16],
                    after[first..first + 16],
                    "block {b} reported but unchanged"
                );
            }
        }
    }
    // Both manifests equal an independent BLAKE3 of each 64 KiB block.
    let expected = block_hashes(&vol, 65536);
    assert_eq!(manifest_hashes(env, "v", "b"), expected);
    assert_eq!(
        d["changed_bytes"].as_u64(),
        Some(ranges.iter().map(|(s, e)| e - s).sum())
    );
    if env.fs.reflink() {
        // The comparison made for b's manifest was recorded and is reused; without the
        // record, or with a damaged one, the extents are compared again, to the same ranges.
        assert_eq!(d["recorded"], true);
        let record = env.snapshot_dir("v", "b").join("changes");
        let good = std::fs::read(&record).expect("b records its changes");
        let mut bad = good.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        for (what, bytes) in [("damaged", Some(bad)), ("missing", None)] {
            match bytes {
                Some(b) => std::fs::write(&record, b).expect("damage"),
                None => std::fs::remove_file(&record).expect("remove"),
            }
            let again = env.ok(&["snapshot", "diff", "v", "a", "b"]);
            assert_eq!(again["recorded"], false, "{what} record");
            assert_eq!(again["ranges"], d["ranges"], "{what} record");
        }
        // A record names its base: from another base the extents are compared.
        random_page_writes(&vol, size, 50, &mut r);
        env.ok(&["snapshot", "create", "v", "c"]);
        let ac = env.ok(&["snapshot", "diff", "v", "a", "c"]);
        assert_eq!(ac["recorded"], false);
        assert_eq!(
            env.ok(&["snapshot", "diff", "v", "b", "c"])["recorded"],
            true
        );
        let in_ranges = |ranges: &serde_json::Value, p: u64| {
            ranges
                .as_array()
                .expect("ranges")
                .iter()
                .any(|r| r[0].as_u64() <= Some(p * 4096) && Some(p * 4096) < r[1].as_u64())
        };
        for &p in &pages {
            assert!(in_ranges(&ac["ranges"], p), "page {p} missing from a..c");
        }
    }
});

both!(incremental_manifests_stay_exact, |env: &Env| {
    // Odd-sized adopted file (partial last block), several rounds of writes, including into the
    // tail, into holes and punching zeros; every manifest must equal an independent hash.
    let mut r = rng("incremental");
    let img = env.path("disk.raw");
    let size = 20 * MIB + 12345;
    std::fs::File::create(&img)
        .expect("create")
        .set_len(size)
        .expect("size");
    write_random(&img, 3 * MIB, 5 * MIB as usize, &mut r);
    let adopt = env.ok(&[
        "volume",
        "adopt",
        "d",
        img.to_str().expect("utf8"),
        "--block-size",
        "128K",
    ]);
    assert_eq!(adopt["kind"], "adopted");
    for round in 0..4 {
        let name = format!("r{round}");
        match round {
            1 => write_random(&img, size - 5000, 5000, &mut r),
            2 => {
                random_page_writes(&img, size, 200, &mut r);
            }
            3 => std::fs::OpenOptions::new()
                .write(true)
                .open(&img)
                .and_then(|f| {
                    std::os::unix::fs::FileExt::write_all_at(
                        &f,
                        &vec![0u8; 2 * MIB as usize],
                        4 * MIB,
                    )
                })
                .expect("zero"),
            _ => {}
        }
        let want = block_hashes(&img, 128 << 10);
        let m = env.ok(&["snapshot", "create", "d", &name]);
        assert_eq!(manifest_hashes(env, "d", &name), want, "round {round}");
        if round > 0 && env.fs.reflink() {
            assert_eq!(m["manifest"]["mode"], "incremental", "round {round}");
        }
        assert_eq!(
            env.ok(&["snapshot", "verify", "d", &name])["leaf_index_ok"],
            true
        );
    }
});

both!(rollback_and_clone_are_byte_identical, |env: &Env| {
    let mut r = rng("rollback");
    env.ok(&["volume", "create", "v", "--size", "32M"]);
    let vol = env.volume_path("v");
    write_random(&vol, MIB, 10 * MIB as usize, &mut r);
    let at_s1 = file_hash(&vol);
    env.ok(&["snapshot", "create", "v", "s1"]);
    random_page_writes(&vol, 32 * MIB, 400, &mut r);
    write_random(&vol, 20 * MIB, 3 * MIB as usize, &mut r);
    let at_now = file_hash(&vol);
    assert_ne!(at_now, at_s1);
    let ino_before = std::fs::metadata(&vol)
        .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
        .expect("stat");
    env.ok(&["volume", "rollback", "v", "s1"]);
    assert_eq!(
        file_hash(&vol),
        at_s1,
        "rollback must restore the snapshot's bytes"
    );
    let ino_after = std::fs::metadata(&vol)
        .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
        .expect("stat");
    assert_eq!(
        ino_before, ino_after,
        "rollback keeps the image's inode (open handles see it)"
    );
    let c = env.ok(&["volume", "clone", "v", "s1", "c"]);
    assert_eq!(c["origin"]["snapshot"], "s1");
    assert_eq!(file_hash(&env.volume_path("c")), at_s1);
    // The clone is independent of the volume and the snapshot.
    write_random(&env.volume_path("c"), 0, 4096, &mut r);
    assert_eq!(file_hash(&vol), at_s1);
    assert_eq!(env.ok(&["snapshot", "verify", "v", "s1"])["ok"], true);
    // Deleting: refused with snapshots unless forced.
    let (kind, msg) = env.fails(&["volume", "delete", "v"]);
    assert_eq!(kind, "busy");
    assert!(msg.contains("1 snapshot"), "{msg}");
    env.ok(&["snapshot", "delete", "v", "s1"]);
    assert!(env.snapshots("v").is_empty());
    env.ok(&["volume", "delete", "v"]);
    assert!(!vol.exists());
    assert_eq!(
        env.ok(&["volume", "list"]).as_array().map(Vec::len),
        Some(1)
    );
});

both!(group_snapshot_with_hooks_is_all_or_nothing, |env: &Env| {
    let mut r = rng("group");
    for v in ["a", "b", "c"] {
        env.ok(&["volume", "create", v, "--size", "8M"]);
        write_random(&env.volume_path(v), 0, 2 * MIB as usize, &mut r);
    }
    let log = env.path("hooks.log");
    let pre = format!(
        "echo pre $FERRY_SNAPSHOT $FERRY_VOLUMES >> {}",
        log.display()
    );
    let post = format!("echo post $FERRY_SNAPSHOT >> {}", log.display());
    let g = env.ok(&[
        "snapshot", "group", "g1", "c", "a", "b", "--pre", &pre, "--post", &post,
    ]);
    let members = g.as_array().expect("array");
    assert_eq!(members.len(), 3);
    let id = &members[0]["group"]["id"];
    assert!(members
        .iter()
        .all(|m| &m["group"]["id"] == id && m["name"] == "g1"));
    let text = std::fs::read_to_string(&log).expect("hook log");
    assert_eq!(text, "pre g1 a b c\npost g1\n");
    // A failing pre hook: nothing is taken, the post hook still runs.
    let (kind, msg) = env.fails(&[
        "snapshot",
        "group",
        "g2",
        "a",
        "b",
        "--pre",
        "echo frozen-fail >&2; exit 3",
        "--post",
        &post,
    ]);
    assert_eq!(kind, "hook_failed");
    assert!(msg.contains("frozen-fail") && msg.contains("exit"), "{msg}");
    assert!(std::fs::read_to_string(&log)
        .expect("log")
        .ends_with("post g2\n"));
    // A failing post hook: the snapshot is not committed either.
    let (kind, _) = env.fails(&["snapshot", "group", "g3", "a", "b", "--post", "exit 1"]);
    assert_eq!(kind, "hook_failed");
    // A hook that hangs is killed at the timeout.
    let (kind, msg) = env.fails(&[
        "snapshot",
        "create",
        "a",
        "g4",
        "--pre",
        "sleep 30",
        "--hook-timeout",
        "1",
    ]);
    assert_eq!(kind, "hook_failed");
    assert!(msg.contains("timed out"), "{msg}");
    // One member already has the name: refused before anything is taken.
    env.ok(&["snapshot", "create", "b", "g5"]);
    let (kind, _) = env.fails(&["snapshot", "group", "g5", "a", "b"]);
    assert_eq!(kind, "already_exists");
    for v in ["a", "b", "c"] {
        let names = env.snapshots(v);
        assert!(names.contains(&"g1".to_string()));
        for bad in ["g2", "g3", "g4"] {
            assert!(!names.contains(&bad.to_string()), "{v} has {bad}");
        }
    }
    assert!(!env.snapshots("a").contains(&"g5".to_string()));
    assert!(env.leftovers().is_empty(), "{:?}", env.leftovers());
});

both!(read_engines_agree, |env: &Env| {
    // io_uring, pread, and io_uring blocked by seccomp (automatic fallback) give one manifest.
    let mut r = rng("engines");
    env.ok(&["volume", "create", "v", "--size", "24M"]);
    let vol = env.volume_path("v");
    write_random(&vol, 0, 24 * MIB as usize - 7 * 4096, &mut r);
    let uring = env.ok(&["snapshot", "create", "v", "u"]);
    assert_eq!(uring["manifest"]["engine"], "io_uring");
    let cfg = env.path("pread.toml");
    std::fs::write(&cfg, "[io]\nengine = \"pread\"\nread_size = \"256K\"\n").expect("config");
    let pread = env.ok(&[
        "--config",
        cfg.to_str().expect("utf8"),
        "snapshot",
        "create",
        "v",
        "p",
    ]);
    assert_eq!(pread["manifest"]["engine"], "pread");
    let out = std::process::Command::new(ferry_tests::bin("ferry-no-uring"))
        .arg(ferry_tests::bin("ferry-agent"))
        .args([
            "--data-dir",
            env.data_dir().to_str().expect("utf8"),
            "--json",
            "snapshot",
            "create",
            "v",
            "f",
        ])
        .env("FERRY_LOG", "warn")
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let fallback: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(fallback["manifest"]["engine"], "pread");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        stderr.matches("io_uring is unavailable").count(),
        1,
        "logged once: {stderr}"
    );
    // Forcing io_uring where it is blocked is an error, not a silent fallback.
    let cfg2 = env.path("uring.toml");
    std::fs::write(&cfg2, "[io]\nengine = \"io_uring\"\n").expect("config");
    let out = std::process::Command::new(ferry_tests::bin("ferry-no-uring"))
        .arg(ferry_tests::bin("ferry-agent"))
        .args([
            "--data-dir",
            env.data_dir().to_str().expect("utf8"),
            "--config",
            cfg2.to_str().expect("utf8"),
            "snapshot",
            "create",
            "v",
            "x",
        ])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("io_uring"));
    for s in ["p", "f"] {
        let m = env.ok(&["snapshot", "list", "v"]);
        let root = |n: &str| {
            m.as_array()
                .expect("array")
                .iter()
                .find(|x| x["name"] == n)
                .map(|x| x["root"].clone())
                .expect("snapshot")
        };
        assert_eq!(root(s), root("u"), "{s}");
    }
    assert_eq!(manifest_hashes(env, "v", "u"), block_hashes(&vol, 65536));
});
