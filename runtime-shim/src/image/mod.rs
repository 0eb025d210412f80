//! Images: pulling from OCI/Docker registries, the content store, and unpacking layers
//! into per-container overlay root filesystems.
