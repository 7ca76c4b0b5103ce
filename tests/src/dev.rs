//! A real `ferry-controller dev` site (a controller on the embedded store and its agent
//! `node1`, a child process) and the clients tests drive it with: the `ferry` CLI and plain
//! HTTP. [`Dev::shared`] is one site for all the tests of a test binary (each test uses its
//! own names), started once: starting a site costs seconds, and most tests need no site of
//! their own.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;

use serde_json::Value;

use crate::bin;
use crate::controller::wait_for;

/// A running dev site.
pub struct Dev {
    child: Child,
    /// What `ferry-controller --json dev` printed: `api`, `token`, `data_dir`, `agent`.
    pub info: Value,
    pub dir: PathBuf,
    _temp: Option<tempfile::TempDir>,
}

impl Drop for Dev {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The shared site's process and directory, for [`remove_shared`].
static SHARED: OnceLock<(u32, PathBuf)> = OnceLock::new();

/// At the test process's exit: stops the shared site and removes its directory.
extern "C" fn remove_shared() {
    if let Some((pid, dir)) = SHARED.get() {
        // SAFETY: signalling the child this process started.
        unsafe { libc::kill(*pid as libc::pid_t, libc::SIGKILL) };
        // SAFETY: reaping that child; it is ours and is dying.
        unsafe { libc::waitpid(*pid as libc::pid_t, std::ptr::null_mut(), 0) };
        let _ = std::fs::remove_dir_all(dir);
    }
}

impl Dev {
    /// Starts a dev site on `dir` (kept) and waits for its agent to link.
    pub fn start(dir: &Path) -> Dev {
        Dev::start_with(dir, &[])
    }

    /// Starts a dev site on `dir` with more `ferry-controller dev` flags.
    pub fn start_with(dir: &Path, flags: &[&str]) -> Dev {
        let mut cmd = Command::new(bin("ferry-controller"));
        cmd.args(["--json", "dev", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir)
            .args(flags)
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        // Dies with the thread that started it: the shared site's thread lives as long as the
        // test process.
        // SAFETY: prctl in the forked child before exec, async-signal-safe.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let mut child = cmd.spawn().expect("spawn ferry-controller dev");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("read");
        let info: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"));
        let dev = Dev {
            child,
            info,
            dir: dir.to_path_buf(),
            _temp: None,
        };
        wait_for("the dev agent links", 30, || dev.agent_up());
        dev
    }

    /// The site shared by the tests of this test binary.
    pub fn shared() -> &'static Dev {
        static SITE: OnceLock<Dev> = OnceLock::new();
        SITE.get_or_init(|| {
            let (tx, rx) = std::sync::mpsc::channel();
            // The thread that starts the site never ends, so the site (which dies with its
            // starting thread) lives until the test process exits.
            std::thread::spawn(move || {
                let temp = tempfile::tempdir().expect("tempdir");
                let mut dev = Dev::start(temp.path());
                // A static is never dropped: the site and its directory go at exit.
                let _ = SHARED.set((dev.child.id(), temp.path().to_path_buf()));
                // SAFETY: registers a plain function with no captured state.
                unsafe { libc::atexit(remove_shared) };
                dev._temp = Some(temp);
                let _ = tx.send(dev);
                loop {
                    std::thread::park();
                }
            });
            rx.recv().expect("the shared dev site started")
        })
    }

    pub fn api(&self) -> &str {
        self.info["api"].as_str().expect("api")
    }

    pub fn token(&self) -> &str {
        self.info["token"].as_str().expect("token")
    }

    /// The agent's configuration (for `ferry-agent --config`).
    pub fn agent_config(&self) -> PathBuf {
        self.dir.join("agent.toml")
    }

    /// The `ferry` CLI against this site (no `--json` added).
    pub fn ferry_cmd(&self) -> Command {
        let mut cmd = Command::new(bin("ferry"));
        cmd.env("FERRY_ADDR", self.api())
            .env("FERRY_TOKEN", self.token())
            .env("HOME", "/nonexistent")
            .stdin(Stdio::null());
        cmd
    }

    /// `ferry ARGS` as it is (human output).
    pub fn ferry_raw(&self, args: &[&str]) -> Output {
        self.ferry_cmd().args(args).output().expect("run ferry")
    }

    /// `ferry --json ARGS`: (success, JSON on stdout, stderr).
    pub fn ferry(&self, args: &[&str]) -> (bool, Value, String) {
        let out = self
            .ferry_cmd()
            .arg("--json")
            .args(args)
            .output()
            .expect("run ferry");
        (
            out.status.success(),
            serde_json::from_slice(&out.stdout).unwrap_or(Value::Null),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// `ferry --json ARGS`, which must succeed; its JSON.
    pub fn ferry_ok(&self, args: &[&str]) -> Value {
        let (ok, v, err) = self.ferry(args);
        assert!(ok, "ferry {args:?}: {err}");
        v
    }

    /// One HTTP request with the admin token: (status, JSON body or Null).
    pub fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        self.call_as(Some(self.token()), method, path, body)
    }

    /// One HTTP request with `token`.
    pub fn call_as(
        &self,
        token: Option<&str>,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let addr = self.api().trim_start_matches("http://");
        crate::controller::http(addr, method, path, token, body.map(|b| b.to_string()))
    }

    pub fn agent_up(&self) -> bool {
        let (_, v) = self.call("GET", "/v1/agents", None);
        v.as_array()
            .into_iter()
            .flatten()
            .any(|a| a["node"] == "node1" && a["status"] == "up")
    }

    /// Creates volume `name` of `size` on node1 through the API.
    pub fn volume(&self, name: &str, size: &str) {
        let (code, r) = self.call(
            "POST",
            "/v1/agents/node1/volumes",
            Some(serde_json::json!({"name": name, "size": size})),
        );
        assert_eq!(code, 201, "create volume {name}: {r}");
    }

    /// Where volume `name` of node1 lives.
    pub fn volume_path(&self, name: &str) -> PathBuf {
        crate::agent_volume_path(&self.agent_config(), name)
    }

    /// Writes `value` to a JSON file `name` in a fresh directory and returns its path.
    pub fn file(&self, name: &str, value: &Value) -> PathBuf {
        let dir = self.dir.join("files");
        std::fs::create_dir_all(&dir).expect("files dir");
        let p = dir.join(name);
        std::fs::write(&p, value.to_string()).expect("write");
        p
    }
}
