//! Bad input gets a clear error (exit 1, a JSON error with a kind and a message that says what
//! is wrong) and changes nothing; usage errors exit 2.

use ferry_tests::{file_hash, rng, write_random, Env, Fs, Tmpfs};

const MIB: u64 = 1 << 20;

fn assert_empty_store(env: &Env) {
    assert_eq!(env.ok(&["volume", "list"]), serde_json::json!([]));
    assert!(env.leftovers().is_empty(), "{:?}", env.leftovers());
}

#[test]
fn bad_names_are_refused_and_never_touch_the_filesystem() {
    let Some(env) = Env::new(Fs::Local) else {
        return;
    };
    let long = "x".repeat(129);
    let cases: &[(&str, &str)] = &[
        ("../escape", "must start with a letter or a digit"),
        ("a/b", "contains '/'"),
        (".hidden", "must start with a letter or a digit"),
        ("", "empty"),
        (&long, "129 bytes long"),
        ("semi;colon", "contains ';'"),
    ];
    for (name, want) in cases {
        let (kind, msg) = env.fails(&["volume", "create", name, "--size", "1M"]);
        assert_eq!(kind, "invalid_name", "{name:?}");
        assert!(
            msg.contains(want) && msg.contains("volume"),
            "{name:?}: {msg}"
        );
    }
    assert_empty_store(&env);
    env.ok(&["volume", "create", "v", "--size", "1M"]);
    for (name, want) in cases {
        let (kind, msg) = env.fails(&["snapshot", "create", "v", name]);
        assert_eq!(kind, "invalid_name", "{name:?}");
        assert!(
            msg.contains(want) && msg.contains("snapshot"),
            "{name:?}: {msg}"
        );
        let (kind, _) = env.fails(&["volume", "clone", "v", "s", name]);
        assert_eq!(kind, "invalid_name");
    }
    assert!(!env.dir.path().join("escape").exists());
    assert!(env.snapshots("v").is_empty());
}

#[test]
fn missing_things_are_named() {
    let Some(env) = Env::new(Fs::Local) else {
        return;
    };
    let (kind, msg) = env.fails(&["volume", "path", "nope"]);
    assert_eq!(
        (kind.as_str(), msg.as_str()),
        ("not_found", "volume \"nope\" does not exist")
    );
    env.ok(&["volume", "create", "v", "--size", "1M"]);
    for args in [
        vec!["snapshot", "create", "nope", "s"],
        vec!["snapshot", "list", "nope"],
        vec!["snapshot", "verify", "v", "s"],
        vec!["snapshot", "hashes", "v", "s"],
        vec!["snapshot", "delete", "v", "s"],
        vec!["snapshot", "diff", "v", "s", "t"],
        vec!["volume", "rollback", "v", "s"],
        vec!["volume", "clone", "v", "s", "c"],
        vec!["volume", "delete", "nope"],
    ] {
        let (kind, msg) = env.fails(&args);
        assert_eq!(kind, "not_found", "{args:?}");
        assert!(
            msg.contains("does not exist") && (msg.contains("nope") || msg.contains("v@s")),
            "{args:?}: {msg}"
        );
    }
    let (kind, _) = env.fails(&["volume", "create", "v", "--size", "1M"]);
    assert_eq!(kind, "already_exists");
    env.ok(&["snapshot", "create", "v", "s"]);
    let (kind, msg) = env.fails(&["snapshot", "create", "v", "s"]);
    assert_eq!(
        (kind.as_str(), msg.as_str()),
        ("already_exists", "snapshot \"v@s\" already exists")
    );
    let (kind, _) = env.fails(&["volume", "clone", "v", "s", "v"]);
    assert_eq!(kind, "already_exists");
}

