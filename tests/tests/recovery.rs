//! Recovery at the target: two real sites on loopback (controllers on the embedded store,
//! real agents, real QUIC with each site's certificates), a backup plan over the four kinds
//! of object, then at site-b: scheduled and manual drills (one whose check fails), the
//! verification of kept groups (one damaged on purpose), RPO alarms raised and cleared with
//! their webhooks, a rebuild that fails and is undone, a rebuild of everything with site-a
//! SIGKILLed, byte for byte, and the failback to site-a that sends about the changed bytes
//! only. One set-up for all of it: two sites are what is expensive.

use std::path::PathBuf;

use ferry_tests::controller::{wait_for, READER};
use ferry_tests::sites::{pair, Site};
use ferry_tests::webhook::Receiver;
use ferry_tests::{agent_volume_path, file_hash, random_page_writes, rng, write_random, Pki};
use serde_json::{json, Value};

const MIB: u64 = 1 << 20;
const SECRET: &str = "webhook-secret-for-tests";

/// The recovery `id` of `plan` at `site`, of `what` (`rebuilds`, `drills`,
/// `verifications`), once it is over.
fn ended(site: &Site, plan: &str, what: &str, id: &str) -> Value {
    let mut last = Value::Null;
    wait_for(&format!("{what} {id} ends: {last}"), 120, || {
        let (code, v) = site.controller.call(
            "GET",
            &format!("/v1/plans/{plan}/{what}/{id}"),
            Some(READER),
            None,
        );
        assert_eq!(code, 200, "{v}");
        last = v.clone();
        v["phase"] == "done" || v["phase"] == "failed"
    });
    last
}

/// Starts a recovery with `body` at `path` (admin); returns its id.
fn start(site: &Site, path: &str, body: Value) -> String {
    let (code, v) = site.controller.admin("POST", path, Some(body));
    assert_eq!(code, 202, "{path}: {v}");
    v["id"].as_str().expect("id").to_string()
}

/// Every volume name `site`'s agents report.
fn volumes(site: &Site) -> Vec<String> {
    site.controller
        .list("/v1/volumes")
        .expect("volumes")
        .iter()
        .map(|v| {
            format!(
                "{}/{}",
                v["node"].as_str().unwrap_or(""),
                v["name"].as_str().unwrap_or("")
            )
        })
        .collect()
}

/// The metric line `name{labels}` of `site`'s `/metrics`, its value.
fn metric(site: &Site, line: &str) -> Option<f64> {
    site.controller
        .text("/metrics", READER)
        .lines()
        .find_map(|l| l.strip_prefix(line)?.trim().parse().ok())
}

/// Checks a delivery's signature against the body, independently of ferry's code.
fn signed(d: &ferry_tests::webhook::Delivery) -> bool {
    let Some(hex) = d
        .signature
        .as_deref()
        .and_then(|s| s.strip_prefix("sha256="))
    else {
        return false;
    };
    let tag: Vec<u8> = (0..hex.len() / 2)
        .filter_map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok())
        .collect();
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, SECRET.as_bytes());
    ring::hmac::verify(&key, &d.body, &tag).is_ok()
}

/// The data directory for the sites: on the XFS (reflink) loop mount when there is one,
/// so rebuilds and seeds are clones; else a plain temporary directory (copy backend).
fn workdir() -> tempfile::TempDir {
    match std::env::var_os("FERRY_TEST_XFS") {
        Some(x) => tempfile::tempdir_in(x).expect("tempdir on xfs"),
        None => tempfile::tempdir().expect("tempdir"),
    }
}

/// site-a's objects: a VM with two disks on two nodes and a CD-ROM, an iSCSI LUN, an NFS
/// file, a plain volume. Returns (object, [(node, volume)]) per object.
fn objects() -> Vec<(Value, Vec<(&'static str, &'static str)>)> {
    vec![
        (
            json!({"name": "web", "kind": {"type": "vm", "vcpus": 4, "memory_mib": 8192,
                "disks": [{"volume": {"node": "a1", "volume": "d0"}},
                          {"volume": {"node": "a2", "volume": "d1"}},
                          {"volume": {"node": "a1", "volume": "iso0"}, "role": "cdrom"}],
                "nics": [{"switch": "vsw-prod", "mac": "52:54:00:aa:00:01"},
                         {"switch": "vsw-backup", "mac": "52:54:00:aa:00:02"}]}}),
            vec![("a1", "d0"), ("a2", "d1")],
        ),
        (
            json!({"name": "db", "kind": {"type": "iscsi_lun",
                "target_iqn": "iqn.2026-11.com.example:db", "lun": 7,
                "volume": {"node": "a1", "volume": "lun0"}}}),
            vec![("a1", "lun0")],
        ),
        (
            json!({"name": "share", "kind": {"type": "nfs_file", "export": "/srv/nfs",
                "path": "vms/share.img", "volume": {"node": "a2", "volume": "nfs0"}}}),
            vec![("a2", "nfs0")],
        ),
        (
            json!({"name": "scratch", "kind": {"type": "virtual_volume",
                "volume": {"node": "a1", "volume": "plain0"}}}),
            vec![("a1", "plain0")],
        ),
    ]
}

