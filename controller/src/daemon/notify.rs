//! Notifications: the events the executor writes into the outbox (`/ferry/outbox/`, in the
//! same transaction as the change they tell of: a failed run, drill or verification, an RPO
//! violated or restored) are POSTed as JSON to every configured webhook by the leader, in
//! the background, so the controller never waits on a receiver. Each delivery is retried
//! with exponential backoff (1 s doubling to 5 min) until it is answered 2xx or the event
//! is a day old; an event leaves the outbox once every webhook took it. Delivery is at least
//! once (a new leader delivers again what the old one may have sent): receivers dedupe by
//! the event's `id`.
//!
//! A webhook with a secret gets the body signed: `X-Ferry-Signature: sha256=<hex>`, the
//! HMAC-SHA256 of the body under the secret. Secrets are never logged.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::Deserialize;

use crate::state::schema::{self, Event, OUTBOX};
use crate::state::{Store, StoreError};

/// A webhook (the controller's `[[webhooks]]`).
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Webhook {
    /// `http://` or `https://` (verified against the system's roots).
    pub url: String,
    /// Signs each body (HMAC-SHA256) when set.
    #[serde(default)]
    pub secret: Option<String>,
}

impl std::fmt::Debug for Webhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhook")
            .field("url", &self.url)
            .field("secret", &self.secret.as_ref().map(|_| "<hidden>"))
            .finish()
    }
}

impl Webhook {
    /// Checks the URL.
    pub fn validate(&self) -> Result<(), String> {
        let ok = (self.url.starts_with("http://") || self.url.starts_with("https://"))
            && self.url.parse::<hyper::Uri>().is_ok();
        if !ok {
            return Err(format!(
                "webhooks.url {:?} is not an http:// or https:// URL",
                self.url
            ));
        }
        if self.secret.as_deref().is_some_and(str::is_empty) {
            return Err("webhooks.secret is empty: give one or leave it out".into());
        }
        Ok(())
    }
}

/// The signature header's value for `body` under `secret`.
pub fn signature(secret: &str, body: &[u8]) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    let tag = ring::hmac::sign(&key, body);
    let hex: String = tag.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256={hex}")
}

/// First and longest wait between two deliveries of one event to one webhook.
const FIRST_RETRY: Duration = Duration::from_secs(1);
const LONGEST_RETRY: Duration = Duration::from_secs(300);
/// An event not delivered within this is dropped (logged).
const GIVE_UP_SECS: i64 = 86_400;
/// Most events kept waiting; past it the oldest are dropped (logged).
pub const MAX_OUTBOX: usize = 1000;
/// How long one delivery may take.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(10);

/// One event's delivery to one webhook, as far as this leader knows.
#[derive(Debug, Default)]
struct Delivery {
    done: bool,
    attempts: u32,
    next: Option<Instant>,
}

/// The delivery loop's state.
pub struct Notifier {
    hooks: Vec<Webhook>,
    client: Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>,
    /// (event id, webhook index) -> delivery.
    state: HashMap<(String, usize), Delivery>,
    /// Deliveries in flight: (event id, webhook index) -> outcome, when known.
    flying: HashMap<(String, usize), tokio::task::JoinHandle<Result<(), String>>>,
}

impl std::fmt::Debug for Notifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Notifier")
            .field("hooks", &self.hooks)
            .finish()
    }
}