#[test]
fn bad_arguments() {
    let Some(env) = Env::new(Fs::Local) else {
        return;
    };
    let (kind, msg) = env.fails(&["volume", "create", "v", "--size", "0"]);
    assert_eq!(kind, "invalid_argument");
    assert!(msg.contains("at least 1 byte"), "{msg}");
    let (kind, msg) = env.fails(&[
        "volume",
        "create",
        "v",
        "--size",
        "1M",
        "--block-size",
        "48K",
    ]);
    assert_eq!(kind, "invalid_argument");
    assert!(msg.contains("power of two"), "{msg}");
    // Unparseable sizes are usage errors (exit 2) that say what a size looks like.
    let out = env.raw(&["volume", "create", "v", "--size", "4X"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown unit"));
    let out = env.raw(&["snapshot", "group", "g"]);
    assert_eq!(out.status.code(), Some(2));
    let (kind, msg) = env.fails(&["snapshot", "group", "g", "v", "v"]);
    assert_eq!(kind, "invalid_argument");
    assert!(msg.contains("named twice"), "{msg}");
    assert_empty_store(&env);
}

#[test]
fn adopt_checks_its_file() {
    let Some(env) = Env::new(Fs::Local) else {
        return;
    };
    let f = env.path("lun0.img");
    std::fs::write(&f, vec![7u8; 100_000]).expect("write");
    let fs = f.to_str().expect("utf8");
    let (kind, msg) = env.fails(&["volume", "adopt", "a", "relative/file.img"]);
    assert_eq!(kind, "invalid_argument");
    assert!(msg.contains("not an absolute path"), "{msg}");
    let missing = env.path("missing.img");
    let (kind, _) = env.fails(&["volume", "adopt", "a", missing.to_str().expect("utf8")]);
    assert_eq!(kind, "not_found");
    let (kind, msg) = env.fails(&[
        "volume",
        "adopt",
        "a",
        env.dir.path().to_str().expect("utf8"),
    ]);
    assert_eq!(kind, "invalid_argument");
    assert!(msg.contains("not a regular file"), "{msg}");
    env.ok(&["volume", "create", "own", "--size", "1M"]);
    let inside = env.volume_path("own");
    let (kind, msg) = env.fails(&["volume", "adopt", "a", inside.to_str().expect("utf8")]);
    assert_eq!(kind, "invalid_argument");
    assert!(msg.contains("inside the agent's data directory"), "{msg}");
    env.ok(&["volume", "adopt", "a", fs]);
    let (kind, msg) = env.fails(&["volume", "adopt", "b", fs]);
    assert_eq!(kind, "already_exists");
    assert!(msg.contains("volume a"), "{msg}");
    // Deleting an adopted volume forgets it and keeps the file.
    let r = env.ok(&["volume", "delete", "a"]);
    assert_eq!(r["image_deleted"], false);
    assert_eq!(std::fs::read(&f).expect("kept").len(), 100_000);
}

#[test]
fn forced_reflink_on_a_filesystem_without_it() {
    let Some(env) = Env::new(Fs::Local) else {
        return;
    };
    let cfg = env.path("agent.toml");
    std::fs::write(&cfg, "backend = \"reflink\"\n").expect("config");
    let (kind, msg) = env.fails(&["--config", cfg.to_str().expect("utf8"), "volume", "list"]);
    assert_eq!(kind, "reflink_unsupported");
    assert!(
        msg.contains("FICLONE")
            && msg.contains("reflink=1")
            && msg.contains(&env.data_dir().display().to_string()),
        "{msg}"
    );
    let fs_name = ferry_agent_fs(&env);
    assert!(msg.contains(&fs_name), "{msg} should name {fs_name}");
    std::fs::write(&cfg, "backend = \"reflink\"\nbogus = 1\n").expect("config");
    let (kind, msg) = env.fails(&["--config", cfg.to_str().expect("utf8"), "volume", "list"]);
    assert_eq!(kind, "invalid_argument");
    assert!(
        msg.contains("unknown field") && msg.contains("bogus"),
        "{msg}"
    );
}

fn ferry_agent_fs(env: &Env) -> String {
    env.ok(&["info"])["filesystem"]
        .as_str()
        .expect("fs")
        .to_string()
}

#[test]
fn full_disk_is_reported_and_loses_nothing() {
    let Some(tmp) = Tmpfs::mount("40m") else {
        return;
    };
    let env = Env {
        dir: tempfile::tempdir_in(&tmp.path).expect("dir"),
        fs: Fs::Local,
    };
    let mut r = rng("full-disk");
    env.ok(&["volume", "create", "v", "--size", "64M"]);
    let vol = env.volume_path("v");
    write_random(&vol, 0, 24 * MIB as usize, &mut r);
    let before = file_hash(&vol);
    let (kind, msg) = env.fails(&["snapshot", "create", "v", "s1"]);
    assert_eq!(kind, "no_space");
    assert!(
        msg.contains("no space left") && msg.contains("nothing was changed"),
        "{msg}"
    );
    assert_eq!(file_hash(&vol), before, "the volume must be untouched");
    assert!(env.snapshots("v").is_empty());
    assert!(env.leftovers().is_empty(), "{:?}", env.leftovers());
    let (kind, _) = env.fails(&["volume", "clone", "v", "nope", "c"]);
    assert_eq!(kind, "not_found");
    // Free room (punch half of the data out) and the same command succeeds.
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&vol)
        .expect("open");
    ferry_agent::fsx::punch_hole(&f, 0, 14 * MIB).expect("punch hole");
    env.ok(&["snapshot", "create", "v", "s1"]);
    assert_eq!(env.ok(&["snapshot", "verify", "v", "s1"])["ok"], true);
}

#[test]
fn corruption_is_detected() {
    let Some(env) = Env::new(Fs::Local) else {
        return;
    };
    let mut r = rng("corrupt");
    env.ok(&["volume", "create", "v", "--size", "8M"]);
    write_random(&env.volume_path("v"), 0, 8 * MIB as usize, &mut r);
    env.ok(&["snapshot", "create", "v", "s"]);
    // Flip one bit of the snapshot image: verify names the block.
    let img = env.snapshot_dir("v", "s").join("data.img");
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&img)
        .expect("open");
    use std::os::unix::fs::FileExt;
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, 5 * 65536 + 77).expect("read");
    f.write_all_at(&[b[0] ^ 1], 5 * 65536 + 77).expect("write");
    let out = env.raw(&["--json", "snapshot", "verify", "v", "s"]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("\"bad_blocks\": [\n    5\n  ]"), "{text}");
    assert!(text.contains("\"bad_count\": 1,"), "{text}");
    // A damaged manifest is refused, not trusted.
    let m = env.snapshot_dir("v", "s").join("manifest");
    let mf = std::fs::OpenOptions::new()
        .write(true)
        .open(&m)
        .expect("open");
    mf.write_all_at(&[0xff], 200).expect("write");
    let (kind, msg) = env.fails(&["snapshot", "hashes", "v", "s"]);
    assert_eq!(kind, "corrupt");
    assert!(msg.contains("root hash mismatch"), "{msg}");
}

#[test]
fn concurrent_commands_serialize() {
    let Some(env) = Env::new(Fs::Local) else {
        return;
    };
    let mut r = rng("concurrent");
    env.ok(&["volume", "create", "v", "--size", "32M"]);
    write_random(&env.volume_path("v"), 0, 24 * MIB as usize, &mut r);
    let kids: Vec<_> = (0..4)
        .map(|i| {
            let name = format!("s{}", i % 2); // two pairs racing for the same name
            env.agent()
                .args(["snapshot", "create", "v", &name])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("spawn")
        })
        .collect();
    let ok = kids
        .into_iter()
        .map(|mut k| k.wait().expect("wait").success())
        .filter(|s| *s)
        .count();
    assert_eq!(ok, 2, "each name is taken exactly once");
    assert_eq!(env.snapshots("v").len(), 2);
    for s in env.snapshots("v") {
        assert_eq!(env.ok(&["snapshot", "verify", "v", &s])["ok"], true);
    }
}