#[test]
fn recovery_at_the_target() {
    let pki = Pki::new();
    let work = workdir();
    let d = work.path();
    let hooks = Receiver::start();
    let webhook = format!(
        "[[webhooks]]\nurl = {:?}\nsecret = {SECRET:?}\n",
        hooks.url()
    );
    let a_store = format!("{}\n{webhook}", Site::embedded(d, "site-a"));
    let a_port = ferry_tests::controller::free_udp_port();
    let mut a = Some(Site::start_on(
        &pki,
        d,
        "site-a",
        &a_store,
        &["a1", "a2"],
        a_port,
    ));
    let b_store = format!(
        "{}\n[recovery]\ndrill_checks_from = [\"site-a\"]\nverify_every_secs = 15\n\
         verify_bandwidth = \"256MiB\"\n{webhook}",
        Site::embedded(d, "site-b")
    );
    let b = Site::start(&pki, d, "site-b", &b_store, &["b1", "b2"]);
    pair(a.as_ref().expect("a"), &b, d);

    // site-a's data: random, with holes.
    let mut r = rng("recovery");
    let sizes = [
        ("a1", "d0", 24),
        ("a2", "d1", 16),
        ("a1", "iso0", 1),
        ("a1", "lun0", 8),
        ("a2", "nfs0", 8),
        ("a1", "plain0", 4),
    ];
    let mut data = 0;
    for (node, vol, mib) in sizes {
        up(&a).agent(
            node,
            &["volume", "create", vol, "--size", &format!("{mib}M")],
        );
        let path = agent_volume_path(up(&a).config(node), vol);
        let len = (mib * MIB * 3 / 4) as usize;
        write_random(&path, 0, len, &mut r);
        if vol != "iso0" {
            data += len as u64;
        }
    }
    for (o, _) in objects() {
        up(&a).add_object(o);
    }
    // A backup plan, enabled but with its first slot far ahead (runs here are by hand), an
    // RPO of 20 s, and an hourly drill at site-b whose first slot is already due.
    let plan = json!({"name": "web", "objects": ["web", "db", "share", "scratch"],
        "retention": 3, "rpo_secs": 20,
        "schedule": {"every": "daily", "start": "2099-01-01T00:00"},
        "targets": [{"site": "site-b", "retention": 3,
            "switches": {"vsw-prod": "vsw-dr", "vsw-backup": "vsw-dr-backup"},
            "drill": {"schedule": {"every": "hourly", "start": "2026-01-01T00:00"},
                      "check": "test -s \"$FERRY_VOLUME\" && echo checked $FERRY_OBJECT",
                      "timeout_secs": 60}}]});
    let (code, v) = up(&a).controller.admin("POST", "/v1/plans", Some(plan));
    assert_eq!(code, 201, "{v}");

    // The full run.
    let full = up(&a).run_now("web");
    assert_eq!(full["run"]["step"], "done", "{full}");
    let full_sent = Site::sent(&full, "site-b");
    assert!(
        full_sent >= data,
        "a full copy sent {full_sent} of {data} bytes"
    );
    let foreign = "site-a.web";
    let g1 = b.groups(foreign)[0]["group"]
        .as_str()
        .expect("g1")
        .to_string();

    // The scheduled drill: its slot was due, so it runs once the first group is there.
    let mut drill = Value::Null;
    wait_for("the scheduled drill starts", 30, || {
        drill = b
            .controller
            .list(&format!("/v1/plans/{foreign}/drills"))
            .expect("drills")
            .first()
            .cloned()
            .unwrap_or(Value::Null);
        !drill.is_null()
    });
    assert_eq!(drill["trigger"], "schedule", "{drill}");
    let drill = ended(&b, foreign, "drills", drill["id"].as_str().expect("id"));
    assert_eq!(drill["phase"], "done", "{drill}");
    for v in drill["volumes"].as_array().expect("volumes") {
        assert_eq!(v["clone"], "done", "{v}");
        assert_eq!(v["verify"], "done", "{v}");
        assert!(v["bytes_read"].as_u64().unwrap_or(0) > 0, "{v}");
    }
    for o in drill["objects"].as_array().expect("objects") {
        assert_eq!(o["check"], "done", "{o}");
        let out = o["check_output"].as_str().unwrap_or("");
        assert!(
            out.contains(&format!("checked {}", o["name"].as_str().unwrap_or("?"))),
            "{o}"
        );
    }
    for phase in ["clone", "verify", "check", "cleanup"] {
        assert!(drill["timings"][phase].is_u64(), "{phase}: {drill}");
    }
    let scratch = |b: &Site| volumes(b).into_iter().filter(|v| v.contains("/dr")).count();
    assert_eq!(
        scratch(&b),
        0,
        "the scratch volumes are gone: {:?}",
        volumes(&b)
    );
    eprintln!("scheduled drill passed: timings {}", drill["timings"]);

    // A drill whose check fails (this site's admin's own check, which always runs): a
    // failed run of the foreign plan in status and metrics, and a webhook.
    let id = start(
        &b,
        &format!("/v1/plans/{foreign}/drills"),
        json!({"check": "echo no boot from $FERRY_OBJECT >&2; exit 3", "timeout_secs": 30}),
    );
    let bad = ended(&b, foreign, "drills", &id);
    assert_eq!(bad["phase"], "failed", "{bad}");
    let e = bad["error"].as_str().unwrap_or("");
    assert!(
        e.contains("check failed") && e.contains("no boot from web"),
        "{e}"
    );
    assert_eq!(
        scratch(&b),
        0,
        "a failed drill cleans up too: {:?}",
        volumes(&b)
    );
    let (_, st) = b.controller.call("GET", "/v1/status", Some(READER), None);
    let fp = st["plans"]
        .as_array()
        .expect("plans")
        .iter()
        .find(|p| p["name"] == foreign)
        .cloned()
        .expect("foreign plan in status");
    assert_eq!(fp["failure"]["id"], id.as_str(), "{fp}");
    assert_eq!(fp["origin"], "site-a", "{fp}");
    assert_eq!(
        metric(
            &b,
            &format!("ferry_drill_last_passed{{plan=\"{foreign}\"}}")
        ),
        Some(0.0)
    );
    assert_eq!(
        metric(
            &b,
            &format!("ferry_runs{{plan=\"{foreign}\",step=\"failed\"}}")
        ),
        Some(1.0)
    );
    wait_for("the failed drill's webhook arrives", 30, || {
        !hooks.events("drill_failed", "site-b").is_empty()
    });
    let (ok, out, _) = b.cli(&["status"]);
    assert!(ok && out.contains(&format!("drill {id} failed")), "{out}");
    // The next one passes again (a check that is this site's own).
    let id = start(
        &b,
        &format!("/v1/plans/{foreign}/drills"),
        json!({"check": "true"}),
    );
    assert_eq!(ended(&b, foreign, "drills", &id)["phase"], "done");
    let (_, st) = b.controller.call("GET", "/v1/status", Some(READER), None);
    assert!(
        st["plans"]
            .as_array()
            .expect("plans")
            .iter()
            .any(|p| p["name"] == foreign && p["failure"].is_null()),
        "{st}"
    );

    // RPO: 20 s (plus 5 s of grace) without a new group: violated at both ends, notified.
    wait_for("the RPO is violated at site-a", 40, || {
        !hooks.events("rpo_violated", "site-a").is_empty()
    });
    wait_for("and at site-b, where the copies are", 20, || {
        !hooks.events("rpo_violated", "site-b").is_empty()
    });
    let v = &hooks.events("rpo_violated", "site-a")[0];
    assert_eq!(v["plan"], "web");
    assert_eq!(v["peer"], "site-b");
    let (_, st) = up(&a)
        .controller
        .call("GET", "/v1/status", Some(READER), None);
    assert_eq!(st["plans"][0]["targets"][0]["rpo_violated"], true, "{st}");
    let (ok, out, _) = up(&a).cli(&["status"]);
    assert!(
        ok && out.contains("RPO violated") && out.contains("LATE"),
        "{out}"
    );
    assert_eq!(
        metric(
            up(&a),
            "ferry_rpo_violated{plan=\"web\",site=\"site-b\",role=\"source\"}"
        ),
        Some(1.0)
    );

    // The incremental run restores it.
    let mut changed = 0;
    for (node, vol, mib) in [("a1", "d0", 24), ("a1", "lun0", 8)] {
        let path = agent_volume_path(up(&a).config(node), vol);
        changed += random_page_writes(&path, mib * MIB, 48, &mut r).len() as u64 * 4096;
    }
    let inc = up(&a).run_now("web");
    assert_eq!(inc["run"]["step"], "done", "{inc}");
    let inc_sent = Site::sent(&inc, "site-b");
    assert!(
        inc_sent <= 2 * changed + 256 * 1024,
        "sent {inc_sent} for {changed} changed"
    );
    wait_for("the RPO is held again at both ends", 30, || {
        !hooks.events("rpo_restored", "site-a").is_empty()
            && !hooks.events("rpo_restored", "site-b").is_empty()
    });
    let g2 = b.groups(foreign).last().expect("g2")["group"]
        .as_str()
        .expect("g2")
        .to_string();
    // Each state change was told once, after a first delivery the receiver refused.
    assert_eq!(hooks.events("rpo_violated", "site-a").len(), 1);
    let all = hooks.deliveries();
    assert!(
        all.iter().all(signed),
        "every body is signed with the secret"
    );
    assert!(
        all.iter().any(|d| !d.accepted),
        "a refused delivery was tried again"
    );
    eprintln!(
        "full {full_sent} bytes for {data} of data; incremental {inc_sent} bytes for {changed} changed"
    );

    // Verification: the kept groups are re-read on their own (every 15 s here); a damaged
    // mirror snapshot fails its group's verification, repaired it passes again.
    wait_for("a scheduled verification of g1 passed", 60, || {
        b.groups(foreign)
            .iter()
            .any(|g| g["group"] == g1.as_str() && g["verified"]["ok"] == true)
    });
    let snap = b.groups(foreign)[0]["snapshots"][0].clone();
    let (mnode, mvol) = (
        snap[0].as_str().expect("node"),
        snap[1]["volume"].as_str().expect("vol"),
    );
    let image = b.snapshot_image(mnode, mvol, &g1);
    let original = std::fs::read(&image).expect("read mirror snapshot");
    let mut damaged = original.clone();
    damaged[4096] ^= 0x55;
    std::fs::write(&image, &damaged).expect("damage");
    let path = format!("/v1/plans/{foreign}/groups/{g1}/verify");
    let v = ended(&b, foreign, "verifications", &start(&b, &path, json!({})));
    assert_eq!(v["phase"], "failed", "{v}");
    assert!(
        v["error"]
            .as_str()
            .unwrap_or("")
            .contains("1 block(s) differ"),
        "{v}"
    );
    wait_for("the damaged group's webhook arrives", 30, || {
        !hooks.events("verify_failed", "site-b").is_empty()
    });
    let (_, st) = b.controller.call("GET", "/v1/status", Some(READER), None);
    assert!(
        st.to_string().contains("verification_failures\":[\""),
        "{st}"
    );
    std::fs::write(&image, &original).expect("repair");
    let v = ended(&b, foreign, "verifications", &start(&b, &path, json!({})));
    assert_eq!(v["phase"], "done", "{v}");

    // A rebuild that cannot finish is undone: one mirror snapshot of g1 is gone from its
    // node, the volumes already made on the other nodes are deleted, no object is made.
    let gone = b.groups(foreign)[0]["snapshots"]
        .as_array()
        .expect("snapshots")
        .iter()
        .find(|x| x[0] == "b2")
        .cloned()
        .expect("a mirror on b2");
    b.agent(
        "b2",
        &[
            "snapshot",
            "delete",
            gone[1]["volume"].as_str().expect("v"),
            &g1,
        ],
    );
    let id = start(
        &b,
        &format!("/v1/plans/{foreign}/rebuilds"),
        json!({"group": g1, "suffix": "-x"}),
    );
    let undone = ended(&b, foreign, "rebuilds", &id);
    assert_eq!(undone["phase"], "failed", "{undone}");
    let why = undone["error"].as_str().unwrap_or("");
    assert!(why.contains("b2/") && why.contains(&g1), "{undone}");
    let made: Vec<&Value> = undone["volumes"]
        .as_array()
        .expect("v")
        .iter()
        .filter(|v| v["made"] == true)
        .collect();
    assert!(
        !made.is_empty(),
        "some volumes were made before the failure: {undone}"
    );
    assert!(
        made.iter().all(|v| v["delete"] == "done"),
        "and deleted again: {undone}"
    );
    wait_for("no volume of the failed rebuild is left", 20, || {
        !volumes(&b).iter().any(|v| v.ends_with("-x"))
    });
    let (code, _) = b
        .controller
        .call("GET", "/v1/objects/web-x", Some(READER), None);
    assert_eq!(code, 404, "no object was made");
    wait_for("the failed rebuild's webhook arrives", 30, || {
        !hooks.events("rebuild_failed", "site-b").is_empty()
    });
    // A name this site has already is refused before anything is made.
    b.agent("b1", &["volume", "create", "mine", "--size", "1M"]);
    b.add_object(json!({"name": "db", "kind": {"type": "virtual_volume",
        "volume": {"node": "b1", "volume": "mine"}}}));
    let (code, v) = b.controller.admin(
        "POST",
        &format!("/v1/plans/{foreign}/rebuilds"),
        Some(json!({"group": g2})),
    );
    assert_eq!(code, 409, "{v}");
    assert!(
        v.to_string().contains("object named db") && v.to_string().contains("--suffix"),
        "{v}"
    );
    let (code, _) = b.controller.admin("DELETE", "/v1/objects/db", None);
    assert_eq!(code, 204);

    // site-a is gone: its controller and agents SIGKILLed. What its group g2 held, read
    // from its files for the comparison after.
    let sources: Vec<(String, String, String)> = objects()
        .iter()
        .flat_map(|(_, vols)| vols.clone())
        .map(|(node, vol)| {
            let img = up(&a).snapshot_image(node, vol, &g2);
            (node.to_string(), vol.to_string(), file_hash(&img))
        })
        .collect();
    drop(a.take());

    // The rebuild of everything at site-b, through the CLI, with nothing from site-a.
    let (ok, out, err) = b.cli(&["--json", "plans", "rebuild", foreign, &g2, "--wait"]);
    assert!(ok, "{out}{err}");
    let rebuilt: Value = serde_json::from_str(&out).expect("json");
    assert_eq!(rebuilt["phase"], "done", "{rebuilt}");
    eprintln!("rebuild with site-a down took {}", rebuilt["timings"]);
    // Each new volume holds exactly what the source's group held.
    for v in rebuilt["volumes"].as_array().expect("volumes") {
        let node = v["node"].as_str().expect("node");
        let new = v["new_volume"].as_str().expect("new");
        let mirror = v["volume"].as_str().expect("mirror");
        let (src_node, src_vol, hash) = sources
            .iter()
            .find(|(n, s, _)| mirror == format!("site-a.{n}.{s}"))
            .unwrap_or_else(|| panic!("no source for {mirror}"));
        assert_eq!(new, src_vol, "named after the source volume");
        assert_eq!(
            &file_hash(&agent_volume_path(b.config(node), new)),
            hash,
            "{node}/{new} differs from {src_node}/{src_vol} in {g2}"
        );
    }
    // The objects, with this site's names: the VM as the source's but for its disks (the
    // new volumes, no CD-ROM) and its NICs (on the mapped switches).
    let obj = |name: &str| {
        let (code, v) =
            b.controller
                .call("GET", &format!("/v1/objects/{name}"), Some(READER), None);
        assert_eq!(code, 200, "{name}: {v}");
        v
    };
    let vm = obj("web");
    let (src_vm, _) = &objects()[0];
    for k in ["vcpus", "memory_mib"] {
        assert_eq!(vm["kind"][k], src_vm["kind"][k], "{k}");
    }
    assert_eq!(
        vm["kind"]["nics"],
        json!([
        {"switch": "vsw-dr", "mac": "52:54:00:aa:00:01"},
        {"switch": "vsw-dr-backup", "mac": "52:54:00:aa:00:02"}])
    );
    let disks: Vec<String> = vm["kind"]["disks"]
        .as_array()
        .expect("disks")
        .iter()
        .map(|d| d["volume"]["volume"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(disks, ["d0", "d1"], "no CD-ROM");
    assert_eq!(obj("db")["kind"]["lun"], 7);
    assert_eq!(
        obj("db")["kind"]["target_iqn"],
        "iqn.2026-11.com.example:db"
    );
    assert_eq!(obj("share")["kind"]["path"], "vms/share.img");
    assert_eq!(obj("share")["kind"]["export"], "/srv/nfs");
    assert_eq!(obj("scratch")["kind"]["type"], "virtual_volume");

    // Work goes on at site-b: writes to the rebuilt VM's disk and LUN.
    let mut changed = 0;
    let written: Vec<PathBuf> = ["d0", "lun0"]
        .iter()
        .map(|vol| {
            let node = vm_node(&b, vol);
            let p = agent_volume_path(b.config(&node), vol);
            let size = std::fs::metadata(&p).expect("size").len();
            changed += random_page_writes(&p, size, 40, &mut r).len() as u64 * 4096;
            p
        })
        .collect();
    assert_eq!(written.len(), 2);

    // Failback: site-a comes back; site-b protects the rebuilt objects back to it. The
    // mirrors there are seeded from the snapshots site-a still holds with the same roots, so
    // only what changed since the rebuild travels.
    a = Some(Site::start_on(
        &pki,
        d,
        "site-a",
        &a_store,
        &["a1", "a2"],
        a_port,
    ));
    let back = json!({"name": "back", "objects": ["web", "db", "share", "scratch"],
        "retention": 2, "enabled": false,
        "schedule": {"every": "daily", "start": "2026-01-01T00:00"},
        "targets": [{"site": "site-a", "retention": 2,
            "switches": {"vsw-dr": "vsw-prod", "vsw-dr-backup": "vsw-backup"}}]});
    let (code, v) = b.controller.admin("POST", "/v1/plans", Some(back));
    assert_eq!(code, 201, "{v}");
    let run = b.run_now("back");
    assert_eq!(run["run"]["step"], "done", "{run}");
    let sent = Site::sent(&run, "site-a");
    eprintln!("failback: sent {sent} bytes for {changed} changed at site-b ({data} bytes of data)");
    assert!(
        sent <= 2 * changed + 512 * 1024,
        "failback sent {sent} bytes for {changed} changed: not only the changes"
    );
    // Every mirror was seeded: a changed volume went relative to g2, an unchanged one was
    // there already (its snapshot has g2's root), nothing sent.
    for t in run["run"]["targets"]["site-a"]["transfers"]
        .as_array()
        .expect("transfers")
    {
        match t["volume"].as_str() {
            Some("d0" | "lun0") => assert_eq!(t["base"], g2.as_str(), "seeded from g2: {t}"),
            _ => assert_eq!(t["sent_bytes"], 0, "unchanged, so there already: {t}"),
        }
    }
    // At site-a, the mirrors equal site-b's group, and a rebuild from them finishes the
    // failback.
    let back_group = run["run"]["group"].as_str().expect("group").to_string();
    let id = start(
        up(&a),
        "/v1/plans/site-b.back/rebuilds",
        json!({"group": back_group, "suffix": "-back"}),
    );
    let home = ended(up(&a), "site-b.back", "rebuilds", &id);
    assert_eq!(home["phase"], "done", "{home}");
    for v in home["volumes"].as_array().expect("volumes") {
        let node = v["node"].as_str().expect("node");
        let new = v["new_volume"].as_str().expect("new");
        let src = new.trim_end_matches("-back");
        let src_node = vm_node(&b, src);
        assert_eq!(
            file_hash(&agent_volume_path(up(&a).config(node), new)),
            file_hash(&b.snapshot_image(&src_node, src, &back_group)),
            "{node}/{new} at site-a differs from {src_node}/{src} at site-b"
        );
    }
    let (code, _) = up(&a)
        .controller
        .call("GET", "/v1/objects/web-back", Some(READER), None);
    assert_eq!(code, 200);
}

/// The node of site `s` holding volume `vol` (names are unique across its nodes here).
fn vm_node(s: &Site, vol: &str) -> String {
    volumes(s)
        .into_iter()
        .find_map(|v| {
            let (node, name) = v.split_once('/')?;
            (name == vol).then(|| node.to_string())
        })
        .unwrap_or_else(|| panic!("no volume {vol}"))
}

/// site-a, while it runs.
fn up(a: &Option<Site>) -> &Site {
    a.as_ref().expect("site-a runs")
}
