//! The controller's configuration (`ferry-controller serve --config FILE`): one documented
//! struct, unknown keys refused; `controller/ferry-controller.example.toml` is parsed by a
//! test, and bad variants of it must fail.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use ferry_controller::http::{Role, TokenEntry};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// HTTP API address.
    pub listen: SocketAddr,
    pub store: StoreConfig,
    #[serde(default)]
    pub tokens: Vec<TokenConfig>,
    /// The endpoint this site's agents connect to (absent: no agents).
    #[serde(default)]
    pub agents: Option<ferry_controller::daemon::agents::AgentsConfig>,
    /// Drills and the verification of kept groups at this site.
    #[serde(default)]
    pub recovery: ferry_controller::daemon::recoveries::RecoveryConfig,
    /// Where failed runs, drills and verifications and RPO violations are POSTed.
    #[serde(default)]
    pub webhooks: Vec<ferry_controller::daemon::notify::Webhook>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, tag = "kind", rename_all = "snake_case")]
pub enum StoreConfig {
    Embedded {
        path: PathBuf,
    },
    Etcd {
        endpoints: Vec<String>,
        /// Seconds a leader's lease lives without renewal: how long a dead leader holds
        /// the site before a follower takes over (default 5).
        #[serde(default)]
        lease_ttl_secs: Option<u64>,
    },
}

impl StoreConfig {
    pub fn lease_ttl_secs(&self) -> u64 {
        match self {
            StoreConfig::Etcd {
                lease_ttl_secs: Some(t),
                ..
            } => *t,
            _ => 5,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    pub name: String,
    pub role: Role,
    /// BLAKE3 of the token, 64 hex digits (`ferry-controller token` makes both).
    pub blake3: String,
}

pub fn load(path: &Path) -> anyhow::Result<Config> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("read the configuration {}", path.display()))?;
    parse(&text, path)
}

pub fn parse(text: &str, path: &Path) -> anyhow::Result<Config> {
    let cfg: Config =
        toml::from_str(text).with_context(|| format!("configuration {}", path.display()))?;
    if let StoreConfig::Etcd {
        lease_ttl_secs: Some(t),
        ..
    } = &cfg.store
    {
        if !(2..=120).contains(t) {
            bail!(
                "configuration {}: store.lease_ttl_secs must be 2 to 120, not {t}",
                path.display()
            );
        }
    }
    for w in &cfg.webhooks {
        w.validate()
            .map_err(|e| anyhow::anyhow!("configuration {}: {e}", path.display()))?;
    }
    if cfg.webhooks.len() > 16 {
        bail!("configuration {}: at most 16 [[webhooks]]", path.display());
    }
    if cfg.tokens.is_empty() {
        bail!(
            "configuration {}: no [[tokens]]: nobody could use the API",
            path.display()
        );
    }
    Ok(cfg)
}

pub fn tokens(cfg: &Config) -> anyhow::Result<Vec<TokenEntry>> {
    cfg.tokens
        .iter()
        .map(|t| {
            let h = blake3::Hash::from_hex(&t.blake3)
                .map_err(|_| anyhow::anyhow!("tokens.{}: blake3 must be 64 hex digits", t.name))?;
            Ok(TokenEntry {
                name: t.name.clone(),
                role: t.role,
                hash: *h.as_bytes(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_configuration_parses_and_bad_ones_are_refused() {
        let example = include_str!("../../../ferry-controller.example.toml");
        let p = std::path::Path::new("example.toml");
        let cfg = parse(example, p).expect("the example parses");
        assert_eq!(cfg.tokens.len(), 2);
        assert!(cfg.agents.is_some_and(|a| a.advertise.is_some()));
        assert_eq!(cfg.webhooks.len(), 1);
        assert_eq!(cfg.recovery.verify_bandwidth, 64 << 20);
        assert_eq!(cfg.recovery.drill_checks_from.len(), 1);
        let etcd = example.replace(
            "kind = \"embedded\"\npath = \"/var/lib/ferry/controller.redb\"",
            "kind = \"etcd\"\nendpoints = [\"http://127.0.0.1:2379\"]\nlease_ttl_secs = 9",
        );
        let cfg = parse(&etcd, p).expect("etcd parses");
        assert_eq!(cfg.store.lease_ttl_secs(), 9);
        for (bad, says) in [
            (
                etcd.replace("lease_ttl_secs = 9", "lease_ttl_secs = 1"),
                "lease_ttl_secs",
            ),
            (
                example.replace("listen = \"127.0.0.1:7480\"", "listen = \"x\""),
                "listen",
            ),
            (
                example.replace("[agents]", "[agents]\ncolour = 1"),
                "colour",
            ),
            (
                example.replace("role = \"admin\"", "role = \"root\""),
                "root",
            ),
            (
                example.replace("https://alerts.example/ferry", "alerts.example"),
                "webhooks.url",
            ),
            (
                example.replace("verify_every_secs = 604800", "verify_every_secs = -1"),
                "verify_every_secs",
            ),
        ] {
            let e = format!("{:#}", parse(&bad, p).expect_err("refused"));
            assert!(e.contains(says), "{says}: {e}");
        }
    }
}
