//! Images: references, registry access, the on-disk store and safe layer unpacking.
pub mod reference;
pub mod unpack;
