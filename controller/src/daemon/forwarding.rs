//! Controller to controller: a follower forwards the HTTP API requests it receives to the
//! leader, over QUIC with mutual TLS (the site CA, the ferry handshake) to the leader's agent
//! endpoint, one request per bidirectional stream ([`ferry_wire::control::ForwardRequest`]);
//! the leader runs each through its own router, exactly as if it had been sent there, and
//! answers with the response. The bearer token travels with the request and is checked by
//! the leader; it is never logged. A forwarded request is marked, so it is never forwarded
//! twice (a leader that has just stepped down answers 503 instead).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderValue, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use ferry_net::pki::{Identity, Trust};
use ferry_net::quic::{self as net, NetError};
use ferry_wire::control::{ForwardRequest, ForwardResponse, FORWARD_LIMIT};

use crate::daemon::leader::LeaderInfo;

/// The header that marks a forwarded request.
pub const FORWARDED: &str = "x-ferry-forwarded";

/// How long a forwarded request may take (creating a volume waits up to 30 s for its agent).
const FORWARD_TIMEOUT: Duration = Duration::from_secs(60);

/// Why a request could not be forwarded.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("the leader's record names no endpoint to reach it at")]
    NoLeader,
    #[error("the leader's address {0:?} is not HOST:PORT")]
    BadAddress(String),
    #[error("cannot reach the leader at {addr}: {source}")]
    Net { addr: String, source: NetError },
    #[error("the leader did not answer within {} s", FORWARD_TIMEOUT.as_secs())]
    Timeout,
}

/// A follower's link to the leader, made on first use and again when it breaks.
pub struct Forwarder {
    /// This controller's name, as its leader record would carry it.
    me: String,
    id: Arc<Identity>,
    trust: Arc<Trust>,
    /// The leader's address, the endpoint, and the session (whose first stream is kept
    /// open and silent: it says this link is a follower's, not an agent's).
    link: tokio::sync::Mutex<Option<(SocketAddr, quinn::Endpoint, net::Session)>>,
}

impl std::fmt::Debug for Forwarder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Forwarder").finish_non_exhaustive()
    }
}

impl Forwarder {
    pub fn new(id: Arc<Identity>, trust: Arc<Trust>) -> Forwarder {
        Forwarder {
            me: id.node.to_string(),
            id,
            trust,
            link: tokio::sync::Mutex::new(None),
        }
    }

    /// Whether a leader record is this controller's own.
    pub fn is_me(&self, leader: &LeaderInfo) -> bool {
        leader.name == self.me
    }

    /// A connection to `leader` (reused while it lives and the leader stays).
    async fn connection(&self, leader: &LeaderInfo) -> Result<quinn::Connection, ForwardError> {
        let leader = leader.endpoint.clone().ok_or(ForwardError::NoLeader)?;
        let addr: SocketAddr = tokio::net::lookup_host(&leader)
            .await
            .ok()
            .and_then(|mut a| a.next())
            .ok_or_else(|| ForwardError::BadAddress(leader.clone()))?;
        let mut link = self.link.lock().await;
        if let Some((a, _, s)) = link.as_ref() {
            if *a == addr && s.conn.close_reason().is_none() {
                return Ok(s.conn.clone());
            }
        }
        let net_err = |source| ForwardError::Net {
            addr: leader.clone(),
            source,
        };
        let cc = net::client_config(&self.id, &self.trust).map_err(net_err)?;
        let ep = net::client_endpoint(addr, cc).map_err(net_err)?;
        let s = net::connect(&ep, addr, &self.id, &self.trust)
            .await
            .map_err(net_err)?;
        let conn = s.conn.clone();
        *link = Some((addr, ep, s));
        Ok(conn)
    }

    /// Sends one request to `leader` and returns its answer.
    pub async fn forward(
        &self,
        leader: &LeaderInfo,
        req: &ForwardRequest,
    ) -> Result<ForwardResponse, ForwardError> {
        let conn = self.connection(leader).await?;
        let addr = conn.remote_address().to_string();
        let net_err = |source| ForwardError::Net {
            addr: addr.clone(),
            source,
        };
        let exchange = async {
            let (mut send, mut recv) = conn.open_bi().await.map_err(NetError::from)?;
            net::send_msg(&mut send, req).await?;
            let _ = send.finish();
            net::recv_msg::<ForwardResponse>(&mut recv, FORWARD_LIMIT).await
        };
        match tokio::time::timeout(FORWARD_TIMEOUT, exchange).await {
            Ok(r) => r.map_err(net_err),
            Err(_) => Err(ForwardError::Timeout),
        }
    }
}

/// The leader's side: answers one forwarded request through `router`.
pub async fn answer(router: axum::Router, req: ForwardRequest) -> ForwardResponse {
    use tower::ServiceExt as _;
    let mut b = Request::builder()
        .method(req.method.as_str())
        .uri(req.path.as_str())
        .header(FORWARDED, "1");
    for (name, value) in [
        (axum::http::header::AUTHORIZATION, &req.authorization),
        (axum::http::header::CONTENT_TYPE, &req.content_type),
    ] {
        if let Some(v) = value.as_deref().and_then(|v| HeaderValue::from_str(v).ok()) {
            b = b.header(name, v);
        }
    }
    let resp = match b.body(Body::from(req.body)) {
        Ok(r) => router.oneshot(r).await.unwrap_or_else(|e| match e {}),
        Err(e) => (
            StatusCode::BAD_REQUEST,
            axum::Json(serde_json::json!({"error": {"code": "invalid", "message": format!("forwarded request: {e}")}})),
        )
            .into_response(),
    };
    let status = resp.status().as_u16();
    let content_type = resp
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(String::from);
    match axum::body::to_bytes(resp.into_body(), FORWARD_LIMIT - 4096).await {
        Ok(body) => ForwardResponse {
            status,
            content_type,
            body: body.to_vec(),
        },
        Err(_) => ForwardResponse {
            status: 502,
            content_type: Some("application/json".into()),
            body: serde_json::to_vec(&serde_json::json!({"error": {"code": "too_large",
                "message": "the leader's answer is too large to forward; ask the leader directly"}}))
            .unwrap_or_default(),
        },
    }
}

/// A forwarded answer as an HTTP response.
pub fn response(r: ForwardResponse) -> Response {
    let status = StatusCode::from_u16(r.status).unwrap_or(StatusCode::BAD_GATEWAY);
    let mut resp = (status, r.body).into_response();
    if let Some(v) = r.content_type.and_then(|v| HeaderValue::from_str(&v).ok()) {
        resp.headers_mut()
            .insert(axum::http::header::CONTENT_TYPE, v);
    }
    resp
}
