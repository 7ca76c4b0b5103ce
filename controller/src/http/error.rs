//! The API's errors (one JSON shape, a stable code, a message saying what to do) and the
//! helpers every handler uses to read its input: names, bodies, queries, records.

use super::*;

/// Every error's body.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

/// What went wrong.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// Stable: `invalid`, `unauthorized`, `forbidden`, `not_found`, `conflict`, `too_large`,
    /// `not_leader`, `store_unavailable`, `timeout`, `agent_failed`, `agent_busy`, `no_space`.
    pub code: String,
    /// What is wrong (naming the field) and what to do.
    pub message: String,
}

/// An API error: status, stable code, message.
#[derive(Debug)]
pub struct ApiError {
    pub(super) status: StatusCode,
    pub(super) code: &'static str,
    pub(super) message: String,
}

impl ApiError {
    pub(super) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }
    pub(super) fn bad(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid", message)
    }
    pub(super) fn not_found(what: &str, name: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no {what} named {name}"),
        )
    }
    pub(super) fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "conflict", message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.into(),
                message: self.message,
            },
        };
        (self.status, Json(body)).into_response()
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::BadKey(_) | StoreError::TooLarge(_) | StoreError::TooManyOps(_) => {
                ApiError::bad(e.to_string())
            }
            _ => {
                tracing::warn!(error = %e, "state store unavailable");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "store_unavailable",
                    format!("the state store is unavailable: {e}"),
                )
            }
        }
    }
}

pub(super) type ApiResult<T> = Result<T, ApiError>;

pub(super) fn name_param(what: &str, raw: &str) -> ApiResult<Name> {
    Name::new(raw).map_err(|e| ApiError::bad(format!("{what} name: {e}")))
}

pub(super) fn parse<T: serde::de::DeserializeOwned>(body: &Bytes) -> ApiResult<T> {
    serde_json::from_slice(body).map_err(|e| ApiError::bad(format!("request body: {e}")))
}

pub(super) fn body(
    raw: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> ApiResult<Bytes> {
    raw.map_err(|e| {
        let status = e.status();
        let code = if status == StatusCode::PAYLOAD_TOO_LARGE {
            "too_large"
        } else {
            "invalid"
        };
        ApiError::new(status, code, format!("request body: {}", e.body_text()))
    })
}

/// Parses a request's query string into `T` (unknown parameters are refused).
pub(super) fn query<T: serde::de::DeserializeOwned + Default>(
    raw: axum::extract::RawQuery,
) -> ApiResult<T> {
    match raw.0 {
        None => Ok(T::default()),
        Some(q) => serde_urlencoded::from_str(&q).map_err(|e| ApiError::bad(format!("query: {e}"))),
    }
}

pub(super) fn encode<T: Serialize>(v: &T) -> ApiResult<Vec<u8>> {
    serde_json::to_vec(v).map_err(|e| ApiError::bad(format!("cannot encode: {e}")))
}
