//! Backup plans across sites: two real sites on loopback (controllers on the embedded
//! store, real agents, real QUIC with each site's certificates), paired through the CLI.

use ferry_tests::controller::{wait_for, READER};
use ferry_tests::sites::{pair, Site};
use ferry_tests::{agent_volume_path, file_hash, rng, write_random, Pki};
use serde_json::{json, Value};

const MIB: u64 = 1 << 20;

/// Waits until run `id` of `plan` has moved more than `bytes` (its tasks' progress).
fn wait_under_way(site: &Site, plan: &str, id: &str, bytes: u64) {
    wait_for("the transfer is under way", 60, || {
        let (_, v) = site.controller.call(
            "GET",
            &format!("/v1/plans/{plan}/runs/{id}"),
            Some(READER),
            None,
        );
        v["progress"]["done_bytes"].as_u64().unwrap_or(0) > bytes
    });
}

/// Volume `v` of `mib` MiB of random data on `node` of `site`, protected as object `ov`;
/// returns its image's path.
fn random_volume(
    site: &Site,
    node: &str,
    mib: u64,
    r: &mut ferry_tests::StdRng,
) -> std::path::PathBuf {
    site.agent(
        node,
        &["volume", "create", "v", "--size", &format!("{mib}M")],
    );
    let path = agent_volume_path(site.config(node), "v");
    write_random(&path, 0, (mib * MIB) as usize, r);
    site.add_object(json!({"name": "ov", "kind": {"type": "virtual_volume",
            "volume": {"node": node, "volume": "v"}}}));
    path
}

