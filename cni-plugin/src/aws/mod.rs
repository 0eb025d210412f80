//! AWS: the embedded EC2 limits table (max pods, ENIs per instance type), and the
//! instance metadata and EC2 API clients ipamd's eni mode uses.

pub mod ec2;
pub mod imds;
pub mod limits;
