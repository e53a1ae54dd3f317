//! Transforms: what happens to the bytes between the source and storage (compression,
//! encryption, hashing), and back again on the read path.

pub mod compress;
pub mod encryption;
