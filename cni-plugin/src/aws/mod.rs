//! AWS-specific knowledge the node runtime needs without calling AWS APIs.

pub mod limits;
