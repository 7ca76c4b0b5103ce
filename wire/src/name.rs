//! Validated names for volumes, snapshots, nodes and plans.
//!
//! A name is 1 to 128 bytes of ASCII letters, digits, `_`, `-` and `.`, starting with a letter
//! or digit. So it has no `/`, is never `.` or `..`, never starts with `.` (the agent reserves
//! such names for its own temporary entries), and can be used as one path component safely.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Longest name accepted, in bytes.
pub const MAX_NAME_LEN: usize = 128;

/// Why a string is not a valid name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("name is empty")]
    Empty,
    #[error("name is {0} bytes long; at most {MAX_NAME_LEN} are allowed")]
    TooLong(usize),
    #[error("name must start with a letter or a digit, not {0:?}")]
    BadStart(char),
    #[error("name contains {0:?}; only letters, digits, '_', '-' and '.' are allowed")]
    BadChar(char),
}

/// The rules of a [`Name`] as a regular expression (ECMA-262), for API documents.
pub const PATTERN: &str = "^[A-Za-z0-9][A-Za-z0-9._-]*$";

#[cfg(feature = "openapi")]
impl utoipa::PartialSchema for Name {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .min_length(Some(1))
            .max_length(Some(MAX_NAME_LEN))
            .pattern(Some(PATTERN))
            .description(Some(
                "a name: 1-128 of [A-Za-z0-9._-], starting with a letter or digit; never a path",
            ))
            .into()
    }
}

#[cfg(feature = "openapi")]
impl utoipa::ToSchema for Name {}

/// A validated identifier (see the module documentation for the rules).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct Name(String);

impl Name {
    /// Checks `s` and wraps it.
    pub fn new(s: &str) -> Result<Self, NameError> {
        validate(s)?;
        Ok(Name(s.to_owned()))
    }

    /// The name as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Checks `s` against the naming rules without allocating.
pub fn validate(s: &str) -> Result<(), NameError> {
    let first = s.chars().next().ok_or(NameError::Empty)?;
    if s.len() > MAX_NAME_LEN {
        return Err(NameError::TooLong(s.len()));
    }
    if !first.is_ascii_alphanumeric() {
        return Err(NameError::BadStart(first));
    }
    if let Some(c) = s
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')))
    {
        return Err(NameError::BadChar(c));
    }
    Ok(())
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(&self.0)
    }
}

impl AsRef<str> for Name {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl std::str::FromStr for Name {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Name::new(s)
    }
}

impl<'de> Deserialize<'de> for Name {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Name::new(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table() {
        let long = "a".repeat(MAX_NAME_LEN);
        let too_long = "a".repeat(MAX_NAME_LEN + 1);
        let cases: &[(&str, Result<(), NameError>)] = &[
            ("vm-disk0", Ok(())),
            ("a", Ok(())),
            ("0", Ok(())),
            ("lun_3.img", Ok(())),
            ("2026-11-24T10.00", Ok(())),
            (&long, Ok(())),
            ("", Err(NameError::Empty)),
            (&too_long, Err(NameError::TooLong(MAX_NAME_LEN + 1))),
            (".", Err(NameError::BadStart('.'))),
            ("..", Err(NameError::BadStart('.'))),
            (".hidden", Err(NameError::BadStart('.'))),
            ("-x", Err(NameError::BadStart('-'))),
            ("a/b", Err(NameError::BadChar('/'))),
            ("../etc", Err(NameError::BadStart('.'))),
            ("a b", Err(NameError::BadChar(' '))),
            ("a\0b", Err(NameError::BadChar('\0'))),
            ("é", Err(NameError::BadStart('é'))),
            ("a\\b", Err(NameError::BadChar('\\'))),
        ];
        for (input, want) in cases {
            assert_eq!(&validate(input), want, "input {input:?}");
        }
    }

    #[test]
    fn serde_validates() {
        let n: Result<Name, _> = serde_json_like("\"ok-name\"");
        assert_eq!(n.map(|n| n.to_string()), Ok("ok-name".to_string()));
        assert!(serde_json_like("\"../x\"").is_err());
    }

    // A tiny deserializer through bincode's serde path would need encoding first; use the
    // string deserializer from serde's value module instead.
    fn serde_json_like(quoted: &str) -> Result<Name, String> {
        use serde::de::value::{Error, StrDeserializer};
        use serde::de::IntoDeserializer;
        let inner = quoted.trim_matches('"');
        let d: StrDeserializer<'_, Error> = inner.into_deserializer();
        Name::deserialize(d).map_err(|e| e.to_string())
    }
}
