//! Images: references, registry access, pulling, the on-disk store and safe layer
//! unpacking.
pub mod puller;
pub mod reference;
pub mod registry;
pub mod store;
pub mod unpack;
