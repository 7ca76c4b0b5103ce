//! Replication between two real agents over QUIC with mutual TLS on loopback: site a's
//! `ferry-agent replicate` against site b's `ferry-agent serve`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use ferry_agent::config::AgentConfig;
use ferry_agent::daemon::server::load_tls;
use ferry_agent::net;
use ferry_tests::pair::Pair;
use ferry_tests::{bin, file_hash, random_page_writes, rng, write_random, Served};
use ferry_wire::repl::{block_header, Payload, Request, Response, REPL_CONTROL_LIMIT};
use ferry_wire::BlockHash;
use serde_json::{json, Value};

const MIB: u64 = 1 << 20;

#[test]
fn full_incremental_dedup_and_rebuild_copy() {
    full_incremental_dedup_and_rebuild(Pair::new());
}

/// On XFS the sender takes changed pages from the FIEMAP diff and local copies share extents.
#[test]
fn full_incremental_dedup_and_rebuild_reflink() {
    let xfs = std::env::var("FERRY_TEST_XFS")
        .ok()
        .filter(|v| !v.is_empty());
    if ferry_tests::require(xfs.is_some(), "an XFS reflink mount in FERRY_TEST_XFS") {
        full_incremental_dedup_and_rebuild(Pair::new_in(Path::new(&xfs.expect("checked"))));
    }
}

