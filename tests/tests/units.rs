//! The systemd units shipped beside the binaries: `systemd-analyze verify` accepts them (with
//! the binaries where this build put them), and the command line each starts is one the
//! binary understands.

use std::process::Command;

use ferry_tests::{bin, bin_dir, require};

#[test]
fn the_systemd_units_verify_and_start_real_commands() {
    let have = Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !require(have, "systemd-analyze (Debian package systemd)") {
        return;
    }
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let dir = tempfile::tempdir().expect("tempdir");
    for (unit, binary) in [
        ("agent/ferry-agent.service", "ferry-agent"),
        ("controller/ferry-controller.service", "ferry-controller"),
    ] {
        let text = std::fs::read_to_string(root.join(unit)).expect("unit");
        let here = text.replace("/usr/local/bin/", &format!("{}/", bin_dir().display()));
        let path = dir.path().join(unit.rsplit('/').next().expect("name"));
        std::fs::write(&path, &here).expect("write");
        let out = Command::new("systemd-analyze")
            .arg("verify")
            .arg(&path)
            .output()
            .expect("verify");
        assert!(
            out.status.success(),
            "{unit}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let exec = text
            .lines()
            .find_map(|l| l.strip_prefix("ExecStart="))
            .expect("ExecStart");
        let mut words = exec.split_whitespace();
        assert_eq!(
            words.next(),
            Some(format!("/usr/local/bin/{binary}").as_str())
        );
        let args: Vec<&str> = words.collect();
        assert!(args.contains(&"serve"), "{unit} starts the daemon: {exec}");
        // The same arguments, asking for help: clap accepts them without reading the file.
        let out = Command::new(bin(binary))
            .args(&args)
            .arg("--help")
            .output()
            .expect("help");
        assert!(
            out.status.success(),
            "{unit}: {exec} --help: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
