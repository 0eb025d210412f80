//! The CNI protocol (spec 1.1, with results readable by 1.0 and 0.4 runtimes):
//! what the runtime hands the plugin (environment, network configuration) and what the
//! plugin prints back (results, version info, errors). No networking happens here.

pub mod args;
pub mod config;
pub mod error;
pub mod result;

pub use args::{CniArgs, Command, K8sArgs};
pub use config::NetConf;
pub use error::{CniError, ErrorCode};
pub use result::{CniResult, Dns, Interface, IpConfig, Route, VersionResult};

/// The newest spec version this plugin speaks; used when the input names none we can trust.
pub const CURRENT_VERSION: &str = "1.1.0";

/// Every spec version whose results we can produce, oldest first, as VERSION reports them.
/// 0.4.0 is the oldest with CHECK and `prevResult` on DEL, which the runtime relies on.
pub const SUPPORTED_VERSIONS: [&str; 3] = ["0.4.0", "1.0.0", "1.1.0"];

/// Fails with code 1 (incompatible version) unless `version` is one of [`SUPPORTED_VERSIONS`].
pub fn check_version(version: &str) -> Result<(), CniError> {
    if SUPPORTED_VERSIONS.contains(&version) {
        Ok(())
    } else {
        Err(CniError::new(
            ErrorCode::IncompatibleVersion,
            format!("unsupported cniVersion {version:?}"),
            format!(
                "this plugin supports cniVersion {}; set one of them in the network configuration",
                SUPPORTED_VERSIONS.join(", ")
            ),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_versions_pass_and_others_are_code_1() {
        for v in SUPPORTED_VERSIONS {
            check_version(v).unwrap();
        }
        for v in ["0.3.1", "2.0.0", "", "1.1"] {
            assert_eq!(check_version(v).unwrap_err().code, 1, "{v:?}");
        }
    }
}
