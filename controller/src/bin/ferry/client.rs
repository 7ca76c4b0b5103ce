//! The HTTP client of the controller's API: where it is and the token (flags, environment,
//! `~/.config/ferry/cli.toml`), http or https (rustls: the system's roots, plus `--ca FILE`
//! for a private CA), one call per request, and every failure as a [`Coded`] error that
//! says what to do next.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use ferry_controller::exit::Coded;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

/// Where the API is unless told: `ferry-controller dev` and the example configuration
/// listen there.
pub const DEFAULT_ADDR: &str = "http://127.0.0.1:7480";

/// How long one call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Largest answer read.
const MAX_ANSWER: usize = 64 << 20;
/// Items asked for per page of a list (the API's most).
const PAGE: usize = 1000;

/// What the command line was given, before the config file fills the gaps.
#[derive(Debug, Default)]
pub struct Given {
    pub addr: Option<String>,
    pub token: Option<String>,
    pub ca: Option<PathBuf>,
}

#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    addr: Option<String>,
    token: Option<String>,
    ca: Option<PathBuf>,
}

fn file_config() -> anyhow::Result<FileConfig> {
    let Some(home) = std::env::var_os("HOME") else {
        return Ok(FileConfig::default());
    };
    let p = PathBuf::from(home).join(".config/ferry/cli.toml");
    match std::fs::read_to_string(&p) {
        Ok(t) => toml::from_str(&t)
            .map_err(|e| Coded::new("invalid_file", format!("{}: {e}", p.display())).into()),
        Err(_) => Ok(FileConfig::default()),
    }
}

pub struct Api {
    pub addr: String,
    token: String,
    client: Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>,
}

