//! Bearer tokens: configured as BLAKE3 hashes with a role, compared in constant time.

use super::*;

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Admin,
    ReadOnly,
}

/// A configured token: its name (for logs; the token itself is never logged or stored) and
/// the BLAKE3 hash of its value.
#[derive(Debug, Clone)]
pub struct TokenEntry {
    pub name: String,
    pub role: Role,
    pub hash: [u8; 32],
}

/// Checks the bearer token; a write needs the admin role.
pub(super) fn auth(state: &ApiState, headers: &HeaderMap, write: bool) -> ApiResult<()> {
    let unauthorized = |m: &str| ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", m);
    let value = headers
        .get(axum::http::header::AUTHORIZATION)
        .ok_or_else(|| unauthorized("missing Authorization: Bearer <token>"))?
        .to_str()
        .map_err(|_| unauthorized("malformed Authorization header"))?;
    let token = value
        .strip_prefix("Bearer ")
        .ok_or_else(|| unauthorized("the Authorization header must be Bearer <token>"))?;
    let hash = blake3::hash(token.trim().as_bytes());
    // blake3::Hash compares in constant time.
    let entry = state
        .tokens
        .iter()
        .find(|t| blake3::Hash::from(t.hash) == hash)
        .ok_or_else(|| unauthorized("unknown token"))?;
    if write && entry.role != Role::Admin {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("token {} is read-only", entry.name),
        ));
    }
    Ok(())
}
