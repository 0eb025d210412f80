//! The error result every CNI command prints on failure, with the spec's well-known codes.

use serde::{Serialize, Serializer};

/// Error codes 0-99 are reserved by the spec; 100+ are free for plugin-specific errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    IncompatibleVersion,
    UnsupportedField,
    UnknownContainer,
    InvalidEnvironment,
    Io,
    Decode,
    InvalidNetConf,
    TryAgainLater,
    /// STATUS: the plugin cannot service ADD requests.
    NotAvailable,
    /// STATUS: not available, and existing containers may have limited connectivity.
    LimitedConnectivity,
    /// A plugin-specific code; must be 100 or more.
    Plugin(u32),
}

impl ErrorCode {
    pub fn code(self) -> u32 {
        match self {
            ErrorCode::IncompatibleVersion => 1,
            ErrorCode::UnsupportedField => 2,
            ErrorCode::UnknownContainer => 3,
            ErrorCode::InvalidEnvironment => 4,
            ErrorCode::Io => 5,
            ErrorCode::Decode => 6,
            ErrorCode::InvalidNetConf => 7,
            ErrorCode::TryAgainLater => 11,
            ErrorCode::NotAvailable => 50,
            ErrorCode::LimitedConnectivity => 51,
            ErrorCode::Plugin(c) => c,
        }
    }
}

/// A CNI error: `code` and `msg` for programs, `details` for the operator reading logs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{msg} (CNI error {code}){}", if details.is_empty() { String::new() } else { format!(": {details}") })]
pub struct CniError {
    pub code: u32,
    pub msg: String,
    pub details: String,
}

impl CniError {
    pub fn new(code: ErrorCode, msg: impl Into<String>, details: impl Into<String>) -> Self {
        CniError {
            code: code.code(),
            msg: msg.into(),
            details: details.into(),
        }
    }

    /// The error result object for protocol version `cni_version`, as printed on stdout.
    pub fn to_json(&self, cni_version: &str) -> serde_json::Value {
        serde_json::to_value(ErrorResult {
            cni_version,
            error: self,
        })
        .expect("an error result always serialises")
    }
}

#[derive(Serialize)]
struct ErrorResult<'a> {
    #[serde(rename = "cniVersion")]
    cni_version: &'a str,
    #[serde(flatten)]
    error: &'a CniError,
}

impl Serialize for CniError {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("code", &self.code)?;
        m.serialize_entry("msg", &self.msg)?;
        // `details` is optional in the spec; an empty one carries no information.
        if !self.details.is_empty() {
            m.serialize_entry("details", &self.details)?;
        }
        m.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn well_known_codes_match_the_spec() {
        let expected = [
            (ErrorCode::IncompatibleVersion, 1),
            (ErrorCode::UnsupportedField, 2),
            (ErrorCode::UnknownContainer, 3),
            (ErrorCode::InvalidEnvironment, 4),
            (ErrorCode::Io, 5),
            (ErrorCode::Decode, 6),
            (ErrorCode::InvalidNetConf, 7),
            (ErrorCode::TryAgainLater, 11),
            (ErrorCode::NotAvailable, 50),
            (ErrorCode::LimitedConnectivity, 51),
            (ErrorCode::Plugin(101), 101),
        ];
        for (code, n) in expected {
            assert_eq!(code.code(), n, "{code:?}");
        }
    }

    #[test]
    fn serialises_to_the_spec_error_object() {
        let e = CniError::new(
            ErrorCode::InvalidNetConf,
            "Invalid Configuration",
            "mtu 12 too small",
        );
        assert_eq!(
            e.to_json("1.1.0"),
            json!({"cniVersion": "1.1.0", "code": 7, "msg": "Invalid Configuration", "details": "mtu 12 too small"})
        );
        let e = CniError::new(ErrorCode::NotAvailable, "no free IPs", "");
        assert_eq!(
            e.to_json("1.0.0"),
            json!({"cniVersion": "1.0.0", "code": 50, "msg": "no free IPs"})
        );
    }

    #[test]
    fn display_has_message_code_and_details() {
        let e = CniError::new(ErrorCode::Io, "read stdin", "broken pipe");
        assert_eq!(e.to_string(), "read stdin (CNI error 5): broken pipe");
    }
}