/// A backup plan over volumes on two agents of site-a, to site-b's two agents: refused
/// before pairing; after pairing through the CLI, a full run then an incremental one; the
/// mirror groups' volumes equal the source groups byte for byte; the second run sends about
/// the changed data; site-b keeps its own count of groups; what site-b holds is read-only
/// there; an unpairing is refused while the plan targets the site.
#[test]
fn a_backup_plan_replicates_each_group_to_a_paired_site() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().expect("tempdir");

    let store = ferry_tests::controller::EMBEDDED;
    let a = Site::start(&pki, dir.path(), "site-a", store, &["a1", "a2"]);
    let b = Site::start(&pki, dir.path(), "site-b", store, &["b1", "b2"]);
    let mut r = rng("sites");
    for (node, vol) in [("a1", "v1"), ("a2", "v2")] {
        a.agent(node, &["volume", "create", vol, "--size", "16M"]);
        let path = agent_volume_path(a.config(node), vol);
        write_random(&path, 0, (12 * MIB) as usize, &mut r);
    }
    // A VM with a disk on each node and a NIC on a virtual switch.
    let vm = json!({"name": "web-vm", "kind": {"type": "vm", "vcpus": 2, "memory_mib": 2048,
        "disks": [{"volume": {"node": "a1", "volume": "v1"}},
                  {"volume": {"node": "a2", "volume": "v2"}}],
        "nics": [{"switch": "vsw-prod", "mac": "52:54:00:00:00:01"}]}});
    a.add_object(vm);
    // An iSCSI LUN, an NFS file and a plain volume beside it.
    for (node, vol) in [("a1", "lun0"), ("a2", "nfs0"), ("a1", "plain0")] {
        a.agent(node, &["volume", "create", vol, "--size", "4M"]);
        let path = agent_volume_path(a.config(node), vol);
        write_random(&path, 0, (2 * MIB) as usize, &mut r);
    }
    for obj in [
        json!({"name": "db-lun", "kind": {"type": "iscsi_lun", "target_iqn": "iqn.2026-11.com.example:db",
            "lun": 3, "volume": {"node": "a1", "volume": "lun0"}}}),
        json!({"name": "share", "kind": {"type": "nfs_file", "export": "/srv/nfs",
            "path": "vm/disk.img", "volume": {"node": "a2", "volume": "nfs0"}}}),
        json!({"name": "scratch", "kind": {"type": "virtual_volume",
            "volume": {"node": "a1", "volume": "plain0"}}}),
    ] {
        a.add_object(obj);
    }
    let plan = json!({"name": "web", "objects": ["web-vm", "db-lun", "share", "scratch"],
        "retention": 2, "enabled": false,
        "schedule": {"every": "daily", "start": "2026-01-01T00:00"},
        "targets": [{"site": "site-b", "retention": 2, "switches": {"vsw-prod": "vsw-b"}}]});
    let (code, v) = a.controller.admin("POST", "/v1/plans", Some(plan.clone()));
    assert_eq!(code, 400, "{v}");
    assert!(v.to_string().contains("not paired"), "{v}");

    pair(&a, &b, dir.path());
    let (ok, list, _) = a.cli(&["sites", "list"]);
    assert!(ok && list.contains("site-b"), "{list}");
    // The spec's rule: every NIC's switch mapped at every target.
    let mut unmapped = plan.clone();
    unmapped["targets"][0]["switches"] = json!({});
    let (code, v) = a.controller.admin("POST", "/v1/plans", Some(unmapped));
    assert_eq!(code, 400, "{v}");
    let msg = v.to_string();
    assert!(
        msg.contains("vsw-prod") && msg.contains("web-vm") && msg.contains("site-b"),
        "{msg}"
    );
    let (code, v) = a.controller.admin("POST", "/v1/plans", Some(plan));
    assert_eq!(code, 201, "{v}");
    // The agents were told of the paired site.
    wait_for("site-b's agents trust site-a", 15, || {
        b.nodes.iter().all(|(_, cfg, _)| {
            let text = std::fs::read_to_string(cfg).unwrap_or_default();
            let data = text
                .lines()
                .find_map(|l| l.strip_prefix("data_dir = "))
                .map(|d| d.trim_matches('"').to_string())
                .unwrap_or_default();
            std::fs::read_to_string(std::path::Path::new(&data).join("peers.json"))
                .is_ok_and(|t| t.contains("site-a"))
        })
    });

    // The full run.
    let run = a.run_now("web");
    assert_eq!(run["run"]["step"], "done", "{run}");
    let part = &run["run"]["targets"]["site-b"];
    assert_eq!(part["step"], "done", "{part}");
    let full: u64 = part["transfers"]
        .as_array()
        .expect("transfers")
        .iter()
        .map(|t| t["sent_bytes"].as_u64().unwrap_or(0))
        .sum();
    assert!(full >= 30 * MIB, "a full copy sent only {full} bytes");
    let foreign = "site-a.web";
    let mirrored = b.groups(foreign);
    assert_eq!(mirrored.len(), 1, "{mirrored:?}");
    let check_equal = |group: &Value| {
        let g = group["group"].as_str().expect("group");
        for (mnode, snap) in group["snapshots"]
            .as_array()
            .expect("snapshots")
            .iter()
            .map(|x| (x[0].as_str().expect("node"), &x[1]))
        {
            let mirror = snap["volume"].as_str().expect("mirror");
            // site-a.<node>.<volume>
            let mut parts = mirror.splitn(3, '.').skip(1);
            let (node, vol) = (parts.next().expect("node"), parts.next().expect("vol"));
            assert_eq!(
                file_hash(&b.snapshot_image(mnode, mirror, g)),
                file_hash(&a.snapshot_image(node, vol, g)),
                "{mirror} at {mnode} differs from {node}/{vol} in group {g}"
            );
        }
    };
    check_equal(&mirrored[0]);
    // The mirror VM at site-b: its disks on the mirrors there, its NIC on the mapped switch.
    let mirrors = b
        .controller
        .list(&format!("/v1/plans/{foreign}/mirrors"))
        .expect("mirrors");
    assert_eq!(mirrors.len(), 4, "{mirrors:?}");
    let mirror = |name: &str| {
        mirrors
            .iter()
            .find(|m| m["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("no mirror object {name}: {mirrors:?}"))
    };
    let lun = mirror("db-lun");
    assert_eq!(lun["kind"]["lun"], 3);
    assert_eq!(lun["kind"]["target_iqn"], "iqn.2026-11.com.example:db");
    assert_eq!(lun["kind"]["volume"]["volume"], "site-a.a1.lun0");
    let nfs = mirror("share");
    assert_eq!(nfs["kind"]["export"], "/srv/nfs");
    assert_eq!(nfs["kind"]["path"], "vm/disk.img");
    assert_eq!(
        mirror("scratch")["kind"]["volume"]["volume"],
        "site-a.a1.plain0"
    );
    let vm_mirror = mirror("web-vm");
    let kind = &vm_mirror["kind"];
    assert_eq!(kind["vcpus"], 2);
    assert_eq!(kind["nics"][0]["switch"], "vsw-b");
    assert_eq!(kind["nics"][0]["mac"], "52:54:00:00:00:01");
    let disks: Vec<String> = kind["disks"]
        .as_array()
        .expect("disks")
        .iter()
        .map(|d| {
            d["volume"]["volume"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .collect();
    assert_eq!(disks, ["site-a.a1.v1", "site-a.a2.v2"]);
    for d in kind["disks"].as_array().expect("disks") {
        assert!(d["volume"]["node"]
            .as_str()
            .is_some_and(|n| n.starts_with('b')));
    }

    // The incremental run: 64 random 4 KiB pages changed on v1.
    let path = agent_volume_path(a.config("a1"), "v1");
    let pages = ferry_tests::random_page_writes(&path, 16 * MIB, 64, &mut r);
    let run = a.run_now("web");
    assert_eq!(run["run"]["step"], "done", "{run}");
    let inc: u64 = run["run"]["targets"]["site-b"]["transfers"]
        .as_array()
        .expect("transfers")
        .iter()
        .map(|t| t["sent_bytes"].as_u64().unwrap_or(0))
        .sum();
    let changed = pages.len() as u64 * 4096;
    assert!(
        inc <= 4 * changed + 256 * 1024,
        "the incremental sent {inc} bytes for {changed} changed"
    );
    eprintln!(
        "sent: full {full} bytes of 30 MiB written; incremental {inc} bytes for {changed} changed"
    );
    let mirrored = b.groups(foreign);
    assert_eq!(mirrored.len(), 2);
    for g in &mirrored {
        check_equal(g);
    }
    let (code, targets) = a
        .controller
        .call("GET", "/v1/plans/web/targets", Some(READER), None);
    assert_eq!(code, 200, "{targets}");
    assert_eq!(
        targets[0]["last_bytes_sent"].as_u64(),
        Some(inc),
        "{targets}"
    );
    assert_eq!(
        targets[0]["bytes_sent"].as_u64(),
        Some(full + inc),
        "{targets}"
    );

    // A third run: both sites keep two groups each.
    let run = a.run_now("web");
    assert_eq!(run["run"]["step"], "done", "{run}");
    wait_for("site-b prunes to its retention", 30, || {
        b.groups(foreign).len() == 2
    });
    assert_eq!(a.groups("web").len(), 2);

    // What site-b holds is read-only there.
    let (code, v) = b
        .controller
        .admin("POST", &format!("/v1/plans/{foreign}/run"), None);
    assert_eq!(code, 409, "{v}");
    assert!(v.to_string().contains("site-a"), "{v}");
    let (code, v) = b
        .controller
        .admin("DELETE", &format!("/v1/plans/{foreign}"), None);
    assert_eq!(code, 409, "{v}");
    let g = b.groups(foreign)[0]["group"].clone();
    let (code, v) = b.controller.admin(
        "POST",
        &format!("/v1/plans/{foreign}/rollbacks"),
        Some(json!({"group": g})),
    );
    assert_eq!(code, 409, "{v}");
    let mnode = b.groups(foreign)[0]["snapshots"][0][0]
        .as_str()
        .expect("node")
        .to_string();
    let (code, v) = b.controller.admin(
        "DELETE",
        &format!("/v1/agents/{mnode}/volumes/site-a.a1.v1?force=true"),
        None,
    );
    assert!(
        code == 409 && v.to_string().contains("site-a"),
        "{code} {v}"
    );
    // Unpairing is refused while a plan targets the site, naming the plan.
    let (ok, _, err) = a.cli(&["sites", "remove", "site-b", "--yes"]);
    assert!(!ok && err.contains("web"), "{err}");
    let (ok, out, err) = a.cli(&["plans", "get", "web"]);
    assert!(ok && out.contains("site-b"), "{out}{err}");

    // Unpaired at site-b (the plan gone, the foreign plan released): site-b's agents refuse
    // site-a's, which still trust site-b.
    let b_agent = b.controller.agents()[0]["replication_address"]
        .as_str()
        .expect("address")
        .to_string();
    let ping = || {
        std::process::Command::new(ferry_tests::bin("ferry-agent"))
            .arg("--config")
            .arg(a.config("a1"))
            .args(["ping", &b_agent, "--count", "1"])
            .output()
            .expect("ping")
    };
    let out = ping();
    assert!(
        out.status.success(),
        "paired: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (ok, _, err) = a.cli(&["plans", "delete", "web", "--keep-groups"]);
    assert!(ok, "{err}");
    let (ok, _, err) = b.cli(&["plans", "delete", foreign, "--release", "--keep-groups"]);
    assert!(ok, "{err}");
    let (ok, _, err) = b.cli(&["sites", "remove", "site-a", "--yes"]);
    assert!(ok, "{err}");
    wait_for("site-a's agent is refused by site-b's", 20, || {
        !ping().status.success()
    });
    let (ok, _, err) = a.cli(&["sites", "remove", "site-b", "--yes"]);
    assert!(ok, "{err}");
}

/// A partition between the sites in the middle of a transfer (a relay in front of site-b's
/// agent drops everything for 60 s): the run waits it out and completes once it heals,
/// the transfer resumed from what the mirror had already received, not restarted.
#[test]
fn a_partition_mid_transfer_heals_and_the_transfer_resumes() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let store = ferry_tests::controller::EMBEDDED;
    let a = Site::start_with(
        &pki,
        d,
        "site-a",
        store,
        &["a1"],
        ferry_tests::controller::free_udp_port(),
        |_| "bandwidth_limit = \"8MiB\"".into(),
    );
    let b_port = ferry_tests::controller::free_udp_port();
    let target: std::net::SocketAddr = format!("127.0.0.1:{b_port}").parse().expect("addr");
    let relay = ferry_tests::LossyRelay::start(target, 0.0, std::time::Duration::ZERO, 1);
    let b = Site::start_with(
        &pki,
        d,
        "site-b",
        store,
        &["b1"],
        ferry_tests::controller::free_udp_port(),
        |_| {
            format!(
                "listen = \"127.0.0.1:{b_port}\"\nadvertise = \"{}\"",
                relay.addr
            )
        },
    );
    pair(&a, &b, d);
    let mut r = rng("partition");
    random_volume(&a, "a1", 48, &mut r);
    let plan = json!({"name": "p", "objects": ["ov"], "retention": 2, "enabled": false,
        "schedule": {"every": "daily", "start": "2026-01-01T00:00"},
        "targets": [{"site": "site-b", "retention": 2}]});
    assert_eq!(a.controller.admin("POST", "/v1/plans", Some(plan)).0, 201);
    let id = a.start_run("p");
    // Once a good part of the volume has gone (8 MiB/s), cut the link for 60 s.
    wait_under_way(&a, "p", &id, 12 * MIB);
    relay.cut(true);
    std::thread::sleep(std::time::Duration::from_secs(60));
    relay.cut(false);
    let run = a.finished("p", &id);
    assert_eq!(run["run"]["step"], "done", "{run}");
    let t = &run["run"]["targets"]["site-b"]["transfers"][0];
    let resumed = t["resumed_blocks"].as_u64().unwrap_or(0);
    eprintln!(
        "after the partition: {resumed} blocks resumed, {} bytes sent by the last attempt",
        t["sent_bytes"]
    );
    assert!(resumed > 0, "the transfer started over: {t}");
    assert!(
        t["sent_bytes"].as_u64().unwrap_or(u64::MAX) < 40 * MIB,
        "the last attempt sent what had already arrived: {t}"
    );
    let g = b.groups("site-a.p");
    assert_eq!(g.len(), 1);
    let gname = g[0]["group"].as_str().expect("group");
    assert_eq!(
        file_hash(&b.snapshot_image("b1", "site-a.a1.v", gname)),
        file_hash(&a.snapshot_image("a1", "v", gname))
    );
}

/// Site-a with two controllers on a real etcd; its leader SIGKILLed while an agent sends
/// a backup run's volume: the other controller is elected, takes the run over from the
/// store and finishes it; the transfer under way is the same task, heard of by the new
/// leader, and the volume is sent once, not again in full.
#[test]
fn the_source_leader_killed_during_replication_the_new_one_finishes() {
    let Some(etcd) = ferry_tests::Etcd::start() else {
        return;
    };
    let pki = Pki::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let store = format!(
        "[store]\nkind = \"etcd\"\nendpoints = [{:?}]\nlease_ttl_secs = 3",
        etcd.endpoint
    );
    let free = ferry_tests::controller::free_udp_port;
    let a = Site::start_full(
        &pki,
        d,
        "site-a",
        &store,
        &["a1"],
        &[free(), free()],
        |_| "bandwidth_limit = \"8MiB\"".into(),
    );
    let b = Site::start(
        &pki,
        d,
        "site-b",
        ferry_tests::controller::EMBEDDED,
        &["b1"],
    );
    pair(&a, &b, d);
    let mut r = rng("leader-killed");
    random_volume(&a, "a1", 48, &mut r);
    let plan = json!({"name": "p", "objects": ["ov"], "retention": 2, "enabled": false,
        "schedule": {"every": "daily", "start": "2026-01-01T00:00"},
        "targets": [{"site": "site-b", "retention": 2}]});
    assert_eq!(a.controller.admin("POST", "/v1/plans", Some(plan)).0, 201);
    let id = a.start_run("p");
    wait_under_way(&a, "p", &id, 8 * MIB);
    // Kill whichever leads; the survivor answers from then on.
    let first_leads = a.controller.health()["role"] == "leader";
    let other = a.others[0].1.as_ref().expect("other");
    let (dead, survivor) = if first_leads {
        (&a.controller, other)
    } else {
        (other, &a.controller)
    };
    // SAFETY: signalling a child of this test.
    unsafe { libc::kill(dead.pid() as libc::pid_t, libc::SIGKILL) };
    wait_for("the survivor leads", 30, || {
        survivor.health()["role"] == "leader"
    });
    let mut run = Value::Null;
    wait_for("the run finishes under the new leader", 120, || {
        let (_, v) = survivor.call("GET", &format!("/v1/plans/p/runs/{id}"), Some(READER), None);
        run = v;
        ["done", "partially_done", "failed"].contains(&run["run"]["step"].as_str().unwrap_or(""))
    });
    assert_eq!(run["run"]["step"], "done", "{run}");
    let t = &run["run"]["targets"]["site-b"]["transfers"][0];
    assert_eq!(t["attempt"], 0, "the same transfer task went on: {t}");
    let sent = t["sent_bytes"].as_u64().unwrap_or(0);
    eprintln!("leader killed mid-transfer: {sent} bytes sent for 48 MiB");
    assert!(sent <= 49 * MIB, "sent more than once: {sent}");
    let g = b.groups("site-a.p");
    assert_eq!(g.len(), 1);
}

/// Two targets, each keeping its own count, one of them stopped for a run: that run is
/// `partially_done` naming it while the other target gets the group; started again, the
/// stopped one is caught up from the newest group it holds (not in full), because local
/// retention kept that group for it. After five runs: 2 groups here, 3 at site-b, 1 at
/// site-c.
#[test]
fn each_target_keeps_its_own_count_and_a_stopped_one_catches_up() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let a = Site::start(&pki, d, "site-a", &Site::embedded(d, "site-a"), &["a1"]);
    let b = Site::start(&pki, d, "site-b", &Site::embedded(d, "site-b"), &["b1"]);
    let c_port = ferry_tests::controller::free_udp_port();
    let c_store = Site::embedded(d, "site-c");
    let mut c = Some(Site::start_on(&pki, d, "site-c", &c_store, &["c1"], c_port));
    pair(&a, &b, d);
    pair(&a, c.as_ref().expect("c"), d);
    let mut r = rng("two-targets");
    let path = random_volume(&a, "a1", 8, &mut r);
    let plan = json!({"name": "db", "objects": ["ov"], "retention": 2, "enabled": false,
        "schedule": {"every": "hourly", "start": "2026-01-01T00:00"},
        "targets": [{"site": "site-b", "retention": 3}, {"site": "site-c", "retention": 1}]});
    let (code, v) = a.controller.admin("POST", "/v1/plans", Some(plan));
    assert_eq!(code, 201, "{v}");
    let sent = Site::sent;
    let mut changed_since_c = 0;
    for i in 0..5 {
        if i > 0 {
            let pages = ferry_tests::random_page_writes(&path, 8 * MIB, 32, &mut r);
            changed_since_c += pages.len() as u64 * 4096;
        }
        if i == 2 {
            drop(c.take()); // SIGKILL: its controller and its agent
        }
        if i == 3 {
            c = Some(Site::start_on(&pki, d, "site-c", &c_store, &["c1"], c_port));
        }
        let run = a.run_now("db");
        let step = run["run"]["step"].as_str().unwrap_or_default().to_string();
        eprintln!(
            "run {i}: {step}; sent to b {} and to c {} bytes",
            sent(&run, "site-b"),
            sent(&run, "site-c")
        );
        assert_eq!(run["run"]["targets"]["site-b"]["step"], "done", "{run}");
        if i == 2 {
            assert_eq!(step, "partially_done", "{run}");
            let e = run["run"]["error"].as_str().unwrap_or_default();
            assert!(e.contains("site-c"), "{e}");
            continue;
        }
        assert_eq!(step, "done", "{run}");
        if i == 0 {
            assert!(sent(&run, "site-c") >= 8 * MIB, "the first is full");
        } else {
            // Only what changed since the newest group site-c holds, even after its stop.
            assert!(
                sent(&run, "site-c") <= 4 * changed_since_c + 256 * 1024,
                "run {i} sent {} bytes to site-c for {changed_since_c} changed",
                sent(&run, "site-c")
            );
        }
        changed_since_c = 0;
    }
    let c = c.expect("c");
    wait_for("every site at its own count", 30, || {
        a.groups("db").len() == 2
            && b.groups("site-a.db").len() == 3
            && c.groups("site-a.db").len() == 1
    });
    let (code, t) = a
        .controller
        .call("GET", "/v1/plans/db/targets", Some(READER), None);
    assert_eq!(code, 200);
    let tc = t
        .as_array()
        .expect("targets")
        .iter()
        .find(|x| x["site"] == "site-c")
        .cloned();
    assert_eq!(
        tc.as_ref().map(|x| x["failures"].clone()),
        Some(json!(1)),
        "{t}"
    );
}
