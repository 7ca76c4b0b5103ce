//! On a follower, every `/v1` request but the OpenAPI document goes to the leader over QUIC
//! (the leader checks the token); `/healthz` and `/metrics` are answered here.

use super::*;

/// How long a request waits for an election under way.
pub(super) const ELECTION_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// On a follower, every `/v1` request but the OpenAPI document goes to the leader (the
/// leader checks the token); `/healthz` and `/metrics` are answered here.
pub(super) async fn forward(
    State(s): State<Arc<ApiState>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let path = req.uri().path().to_string();
    let local = !path.starts_with("/v1/") || path == "/v1/openapi.json";
    if local {
        return next.run(req).await;
    }
    let unavailable =
        |m: String| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "not_leader", m).into_response();
    // While an election is under way (at start, after a leader died, or while this
    // controller's own election is being taken up) a request waits for its outcome rather
    // than failing at once.
    let t0 = std::time::Instant::now();
    let leader = loop {
        if s.term().is_some() {
            return next.run(req).await;
        }
        // Without a link to other controllers, only this one's own election can help.
        if let Some(f) = &s.forwarder {
            let found = crate::daemon::leader::current(&s.store)
                .await
                .ok()
                .flatten();
            if let Some(l) = found.filter(|l| !f.is_me(l)) {
                break l;
            }
        }
        if t0.elapsed() > ELECTION_WAIT {
            return unavailable(match s.forwarder {
                Some(_) => "no leader is elected right now; retry shortly".into(),
                None => "this controller is not the leader and cannot reach it".into(),
            });
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    let Some(f) = s.forwarder.clone() else {
        return unavailable("this controller is not the leader and cannot reach it".into());
    };
    if req
        .headers()
        .contains_key(crate::daemon::forwarding::FORWARDED)
    {
        return unavailable("this controller is no longer the leader; retry shortly".into());
    }
    let (authorization, content_type) = {
        let header = |h: axum::http::header::HeaderName| {
            req.headers()
                .get(h)
                .and_then(|v| v.to_str().ok())
                .map(String::from)
        };
        (
            header(axum::http::header::AUTHORIZATION),
            header(axum::http::header::CONTENT_TYPE),
        )
    };
    let method = req.method().to_string();
    let target = req.uri().path_and_query().map_or(path, |p| p.to_string());
    let body = match axum::body::to_bytes(req.into_body(), MAX_BODY).await {
        Ok(b) => b.to_vec(),
        Err(_) => {
            return ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                format!("request body: larger than {MAX_BODY} bytes"),
            )
            .into_response()
        }
    };
    let fr = ferry_wire::control::ForwardRequest {
        method,
        path: target,
        authorization,
        content_type,
        body,
    };
    match f.forward(&leader, &fr).await {
        Ok(r) => crate::daemon::forwarding::response(r),
        Err(e) => {
            tracing::warn!(error = %e, "cannot forward a request to the leader");
            unavailable(format!("this controller is a follower: {e}"))
        }
    }
}