impl Notifier {
    pub fn new(hooks: Vec<Webhook>) -> Result<Notifier, String> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS: {e}"))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .build();
        Ok(Notifier {
            hooks,
            client: Client::builder(TokioExecutor::new()).build(https),
            state: HashMap::new(),
            flying: HashMap::new(),
        })
    }

    /// One pass: start the deliveries that are due, take the outcomes of those that ended,
    /// and remove the events every webhook took (or too old to keep trying).
    pub async fn pass(&mut self, store: &Store) -> Result<(), StoreError> {
        let mut events = store.list(OUTBOX).await?;
        let now = jiff::Timestamp::now();
        if events.len() > MAX_OUTBOX {
            let drop = events.len() - MAX_OUTBOX;
            tracing::warn!(
                dropped = drop,
                "too many notifications waiting; dropping the oldest"
            );
            for kv in events.drain(..drop) {
                store.delete(&kv.key).await?;
            }
        }
        let mut live = std::collections::HashSet::new();
        for kv in events {
            let Ok(e) = serde_json::from_slice::<Event>(&kv.value) else {
                store.delete(&kv.key).await?;
                continue;
            };
            let id = e.id.to_string();
            let old = e
                .time
                .parse::<jiff::Timestamp>()
                .map_or(true, |t| now.as_second() - t.as_second() > GIVE_UP_SECS);
            let mut all = true;
            for (i, hook) in self.hooks.iter().enumerate() {
                let k = (id.clone(), i);
                if self.flying.get(&k).is_some_and(|h| h.is_finished()) {
                    if let Some(h) = self.flying.remove(&k) {
                        let outcome = h
                            .await
                            .unwrap_or_else(|e| Err(format!("delivery task: {e}")));
                        let d = self.state.entry(k.clone()).or_default();
                        match outcome {
                            Ok(()) => d.done = true,
                            Err(why) => {
                                d.attempts += 1;
                                let wait = FIRST_RETRY
                                    .saturating_mul(1 << d.attempts.min(16))
                                    .min(LONGEST_RETRY);
                                d.next = Some(Instant::now() + wait);
                                tracing::warn!(url = %hook.url, event = %e.event, id = %id, attempt = d.attempts, retry_s = wait.as_secs(), error = %why, "webhook delivery failed");
                            }
                        }
                    }
                }
                let d = self.state.entry(k.clone()).or_default();
                if d.done {
                    continue;
                }
                all = false;
                let due = d.next.is_none_or(|t| Instant::now() >= t);
                if due && !self.flying.contains_key(&k) && !old {
                    let body = Bytes::from(kv.value.clone());
                    let (client, hook) = (self.client.clone(), hook.clone());
                    d.next = Some(Instant::now() + LONGEST_RETRY); // until it is heard of
                    self.flying
                        .insert(k, tokio::spawn(deliver(client, hook, body)));
                }
            }
            if all || (old && !self.flying.keys().any(|(x, _)| *x == id)) {
                if !all {
                    tracing::warn!(event = %e.event, id = %id, "a notification was not delivered within a day; dropping it");
                }
                store.delete(&schema::outbox_key(&e.id)).await?;
                self.state.retain(|(x, _), _| *x != id);
                continue;
            }
            live.insert(id);
        }
        self.state.retain(|(x, _), _| live.contains(x));
        Ok(())
    }
}

/// POSTs one event to one webhook.
async fn deliver(
    client: Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>,
    hook: Webhook,
    body: Bytes,
) -> Result<(), String> {
    let mut req = hyper::Request::builder()
        .method("POST")
        .uri(&hook.url)
        .header("content-type", "application/json")
        .header("user-agent", concat!("ferry/", env!("CARGO_PKG_VERSION")));
    if let Some(s) = &hook.secret {
        req = req.header("x-ferry-signature", signature(s, &body));
    }
    let req = req.body(Full::new(body)).map_err(|e| e.to_string())?;
    match tokio::time::timeout(DELIVERY_TIMEOUT, client.request(req)).await {
        Err(_) => Err(format!("no answer within {} s", DELIVERY_TIMEOUT.as_secs())),
        Ok(Err(e)) => Err(e.to_string()),
        Ok(Ok(r)) if r.status().is_success() => Ok(()),
        Ok(Ok(r)) => Err(format!("answered {}", r.status())),
    }
}

/// Delivers the outbox until `shutdown`, a pass a second (only the leader runs this).
pub async fn run(
    store: Store,
    hooks: Vec<Webhook>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let mut n = match Notifier::new(hooks) {
        Ok(n) => n,
        Err(e) => {
            tracing::error!(error = %e, "webhooks cannot be used");
            return;
        }
    };
    loop {
        if let Err(e) = n.pass(&store).await {
            tracing::warn!(error = %e, "notification pass failed; retrying");
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = &mut shutdown => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_are_signed_with_hmac_sha256() {
        // RFC 4231, test case 2.
        assert_eq!(
            signature("Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        let h = Webhook {
            url: "https://alerts.example/ferry".into(),
            secret: Some("s3cret-value".into()),
        };
        assert!(h.validate().is_ok());
        assert!(
            !format!("{h:?}").contains("s3cret"),
            "secrets are never printed"
        );
        for bad in ["ftp://x", "alerts.example", "http://exa mple"] {
            let h = Webhook {
                url: bad.into(),
                secret: None,
            };
            assert!(h.validate().is_err(), "{bad}");
        }
    }
}
