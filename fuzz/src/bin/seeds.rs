//! Writes the seed corpus of every fuzz target into DIR/<target>/: real messages, journals,
//! manifests, payloads, records and API bodies, made by the code that makes them in ferry.
//! `scripts/fuzz` runs it before fuzzing; the output is deterministic.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use ferry_wire::codec::encode;
use ferry_wire::hash::Geometry;
use ferry_wire::hashfile::{HashFileWriter, Kind};
use ferry_wire::repl::{span_payload, ErrorClass, Request, Response, PAGE_SIZE};
use ferry_wire::{control, journal, msg, task, BlockHash, Name};
use serde_json::json;

fn name(s: &str) -> Name {
    Name::new(s).expect("a valid name")
}

struct Corpus {
    dir: PathBuf,
    count: usize,
}

impl Corpus {
    /// A seed of `target` whose first byte (`tag`) picks what the rest is.
    fn put(&mut self, target: &str, tag: u8, bytes: &[u8]) -> Result<()> {
        let mut all = vec![tag];
        all.extend_from_slice(bytes);
        self.raw(target, &all)
    }

    fn raw(&mut self, target: &str, all: &[u8]) -> Result<()> {
        let dir = self.dir.join(target);
        std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
        let file = dir.join(&blake3::hash(all).to_hex().as_str()[..16]);
        std::fs::write(&file, all).with_context(|| format!("write {}", file.display()))?;
        self.count += 1;
        Ok(())
    }
}

fn messages(c: &mut Corpus) -> Result<()> {
    let hello = msg::Hello::new(name("n1"), name("site-a"));
    c.put("messages", 0, &encode(&hello)?)?;
    c.put("messages", 1, &encode(&msg::Control::Ping { nonce: 7 })?)?;
    c.put(
        "messages",
        1,
        &encode(&msg::Control::Error {
            code: 2,
            message: "no".into(),
        })?,
    )?;
    let root = BlockHash::of(b"root");
    let reqs = [
        Request::Open {
            mirror: name("v"),
            snapshot: name("s2"),
            size: 64 << 20,
            block_size: 65536,
            root,
            candidates: vec![(name("s1"), BlockHash::of(b"s1"))],
            base: Some(name("s1")),
        },
        Request::Zeros {
            ranges: vec![(0, 4), (9, 12)],
        },
        Request::Offer {
            blocks: (0..8).map(|i| (i, BlockHash::of(&[i as u8]))).collect(),
        },
        Request::Commit,
    ];
    for r in &reqs {
        c.put("messages", 2, &encode(r)?)?;
    }
    let resps = [
        Response::Opened {
            base: Some(name("s1")),
            resumed: 3,
        },
        Response::Need {
            blocks: vec![1, 5, 7],
        },
        Response::Committed {
            root,
            timings: Some(ferry_wire::repl::ReceiverTimings::default()),
        },
        Response::Error {
            class: ErrorClass::NoSpace,
            message: "full".into(),
        },
    ];
    for r in &resps {
        c.put("messages", 3, &encode(r)?)?;
    }
    let hb = control::AgentMsg::Heartbeat {
        seq: 1,
        running: 0,
        free_bytes: 1 << 30,
    };
    c.put("messages", 4, &encode(&hb)?)?;
    let progress = control::AgentMsg::TaskProgress {
        id: name("t1"),
        done_bytes: 5,
        total_bytes: 9,
    };
    c.put("messages", 4, &encode(&progress)?)?;
    let t = task::Task {
        id: name("r1.n1.snapshot"),
        generation: 3,
        kind: task::TaskKind::SnapshotGroup {
            snapshot: name("p-20261202T000000Z"),
            volumes: vec![name("v1"), name("v2")],
            pre_hook: Some("sync".into()),
            post_hook: None,
            hook_timeout_secs: Some(30),
            hold: None,
        },
        start_within_secs: Some(20),
    };
    c.put(
        "messages",
        5,
        &encode(&control::ControllerMsg::Task(t.clone()))?,
    )?;
    c.put("messages", 6, &encode(&t)?)?;
    let create = task::Task {
        id: name("vol.n1.create"),
        generation: 1,
        kind: task::TaskKind::CreateVolume {
            volume: name("v3"),
            size: 1 << 30,
            block_size: None,
        },
        start_within_secs: None,
    };
    c.put("messages", 6, &encode(&create)?)?;
    Ok(())
}

fn frames(c: &mut Corpus) -> Result<()> {
    let mut s = Vec::new();
    for p in [&b"hello"[..], &[0u8; 300], b""] {
        s.extend(ferry_wire::frame::encode_frame(p));
    }
    c.put("frame", 40, &s)?;
    c.put("frame", 1, &ferry_wire::frame::encode_frame(&[1; 200]))
}

fn journals(c: &mut Corpus) -> Result<()> {
    let h = journal::JournalHeader {
        snapshot: name("s2"),
        base: Some(name("s1")),
        root: BlockHash::of(b"root"),
        size: 64 << 20,
        block_size: 65536,
    };
    let mut j = journal::encode_header(&h);
    c.raw("journal", &j)?;
    j.extend(journal::encode_batches(&mut [1, 2, 3, 9, 10, 700]));
    j.extend(journal::encode_batches(&mut [4, 5]));
    c.raw("journal", &j)?;
    // Torn at the end.
    c.raw("journal", &j[..j.len() - 3])
}

