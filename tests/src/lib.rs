//! Fixtures that start the real components tests run against. Each fixture drives the
//! same `hack/` script a developer uses by hand, so there is one implementation.
pub mod cluster;
pub mod control_plane;
pub mod ec2;
pub mod fixture;
pub mod kubectl;
pub mod kubelet;
pub mod reference_node;
pub mod registry;
pub mod runtime_shim;
