//! Serving the API over HTTP/1.1 with limits: at most [`MAX_CONNECTIONS`] connections (past
//! them a new one is answered `503` at once and closed), a request's headers within
//! [`HEADER_TIMEOUT`] (a half-open connection is closed then; this also bounds how long an
//! idle keep-alive connection is kept), a request's body within [`BODY_TIMEOUT`], and a
//! graceful shutdown of at most [`SHUTDOWN_GRACE`]: requests in progress may end, then every
//! connection is dropped.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::AsyncWriteExt as _;
use tokio::sync::Semaphore;
use tower::ServiceExt as _;

/// Connections served at once.
pub const MAX_CONNECTIONS: usize = 512;
/// Time a client has to send a request's headers (and an idle connection's next request).
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Time a client has to send a request's body.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(30);
/// Time requests in progress have to end once the server stops.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

const BUSY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n\
Connection: close\r\nContent-Length: 110\r\n\r\n\
{\"error\":{\"code\":\"too_many_connections\",\"message\":\"the controller serves 512 connections now; retry shortly\"}}";

/// Reads the body within [`BODY_TIMEOUT`] (and [`super::MAX_BODY`]) before the handlers see it.
pub async fn body_deadline(req: Request, next: axum::middleware::Next) -> Response {
    let (parts, body) = req.into_parts();
    let read = tokio::time::timeout(BODY_TIMEOUT, axum::body::to_bytes(body, super::MAX_BODY));
    match read.await {
        Ok(Ok(bytes)) => {
            next.run(Request::from_parts(parts, Body::from(bytes)))
                .await
        }
        Ok(Err(_)) => super::ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("request body: larger than {} bytes", super::MAX_BODY),
        )
        .into_response(),
        Err(_) => super::ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "timeout",
            format!(
                "request body: not received within {} s",
                BODY_TIMEOUT.as_secs()
            ),
        )
        .into_response(),
    }
}

/// Serves `router` on `listener` until `stop` resolves, within the limits above.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: axum::Router,
    stop: impl std::future::Future<Output = ()>,
) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let (closing_tx, closing) = tokio::sync::watch::channel(false);
    let mut conns = tokio::task::JoinSet::new();
    tokio::pin!(stop);
    loop {
        let (stream, _) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // Out of descriptors, say: wait a little rather than spin.
                    tracing::warn!(error = %e, "cannot accept an HTTP connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = &mut stop => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            conns.spawn(async move {
                let mut s = stream;
                let _ = tokio::time::timeout(Duration::from_secs(1), s.write_all(BUSY)).await;
            });
            continue;
        };
        let router = router.clone();
        let mut closing = closing.clone();
        conns.spawn(async move {
            let _permit = permit;
            let service =
                hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    router.clone().oneshot(req.map(Body::new))
                });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = async { let _ = closing.wait_for(|c| *c).await; } => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(SHUTDOWN_GRACE, conn).await;
                }
            }
        });
    }
    drop(listener);
    let _ = closing_tx.send(true);
    let drain = async { while conns.join_next().await.is_some() {} };
    if tokio::time::timeout(SHUTDOWN_GRACE + Duration::from_secs(1), drain)
        .await
        .is_err()
    {
        conns.abort_all();
    }
}
