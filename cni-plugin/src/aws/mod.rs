//! AWS: the embedded EC2 limits table (max pods, ENIs per instance type), and the
//! instance metadata and EC2 API clients ipamd's eni mode uses.

pub mod ec2;
pub mod imds;

/// The limits table lives in its own crate so the kubelet can use it without the SDK.
pub use ec2_limits as limits;