fn hashfiles(c: &mut Corpus, tmp: &Path) -> Result<()> {
    for (kind, tag, size) in [
        (Kind::Manifest, 0u8, 1u64 << 20),
        (Kind::Leaves, 1u8, 4 << 20),
    ] {
        let g = Geometry::new(65536, size).context("geometry")?;
        let p = tmp.join(format!("hashfile-{tag}"));
        let _ = std::fs::remove_file(&p);
        let mut f = HashFileWriter::create(&p, kind, g).context("create")?;
        let n = kind.entry_count(&g);
        for i in 0..n {
            f.set(i, &BlockHash::of(&i.to_le_bytes()).0);
        }
        f.finish().context("finish")?;
        c.put("hashfile", tag, &std::fs::read(&p)?)?;
    }
    Ok(())
}

fn payloads(c: &mut Corpus) -> Result<()> {
    let block: Vec<u8> = (0..4 * PAGE_SIZE).map(|i| (i * 7 % 251) as u8).collect();
    // Full, zstd full, pages, zstd pages (4 pages, so head bits 0 and 2 select 16 KiB).
    c.put("payload", 0x02, &block)?;
    c.put("payload", 0x0a, &zstd::bulk::compress(&block, 3)?)?;
    let pages = span_payload(&[0b0101], 0, &block).context("pages")?;
    c.put("payload", 0x12, &pages)?;
    c.put("payload", 0x1a, &zstd::bulk::compress(&pages, 3)?)?;
    Ok(())
}

fn controller(c: &mut Corpus) -> Result<()> {
    use ferry_controller::state::schema::{PlanRecord, RunRecord};
    let vm = json!({"name": "web", "kind": {"type": "vm", "vcpus": 2, "memory_mib": 4096,
        "disks": [{"volume": {"node": "n1", "volume": "web-root"}}, {"volume": {"node": "n1", "volume": "web-iso"}, "role": "cdrom"}],
        "nics": [{"switch": "lan", "mac": "52:54:00:12:34:56"}]}});
    let lun = json!({"name": "db", "kind": {"type": "iscsi_lun", "target_iqn": "iqn.2026-11.com.example:db", "lun": 0, "volume": {"node": "n1", "volume": "db"}}});
    let vv = json!({"name": "scratch", "kind": {"type": "virtual_volume", "volume": {"node": "n2", "volume": "s"}}});
    let plan = json!({"name": "nightly", "objects": ["web", "db"], "retention": 7,
        "schedule": {"every": "daily", "start": "2026-01-01T01:30", "timezone": "Europe/Berlin"},
        "hooks": {"pre": "sync", "timeout_secs": 30}});
    for o in [&vm, &lun, &vv] {
        c.put("api_bodies", 0, o.to_string().as_bytes())?;
        c.put("records", 7, o.to_string().as_bytes())?;
    }
    c.put("api_bodies", 1, plan.to_string().as_bytes())?;
    for s in ["10G", "1.5TiB", "4096", "64MiB", "1 G", "10GB"] {
        c.put("api_bodies", 2, s.as_bytes())?;
    }
    for q in [
        "limit=10",
        "limit=1000&after=p.0123456789ab/s1780000000000-00",
        "after=vm-1",
    ] {
        c.put("api_bodies", 3, q.as_bytes())?;
    }
    let spec = serde_json::from_value(plan).context("plan spec")?;
    let rec = PlanRecord {
        id: Some(name("nightly.0123456789ab")),
        spec,
        paused: false,
        next_run: None,
        origin: None,
    };
    c.put("records", 0, &serde_json::to_vec(&rec)?)?;
    let objects: Vec<ferry_controller::policy::model::Object> =
        vec![serde_json::from_value(vm)?, serde_json::from_value(lun)?];
    let at = jiff::Timestamp::from_second(1_780_000_000)?;
    let run: RunRecord =
        ferry_controller::daemon::scheduler::new_run(&rec, &objects, Some(at), 2, at);
    c.put("records", 1, &serde_json::to_vec(&run)?)?;
    use ferry_controller::machines::recovery::{Recovery, RecoveryKind, RecoverySpec};
    let spec = RecoverySpec {
        id: name("rb1780000000000-0123abcd"),
        kind: RecoveryKind::Rebuild,
        plan: name("site-a.nightly"),
        plan_id: name("f-0123456789abcdef01234567"),
        group: name("nightly-20260101T013000Z"),
        generation: 2,
        trigger: "manual".into(),
    };
    let volumes = vec![(
        name("n1"),
        name("site-a.n1.web-root"),
        "ab".repeat(32),
        Some(name("web-root")),
    )];
    let r = Recovery::new(spec, volumes, vec![(name("web"), objects[0].clone())], at);
    c.put("records", 6, &serde_json::to_vec(&r)?)?;
    Ok(())
}

fn main() -> Result<()> {
    let dir: PathBuf = std::env::args_os()
        .nth(1)
        .map(Into::into)
        .context("usage: seeds DIR")?;
    let tmp = tempfile::tempdir()?;
    let mut c = Corpus { dir, count: 0 };
    messages(&mut c)?;
    frames(&mut c)?;
    journals(&mut c)?;
    hashfiles(&mut c, tmp.path())?;
    payloads(&mut c)?;
    controller(&mut c)?;
    println!("{} seeds in {}", c.count, c.dir.display());
    Ok(())
}
