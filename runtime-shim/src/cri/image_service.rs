//! CRI ImageService over the image store (see `crate::image`).