fn tls_config(ca: Option<&Path>) -> anyhow::Result<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    // The system's roots (a TLS proxy with a public certificate), if it has any.
    let native = rustls_native_certs::load_native_certs();
    roots.add_parsable_certificates(native.certs);
    if let Some(p) = ca {
        use rustls_pki_types::pem::PemObject as _;
        let certs: Vec<_> = rustls_pki_types::CertificateDer::pem_file_iter(p)
            .and_then(|it| it.collect::<Result<Vec<_>, _>>())
            .map_err(|e| Coded::new("invalid_file", format!("--ca {}: {e}", p.display())))?;
        if certs.is_empty() {
            return Err(Coded::new(
                "invalid_file",
                format!("--ca {}: no PEM certificate in it", p.display()),
            )
            .into());
        }
        for c in certs {
            roots
                .add(c)
                .map_err(|e| Coded::new("invalid_file", format!("--ca {}: {e}", p.display())))?;
        }
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS versions")?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

impl Api {
    /// The API as configured: flags, then `FERRY_ADDR`/`FERRY_TOKEN`/`FERRY_CA`, then
    /// `~/.config/ferry/cli.toml`, then the default address.
    pub fn new(given: Given) -> anyhow::Result<Api> {
        let file = file_config()?;
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let addr = given
            .addr
            .or_else(|| env("FERRY_ADDR"))
            .or(file.addr)
            .unwrap_or_else(|| DEFAULT_ADDR.into());
        let token = given
            .token
            .or_else(|| env("FERRY_TOKEN"))
            .or(file.token)
            .ok_or_else(|| {
                Coded::new(
                    "usage",
                    "no API token: give --token, set FERRY_TOKEN, or put token = \"...\" in \
                 ~/.config/ferry/cli.toml (ferry-controller dev prints one at start)",
                )
            })?;
        let ca = given
            .ca
            .or_else(|| env("FERRY_CA").map(PathBuf::from))
            .or(file.ca);
        if !(addr.starts_with("http://") || addr.starts_with("https://")) {
            return Err(Coded::new(
                "usage",
                format!("--addr must be an http:// or https:// URL, not {addr:?}"),
            )
            .into());
        }
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls_config(ca.as_deref())?)
            .https_or_http()
            .enable_http1()
            .build();
        Ok(Api {
            addr: addr.trim_end_matches('/').to_string(),
            token,
            client: Client::builder(TokioExecutor::new()).build(https),
        })
    }

    /// One call; a non-2xx answer becomes the API's error, with a hint where one helps.
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> anyhow::Result<Value> {
        Ok(self.exchange(method, path, body).await?.0)
    }

    /// Every item of the paged list at `path`, following the pages' cursors.
    pub async fn list(&self, path: &str) -> anyhow::Result<Value> {
        let mut all = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let sep = if path.contains('?') { '&' } else { '?' };
            let page = match &after {
                None => format!("{path}{sep}limit={PAGE}"),
                Some(a) => format!("{path}{sep}limit={PAGE}&after={a}"),
            };
            let (v, next) = self.exchange("GET", &page, None).await?;
            match v {
                Value::Array(items) => all.extend(items),
                other => return Ok(other),
            }
            match next {
                Some(n) if after.as_ref() != Some(&n) => after = Some(n),
                _ => return Ok(Value::Array(all)),
            }
        }
    }

    /// One call and the next page's cursor its answer names.
    async fn exchange(
        &self,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> anyhow::Result<(Value, Option<String>)> {
        let req = hyper::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.addr))
            .header("authorization", format!("Bearer {}", self.token))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .context("build the request")?;
        let resp = match tokio::time::timeout(CALL_TIMEOUT, self.client.request(req)).await {
            Err(_) => {
                return Err(Coded::new(
                    "timeout",
                    format!(
                        "{} did not answer within {} s",
                        self.addr,
                        CALL_TIMEOUT.as_secs()
                    ),
                )
                .into())
            }
            Ok(Err(e)) => return Err(self.unreachable(&e).into()),
            Ok(Ok(r)) => r,
        };
        let status = resp.status();
        // A cursor is names and slashes: anything else is not passed on into a URL.
        let next = resp
            .headers()
            .get("x-next-after")
            .and_then(|h| h.to_str().ok())
            .filter(|n| n.split('/').all(|p| ferry_wire::Name::new(p).is_ok()))
            .map(String::from);
        let bytes = http_body_util::Limited::new(resp.into_body(), MAX_ANSWER)
            .collect()
            .await
            .map_err(|e| Coded::new("unreachable", format!("reading the answer: {e}")))?
            .to_bytes();
        let v: Value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).map_err(|_| {
                Coded::new(
                    "bad_answer",
                    format!(
                        "{} answered with something that is not JSON (status {}): is it a ferry controller?",
                        self.addr,
                        status.as_u16()
                    ),
                )
            })?
        };
        if status.is_success() {
            return Ok((v, next));
        }
        let code = v["error"]["code"].as_str().unwrap_or("failed").to_string();
        let message = v["error"]["message"].as_str().unwrap_or("no message");
        let hint = match status.as_u16() {
            401 => {
                "; a dev site makes a new token at every start unless started with --token: \
                 give the current one with --token or FERRY_TOKEN"
            }
            403 => "; this needs a token with the admin role",
            _ => "",
        };
        Err(Coded {
            code,
            status: Some(status.as_u16()),
            message: format!("{message} ({}){hint}", status.as_u16()),
            printed: false,
        }
        .into())
    }

    pub async fn get(&self, path: &str) -> anyhow::Result<Value> {
        self.call("GET", path, None).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        self.call("POST", path, Some(serde_json::to_vec(body)?))
            .await
    }

    fn unreachable(&self, e: &hyper_util::client::legacy::Error) -> Coded {
        // The innermost cause says most: "connection refused", a certificate error.
        let mut cause = e.to_string();
        let mut src: Option<&dyn std::error::Error> = std::error::Error::source(e);
        while let Some(s) = src {
            cause = s.to_string();
            src = s.source();
        }
        let tls = cause.contains("certificate") || cause.contains("tls") || cause.contains("TLS");
        if tls {
            Coded::new(
                "tls",
                format!(
                    "cannot reach the controller at {}: {cause} (a private CA: give its \
                     certificate with --ca FILE or FERRY_CA)",
                    self.addr
                ),
            )
        } else {
            Coded::new(
                "unreachable",
                format!(
                    "cannot reach the controller at {}: {cause} (is ferry-controller running \
                     there? `ferry-controller dev` runs one at {DEFAULT_ADDR}; --addr or \
                     FERRY_ADDR points elsewhere)",
                    self.addr
                ),
            )
        }
    }
}

/// A name from the command line, checked before it goes into a URL.
pub fn checked(what: &str, name: &str) -> anyhow::Result<String> {
    ferry_wire::Name::new(name).map_err(|e| {
        Coded::new(
            "invalid_name",
            format!("{what} {name:?} is not a valid name: {e}"),
        )
    })?;
    Ok(name.to_string())
}

/// A JSON file's bytes (`-`: standard input), checked to be JSON, and its `name` field.
pub fn read_json_file(p: &Path) -> anyhow::Result<(Vec<u8>, Option<String>)> {
    let bytes = if p.as_os_str() == "-" {
        let mut b = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin().lock(), &mut b).context("read stdin")?;
        b
    } else {
        std::fs::read(p)
            .map_err(|e| Coded::new("invalid_file", format!("read {}: {e}", p.display())))?
    };
    let v: Value = serde_json::from_slice(&bytes)
        .map_err(|e| Coded::new("invalid_file", format!("{} is not JSON: {e}", p.display())))?;
    let name = v["name"].as_str().map(String::from);
    Ok((bytes, name))
}