fn full_incremental_dedup_and_rebuild(p: Pair) {
    let mut r = rng("replicate");
    p.a(&["volume", "create", "v", "--size", "32M"]);
    let v = p.path("v");
    write_random(&v, MIB, 8 * MIB as usize, &mut r);
    // The same 8 MiB again at 16 MiB (64 KiB aligned): must be sent once.
    let data = std::fs::read(&v).expect("read");
    std::fs::OpenOptions::new()
        .write(true)
        .open(&v)
        .and_then(|f| {
            std::os::unix::fs::FileExt::write_all_at(
                &f,
                &data[MIB as usize..9 * MIB as usize],
                16 * MIB,
            )
        })
        .expect("dup");
    p.a(&["snapshot", "create", "v", "s1"]);
    let full = p.replicate("v", "s1", &[]);
    assert_eq!(full["base"], Value::Null);
    assert_eq!(full["sent_blocks"], 128, "{full}");
    assert_eq!(full["zero_blocks"].as_u64(), Some(512 - 256), "{full}");
    let m = p.mirror_snapshots("v");
    assert_eq!(m.len(), 1);
    assert_eq!(m[0].1, p.root_a("v", "s1"));
    assert_eq!(file_hash(&p.mirror_image("v", "s1")), file_hash(&v));

    // Incremental: 100 random 4 KiB pages.
    let pages = random_page_writes(&v, 32 * MIB, 100, &mut r);
    let blocks: std::collections::BTreeSet<u64> =
        pages.iter().map(|pg| pg * 4096 / 65536).collect();
    p.a(&["snapshot", "create", "v", "s2"]);
    let inc = p.replicate("v", "s2", &[]);
    assert_eq!(inc["base"], "s1", "{inc}");
    assert!(
        inc["sent_blocks"].as_u64().expect("n") <= blocks.len() as u64,
        "{inc}"
    );
    assert_eq!(file_hash(&p.mirror_image("v", "s2")), file_hash(&v));
    assert_eq!(p.mirror_snapshots("v")[1].1, p.root_a("v", "s2"));
    // The previous mirror snapshot is untouched, and each mirror snapshot's manifest, put
    // together from the blocks as they were checked, is the one its data has.
    for s in ["s1", "s2"] {
        let v = p.b(&["snapshot", "verify", "v", s]);
        assert_eq!(
            (v["ok"].clone(), v["leaf_index_ok"].clone()),
            (json!(true), json!(true)),
            "{s}: {v}"
        );
    }
    let listed = p.b(&["snapshot", "list", "v"]);
    assert!(
        listed
            .as_array()
            .into_iter()
            .flatten()
            .all(|s| s["manifest"]["mode"] == "received"),
        "{listed}"
    );
    let again = p.replicate("v", "s2", &[]);
    assert_eq!(again["already_there"], true);

    // A commit moves the working copy into the snapshot and makes the next one (a clone)
    // afterwards: once made (the verify above waited for it under the volume lock), it is
    // its own file holding what s2 holds.
    let working = p.b_data.join("volumes").join("v").join("data.img");
    let inode =
        |f: &Path| std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(f).expect("stat"));
    assert_ne!(inode(&working), inode(&p.mirror_image("v", "s2")));
    assert_eq!(file_hash(&working), file_hash(&v));
    // A crash between the commit and the clone leaves no working copy: the next session
    // finds one made from the snapshot its marker names, or, with the marker gone too, an
    // empty one reset to its base. Either way the mirror snapshots come out right and the
    // ones before stay untouched.
    let before = file_hash(&p.mirror_image("v", "s2"));
    for (snap, marker_too) in [("s3", false), ("s4", true)] {
        std::fs::remove_file(&working).expect("remove the working copy");
        if marker_too {
            std::fs::remove_file(working.with_file_name("receive.base")).expect("marker");
        }
        random_page_writes(&v, 32 * MIB, 10, &mut r);
        p.a(&["snapshot", "create", "v", snap]);
        let inc = p.replicate("v", snap, &[]);
        assert!(inc["sent_blocks"].as_u64() <= Some(10), "{inc}");
        assert_eq!(file_hash(&p.mirror_image("v", snap)), file_hash(&v));
        assert_eq!(p.b(&["snapshot", "verify", "v", snap])["ok"], true);
    }
    assert_eq!(file_hash(&p.mirror_image("v", "s2")), before);
    assert_eq!(p.b(&["snapshot", "verify", "v", "s2"])["ok"], true);

    // Dedup across volumes: w holds v's data; nothing needs to cross the network.
    p.a(&["volume", "create", "w", "--size", "32M"]);
    let w = p.path("w");
    std::fs::copy(&v, &w).expect("copy");
    p.a(&["snapshot", "create", "w", "w1"]);
    let dedup = p.replicate("w", "w1", &["--as", "w-mirror"]);
    assert_eq!(dedup["sent_blocks"], 0, "{dedup}");
    assert_eq!(file_hash(&p.mirror_image("w-mirror", "w1")), file_hash(&w));
    assert_eq!(p.b(&["snapshot", "verify", "w-mirror", "w1"])["ok"], true);

    // The dedup index is kept on disk. Removed, it is built again from the manifests held;
    // damaged, its wrong entries are misses (every hit is checked against a manifest and
    // the data against the offered hash): the data arrives right either way. (x and y
    // differ from v by a page, so they are not seeded from v's mirror: blocks are offered.)
    let idx = p.b_data.join("index").join("blocks-65536.idx");
    assert!(idx.exists(), "{}", idx.display());
    std::fs::remove_file(&idx).expect("remove the index");
    p.a(&["volume", "create", "x", "--size", "32M"]);
    std::fs::copy(&v, p.path("x")).expect("copy");
    random_page_writes(&p.path("x"), 4096, 1, &mut r);
    p.a(&["snapshot", "create", "x", "x1"]);
    let rebuilt_index = p.replicate("x", "x1", &["--as", "x-mirror"]);
    assert_eq!(rebuilt_index["sent_blocks"], 1, "{rebuilt_index}");
    assert!(
        rebuilt_index["offered_blocks"].as_u64() > Some(100),
        "{rebuilt_index}"
    );
    assert_eq!(
        file_hash(&p.mirror_image("x-mirror", "x1")),
        file_hash(&p.path("x"))
    );
    let mut pages = std::fs::read(&idx).expect("read the index");
    for (k, b) in pages.iter_mut().enumerate().skip(4096) {
        *b = (k as u8).wrapping_mul(31); // every bucket garbage, the header intact
    }
    std::fs::write(&idx, &pages).expect("damage the index");
    p.a(&["volume", "create", "y", "--size", "32M"]);
    std::fs::copy(&v, p.path("y")).expect("copy");
    random_page_writes(&p.path("y"), 4096, 1, &mut r);
    p.a(&["snapshot", "create", "y", "y1"]);
    p.replicate("y", "y1", &["--as", "y-mirror"]);
    assert_eq!(
        file_hash(&p.mirror_image("y-mirror", "y1")),
        file_hash(&p.path("y"))
    );
    assert_eq!(p.b(&["snapshot", "verify", "y-mirror", "y1"])["ok"], true);

    // Mirrors are read-only at the target; rebuild is a clone of a mirror snapshot.
    let out = Pair::run(&p.b_cfg, &["snapshot", "create", "v", "local"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("mirror"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let out = Pair::run(&p.b_cfg, &["volume", "rollback", "v", "s1"]);
    assert_eq!(out.status.code(), Some(1));
    let rebuilt = p.b(&["volume", "clone", "v", "s1", "rebuilt"]);
    let rebuilt_path = PathBuf::from(rebuilt["path"].as_str().expect("path"));
    assert_eq!(
        file_hash(&rebuilt_path),
        file_hash(&p.mirror_image("v", "s1"))
    );
}

/// A sender with a valid certificate that offers one hash and sends other data.
/// A sender with a valid certificate that offers one block and sends something else: data
/// that fails the hash, a compressed payload that would unpack beyond a block (a zstd bomb),
/// and a compressed payload that is not zstd at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_block_is_caught_and_nothing_is_committed() {
    let p = Pair::new();
    let good = vec![0x5au8; 65536];
    let bad = vec![0xa5u8; 65536];
    let bomb = zstd::bulk::compress(&vec![0x5au8; 16 << 20], 3).expect("compress");
    let cases: [(&str, Payload, &[u8], &str); 3] = [
        ("evil1", Payload::Full, &bad, "does not match its hash"),
        (
            "evil2",
            Payload::ZstdFull,
            &bomb,
            "malformed compressed payload",
        ),
        (
            "evil3",
            Payload::ZstdFull,
            b"not zstd at all",
            "malformed compressed payload",
        ),
    ];
    for (mirror, kind, payload, reason) in cases {
        send_bad_block(&p, mirror, &good, kind, payload, reason).await;
        assert!(
            p.mirror_snapshots(mirror).is_empty(),
            "nothing may be committed"
        );
    }
    // The server still serves honest peers.
    p.a(&["volume", "create", "v", "--size", "1M"]);
    p.a(&["snapshot", "create", "v", "s"]);
    p.replicate("v", "s", &[]);
}

async fn send_bad_block(
    p: &Pair,
    mirror: &str,
    good: &[u8],
    kind: Payload,
    payload: &[u8],
    reason: &str,
) {
    let addr = p.served.as_ref().expect("served").addr;
    let cfg = AgentConfig::load(&p.a_cfg).expect("config");
    let (id, trust) = load_tls(&cfg).expect("tls");
    let ep = net::client_endpoint(addr, net::client_config(&id, &trust).expect("cc")).expect("ep");
    let session = net::connect(&ep, addr, &id, &trust).await.expect("connect");
    let (mut send, mut recv) = session.conn.open_bi().await.expect("bi");
    let sid = u64::from(send.id());
    let root = BlockHash([1; 32]);
    net::send_msg(
        &mut send,
        &Request::Open {
            mirror: mirror.parse().expect("name"),
            snapshot: "s1".parse().expect("name"),
            size: 65536 * 2,
            block_size: 65536,
            root,
            candidates: Vec::new(),
            base: None,
        },
    )
    .await
    .expect("begin");
    assert_eq!(
        net::recv_msg::<Response>(&mut recv, REPL_CONTROL_LIMIT)
            .await
            .expect("begun"),
        Response::Opened {
            base: None,
            resumed: 0
        }
    );
    net::send_msg(
        &mut send,
        &Request::Offer {
            blocks: vec![(0, BlockHash::of(good))],
        },
    )
    .await
    .expect("offer");
    assert_eq!(
        net::recv_msg::<Response>(&mut recv, REPL_CONTROL_LIMIT)
            .await
            .expect("need"),
        Response::Need { blocks: vec![0] }
    );
    let mut data = session.conn.open_uni().await.expect("uni");
    let frame = [block_header(sid, 0, kind).as_slice(), payload].concat();
    net::write_frame(&mut data, &frame).await.expect("write");
    let _ = data.finish();
    let closed = tokio::time::timeout(Duration::from_secs(10), session.conn.closed())
        .await
        .expect("closed");
    match closed {
        quinn::ConnectionError::ApplicationClosed(c) => {
            assert!(
                String::from_utf8_lossy(&c.reason).contains(reason),
                "{mirror}: {c:?}"
            );
        }
        other => panic!("{mirror}: unexpected {other:?}"),
    }
}

/// Replications killed (SIGKILL) at random points, the sender or the receiver, over and over:
/// every attempt is killed before it could have sent everything at its bandwidth limit, so the
/// transfer only completes because each attempt resumes where the last one stopped. After every
/// kill the previous mirror snapshot verifies and the new one is either absent or complete;
/// both end byte-identical with equal roots, and no journal or scratch file is left behind.
#[test]
fn kills_at_random_points_resume_and_end_identical() {
    use rand::Rng;
    let mut p = Pair::new();
    let mut r = rng("kill-resume");
    p.a(&["volume", "create", "v", "--size", "160M"]);
    let v = p.path("v");
    write_random(&v, 0, 128 * MIB as usize, &mut r);
    p.a(&["snapshot", "create", "v", "s1"]);
    // Bytes a single attempt may send before it is killed, at most.
    const RATE: u64 = 48 * MIB;
    let max_life_ms = 1800;
    let attempts = std::cell::Cell::new(0);
    let killed = std::cell::Cell::new((0, 0));
    let phase = |p: &mut Pair, snap: &str, prev: Option<&str>, r: &mut rand::rngs::StdRng| {
        let want = file_hash(&v);
        let mut last = None;
        for attempt in 0..40 {
            if p.mirror_snapshots("v").iter().any(|(n, _)| n == snap) {
                break;
            }
            attempts.set(attempts.get() + 1);
            let addr = p.addr();
            let rate = format!("{RATE}");
            let mut child = Command::new(bin("ferry-agent"))
                .arg("--config")
                .arg(&p.a_cfg)
                .args(["--json", "replicate", "v", snap, "--to", &addr])
                .args(["--retries", "0", "--bwlimit", &rate])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("spawn");
            let life = Duration::from_millis(r.gen_range(200..max_life_ms));
            let t0 = std::time::Instant::now();
            while t0.elapsed() < life && child.try_wait().expect("wait").is_none() {
                std::thread::sleep(Duration::from_millis(10));
            }
            if child.try_wait().expect("wait").is_some() {
                let out = child.wait_with_output().expect("output");
                last = serde_json::from_slice::<Value>(&out.stdout).ok();
                continue;
            }
            let _ = child.kill();
            let _ = child.wait();
            if r.gen_bool(0.35) {
                // Kill the receiver too, and start it again (a new port: the mirror's
                // journal, not the address, carries the resume).
                killed.set((killed.get().0, killed.get().1 + 1));
                drop(p.served.take());
                p.served = Some(Served::start(&p.b_cfg));
            } else {
                killed.set((killed.get().0 + 1, killed.get().1));
            }
            let names: Vec<String> = p.mirror_snapshots("v").into_iter().map(|s| s.0).collect();
            if let Some(prev) = prev {
                assert!(
                    names.iter().any(|n| n == prev),
                    "attempt {attempt}: {names:?}"
                );
                assert_eq!(p.b(&["snapshot", "verify", "v", prev])["ok"], true);
            }
            if names.iter().any(|n| n == snap) {
                assert_eq!(
                    file_hash(&p.mirror_image("v", snap)),
                    want,
                    "complete or absent"
                );
            }
        }
        // Only resuming lets a run of short-lived attempts finish.
        let finished = last.is_some() || p.mirror_snapshots("v").iter().any(|(n, _)| n == snap);
        assert!(
            finished,
            "{snap} never completed in {} attempts",
            attempts.get()
        );
        let done = last.unwrap_or_else(|| p.replicate("v", snap, &[]));
        assert_eq!(file_hash(&p.mirror_image("v", snap)), want);
        let root = p.root_a("v", snap);
        let theirs = p.mirror_snapshots("v");
        assert_eq!(
            theirs.iter().find(|(n, _)| n == snap).map(|s| &s.1),
            Some(&root)
        );
        done
    };
    phase(&mut p, "s1", None, &mut r);
    let full_attempts = attempts.get();
    // 128 MiB at 48 MiB/s takes over 2.6 s: no attempt lived that long.
    assert!(
        full_attempts >= 2,
        "the full transfer needed {full_attempts} attempt(s)"
    );
    // Incremental: rewrite 96 MiB of it.
    write_random(&v, 16 * MIB, 96 * MIB as usize, &mut r);
    p.a(&["snapshot", "create", "v", "s2"]);
    phase(&mut p, "s2", Some("s1"), &mut r);
    eprintln!(
        "attempts: {full_attempts} full, {} incremental; killed {:?} (sender, receiver)",
        attempts.get() - full_attempts,
        killed.get()
    );
    assert_eq!(p.b(&["snapshot", "verify", "v", "s1"])["ok"], true);
    assert_eq!(p.b(&["snapshot", "verify", "v", "s2"])["ok"], true);
    assert!(
        !p.b_data.join("volumes/v/receive.journal").exists(),
        "the journal goes with the commit"
    );
    let leftovers: Vec<_> = std::fs::read_dir(p.b_data.join("volumes"))
        .expect("list")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

/// Two volumes in one command: one connection (one handshake in the sender's log), two
/// sessions progressing together, and the agent's bandwidth budget shared by both.
#[test]
fn several_volumes_share_one_connection_and_the_agent_budget() {
    let p = Pair::new();
    let mut r = rng("share");
    let mut text = std::fs::read_to_string(&p.a_cfg).expect("config");
    text.push_str("bandwidth_limit = \"16MiB\"\n");
    std::fs::write(&p.a_cfg, text).expect("config");
    for v in ["v1", "v2"] {
        p.a(&["volume", "create", v, "--size", "24M"]);
        write_random(&p.path(v), 0, 24 * MIB as usize, &mut r);
        p.a(&["snapshot", "create", v, "s"]);
    }
    let addr = p.addr();
    let out = Command::new(bin("ferry-agent"))
        .arg("--config")
        .arg(&p.a_cfg)
        .args(["--json", "replicate", "v1", "s", "v2", "s", "--to", &addr])
        .env("FERRY_LOG", "ferry_agent=info")
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let reports: Value = serde_json::from_slice(&out.stdout).expect("json");
    let reports = reports.as_array().expect("one report per pair");
    assert_eq!(reports.len(), 2);
    let log = String::from_utf8_lossy(&out.stderr);
    assert_eq!(log.matches("connected to peer").count(), 1, "{log}");
    let ms: Vec<f64> = reports
        .iter()
        .map(|r| r["elapsed_ms"].as_f64().expect("elapsed"))
        .collect();
    // 48 MiB at 16 MiB/s for the agent: about 3 s whoever sends it. Sent one after the
    // other, the first would end at half the time of the second.
    let (first, last) = (ms[0].min(ms[1]), ms[0].max(ms[1]));
    assert!(last >= 2500.0, "the agent's budget was not applied: {ms:?}");
    assert!(
        first >= 0.75 * last,
        "the sessions did not share fairly: {ms:?}"
    );
    for v in ["v1", "v2"] {
        assert_eq!(file_hash(&p.mirror_image(v, "s")), file_hash(&p.path(v)));
    }
}

/// Compressible data travels compressed with `--compress zstd` and arrives identical;
/// `--base` picks the base snapshot, and a base the peer lacks is refused clearly.
#[test]
fn compression_and_an_explicit_base() {
    use rand::Rng;
    let p = Pair::new();
    let mut r = rng("compress");
    p.a(&["volume", "create", "v", "--size", "8M"]);
    let v = p.path("v");
    // Text-like data: random decimal digits compress to well under half.
    let digits: Vec<u8> = (0..8 * MIB).map(|_| b'0' + r.gen_range(0..10u8)).collect();
    std::fs::write(&v, &digits).expect("write");
    p.a(&["snapshot", "create", "v", "s1"]);
    let full = p.replicate("v", "s1", &["--compress", "zstd"]);
    assert_eq!(full["compressed_blocks"], full["sent_blocks"], "{full}");
    let sent = full["sent_bytes"].as_u64().expect("bytes");
    assert!(sent < 8 * MIB / 2 + 4096, "{full}");
    assert_eq!(file_hash(&p.mirror_image("v", "s1")), file_hash(&v));
    // Not compressible: sent as is.
    p.a(&["volume", "create", "w", "--size", "2M"]);
    write_random(&p.path("w"), 0, 2 * MIB as usize, &mut r);
    p.a(&["snapshot", "create", "w", "w1"]);
    let raw = p.replicate("w", "w1", &["--compress", "zstd:3"]);
    assert_eq!(raw["compressed_blocks"], 0, "{raw}");

    write_random(&v, 0, 64 * 1024, &mut r);
    p.a(&["snapshot", "create", "v", "s2"]);
    write_random(&v, MIB, 64 * 1024, &mut r);
    p.a(&["snapshot", "create", "v", "s3"]);
    let inc = p.replicate("v", "s2", &[]);
    assert_eq!(inc["base"], "s1");
    let from_s1 = p.replicate("v", "s3", &["--base", "s1"]);
    assert_eq!(from_s1["base"], "s1", "{from_s1}");
    // Both blocks changed since s1 are offered; the one s2 changed is found in the mirror's
    // s2 and copied there, not sent.
    assert_eq!(from_s1["offered_blocks"], 2, "{from_s1}");
    assert_eq!(from_s1["sent_blocks"], 1, "{from_s1}");
    assert_eq!(file_hash(&p.mirror_image("v", "s3")), file_hash(&v));
    // Refused: a base the peer does not hold, a base that is not older, a bad value.
    p.a(&["snapshot", "create", "v", "s4"]);
    p.a(&["snapshot", "create", "v", "s5"]);
    let addr = p.addr();
    for (base, says) in [
        ("s4", "does not hold"),
        ("s5", "not an older snapshot"),
        ("../x", "base snapshot"),
    ] {
        let out = Pair::run(
            &p.a_cfg,
            &["replicate", "v", "s5", "--to", &addr, "--base", base],
        );
        assert_eq!(out.status.code(), Some(1), "--base {base}");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains(says), "--base {base}: {text}");
    }
    let out = Pair::run(
        &p.a_cfg,
        &["replicate", "v", "s5", "--to", &addr, "--compress", "lz4"],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("zstd:LEVEL"));
    let out = Pair::run(
        &p.a_cfg,
        &[
            "replicate",
            "v",
            "s5",
            "w",
            "w1",
            "--to",
            &addr,
            "--base",
            "s1",
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("one VOLUME SNAPSHOT pair"));
}

#[test]
fn a_large_transfer_stays_within_flow_control() {
    // 15,360 needed 16 KiB blocks: more than a receiver accepts pending at once, so the
    // sender must pace its offers by what it has sent.
    let p = Pair::new();
    let mut r = rng("large");
    p.a(&[
        "volume",
        "create",
        "big",
        "--size",
        "256M",
        "--block-size",
        "16K",
    ]);
    let v = p.path("big");
    write_random(&v, 0, 240 * MIB as usize, &mut r);
    p.a(&["snapshot", "create", "big", "s1"]);
    let full = p.replicate("big", "s1", &[]);
    assert_eq!(full["sent_blocks"], 15360, "{full}");
    assert_eq!(file_hash(&p.mirror_image("big", "s1")), file_hash(&v));
}

#[test]
fn bandwidth_limit_and_progress() {
    let p = Pair::new();
    let mut r = rng("bwlimit");
    p.a(&["volume", "create", "v", "--size", "32M"]);
    write_random(&p.path("v"), 0, 24 * MIB as usize, &mut r);
    p.a(&["snapshot", "create", "v", "s1"]);
    let addr = p.addr();
    let t0 = std::time::Instant::now();
    let out = Command::new(bin("ferry-agent"))
        .arg("--config")
        .arg(&p.a_cfg)
        .args([
            "--json",
            "replicate",
            "v",
            "s1",
            "--to",
            &addr,
            "--bwlimit",
            "8MiB",
            "--progress",
        ])
        .output()
        .expect("run");
    let secs = t0.elapsed().as_secs_f64();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // 24 MiB at 8 MiB/s with a 1 MiB burst cannot take less than about 2.9 s.
    assert!(secs >= 2.5, "the limit was not applied: {secs:.2} s");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("progress:") && stderr.contains("ETA"),
        "{stderr}"
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["sent_bytes"].as_u64(), Some(24 * MIB));
}

/// A pair whose volume "v" (`size` MiB, the first `data` MiB random) has snapshot s1, and
/// a relay to the receiver that drops 5% of datagrams each way and delays each by 50 ms each
/// way (100 ms round trip): this kernel has no netem.
fn behind_a_lossy_link(
    seed: &str,
    size: u64,
    data: u64,
) -> (Pair, PathBuf, ferry_tests::LossyRelay, rand::rngs::StdRng) {
    let p = Pair::new();
    let mut r = rng(seed);
    p.a(&["volume", "create", "v", "--size", &format!("{size}M")]);
    let v = p.path("v");
    write_random(&v, 0, (data * MIB) as usize, &mut r);
    p.a(&["snapshot", "create", "v", "s1"]);
    let relay = ferry_tests::LossyRelay::start(
        p.served.as_ref().expect("served").addr,
        0.05,
        Duration::from_millis(50),
        data,
    );
    (p, v, relay, r)
}

#[test]
fn a_lossy_long_link_keeps_its_connection_for_a_large_transfer() {
    // 5% loss and 100 ms round trip with data enough to fill the windows: quinn closes a
    // connection whose stream holds over 1,024 gaps of lost packets ("too many gaps in
    // stream buffer"), which 64 MiB stream windows reached. No retries: the first
    // connection must carry the whole transfer.
    let (p, v, relay, _) = behind_a_lossy_link("lossy-large", 256, 256);
    let addr = relay.addr.to_string();
    let full = p.a(&["replicate", "v", "s1", "--to", &addr, "--retries", "0"]);
    assert_eq!(full["sent_bytes"].as_u64(), Some(256 * MIB), "{full}");
    drop(relay);
    assert_eq!(file_hash(&p.mirror_image("v", "s1")), file_hash(&v));
}

#[test]
fn five_percent_loss_and_100ms_delay_still_completes() {
    let (p, v, relay, mut r) = behind_a_lossy_link("lossy", 16, 4);
    let addr = relay.addr.to_string();
    let full = p.a(&["replicate", "v", "s1", "--to", &addr]);
    assert_eq!(full["sent_bytes"].as_u64(), Some(4 * MIB));
    random_page_writes(&v, 16 * MIB, 50, &mut r);
    p.a(&["snapshot", "create", "v", "s2"]);
    let inc = p.a(&["replicate", "v", "s2", "--to", &addr]);
    assert_eq!(inc["base"], "s1");
    drop(relay);
    for s in ["s1", "s2"] {
        assert_eq!(
            p.mirror_snapshots("v")
                .iter()
                .find(|m| m.0 == s)
                .map(|m| m.1.clone()),
            Some(p.root_a("v", s))
        );
    }
    assert_eq!(file_hash(&p.mirror_image("v", "s2")), file_hash(&v));
}
