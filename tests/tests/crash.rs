//! SIGKILL at random moments during snapshot, group snapshot, snapshot delete and rollback, on
//! both backends. After each kill the next command must work and find the store consistent:
//! no half-made snapshot visible, every listed snapshot verifies and holds exactly the volume's
//! bytes at its time, a group is all or nothing, a rolled-back volume is either untouched or
//! fully rolled back, and nothing is left behind.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use ferry_tests::{file_hash, random_page_writes, rng, write_random, Env, Fs, StdRng};
use rand::Rng;

const MIB: u64 = 1 << 20;
const SIZE: u64 = 96 * MIB;
const ROUNDS: usize = 8;

/// Runs `args` and kills it after a random delay in [0, 1.3 * typical); returns whether it was
/// killed before it finished.
fn run_and_kill(env: &Env, args: &[&str], typical: Duration, r: &mut StdRng) -> bool {
    let delay =
        Duration::from_micros(r.gen_range(0..(typical.as_micros() as u64 * 13 / 10).max(1)));
    let mut child = env.spawn(args);
    std::thread::sleep(delay);
    let killed = matches!(child.try_wait(), Ok(None));
    let _ = child.kill(); // SIGKILL
    let status = child.wait().expect("wait");
    killed && !status.success()
}

fn timed(env: &Env, args: &[&str]) -> Duration {
    let t = Instant::now();
    env.ok(args);
    t.elapsed()
}

fn check_consistent(env: &Env, contents: &HashMap<String, String>) {
    for vol in ["v", "w"] {
        for s in env.snapshots(vol) {
            let img = env.snapshot_dir(vol, &s).join("data.img");
            assert_eq!(
                env.ok(&["snapshot", "verify", vol, &s])["ok"],
                true,
                "{vol}@{s}"
            );
            if let Some(want) = contents.get(&format!("{vol}@{s}")) {
                assert_eq!(
                    &file_hash(&img),
                    want,
                    "{vol}@{s} does not hold the volume's bytes at its time"
                );
            }
        }
    }
    assert!(
        env.leftovers().is_empty(),
        "left behind: {:?}",
        env.leftovers()
    );
}

fn crash_everywhere(env: &Env) {
    let mut r = rng("crash");
    for v in ["v", "w"] {
        env.ok(&["volume", "create", v, "--size", "96M"]);
        write_random(&env.volume_path(v), 0, (SIZE - 16 * MIB) as usize, &mut r);
    }
    let (vol, wol) = (env.volume_path("v"), env.volume_path("w"));
    let mut contents = HashMap::new();
    contents.insert("v@base".to_string(), file_hash(&vol));
    let t_snap = timed(env, &["snapshot", "create", "v", "base"]);
    let t_group = timed(env, &["snapshot", "group", "g0", "v", "w"]);
    let t_delete = timed(env, &["snapshot", "delete", "v", "g0"]);
    env.ok(&["snapshot", "delete", "w", "g0"]);
    let (mut killed, mut survived) = (0, 0);

    for i in 0..ROUNDS {
        // Snapshot.
        random_page_writes(&vol, SIZE, 50, &mut r);
        let name = format!("k{i}");
        let h = file_hash(&vol);
        if run_and_kill(env, &["snapshot", "create", "v", &name], t_snap, &mut r) {
            killed += 1;
        }
        let list = env.snapshots("v");
        if list.contains(&name) {
            survived += 1;
        } else {
            env.ok(&["snapshot", "create", "v", &name]);
        }
        contents.insert(format!("v@{name}"), h);
        check_consistent(env, &contents);

        // Group snapshot: both members or neither.
        random_page_writes(&wol, SIZE, 50, &mut r);
        let gname = format!("g{}", i + 1);
        run_and_kill(
            env,
            &["snapshot", "group", &gname, "v", "w"],
            t_group,
            &mut r,
        );
        let (in_v, in_w) = (
            env.snapshots("v").contains(&gname),
            env.snapshots("w").contains(&gname),
        );
        assert_eq!(in_v, in_w, "group {gname} half taken");
        check_consistent(env, &contents);

        // Delete.
        run_and_kill(env, &["snapshot", "delete", "v", &name], t_delete, &mut r);
        check_consistent(env, &contents);

        // Rollback: untouched or fully rolled back, never a mix.
        random_page_writes(&vol, SIZE, 200, &mut r);
        let before = file_hash(&vol);
        let t_roll = Duration::from_millis(if env.fs.reflink() { 30 } else { 400 });
        run_and_kill(env, &["volume", "rollback", "v", "base"], t_roll, &mut r);
        env.ok(&["volume", "list"]);
        let after = file_hash(&vol);
        assert!(
            after == before || &after == contents.get("v@base").expect("base"),
            "rollback left a mix of old and new data"
        );
        check_consistent(env, &contents);
    }
    eprintln!("killed {killed} of {ROUNDS} snapshots mid-way; {survived} had committed");
    // The store still works normally afterwards.
    env.ok(&["snapshot", "create", "v", "final"]);
    env.ok(&["volume", "rollback", "v", "base"]);
    assert_eq!(&file_hash(&vol), contents.get("v@base").expect("base"));
}

#[test]
fn crash_copy() {
    if let Some(env) = Env::new(Fs::Local) {
        crash_everywhere(&env);
    }
}

#[test]
fn crash_reflink_xfs() {
    if let Some(env) = Env::new(Fs::Xfs) {
        crash_everywhere(&env);
    }
}

#[test]
fn crash_reflink_btrfs() {
    if let Some(env) = Env::new(Fs::Btrfs) {
        crash_everywhere(&env);
    }
}
