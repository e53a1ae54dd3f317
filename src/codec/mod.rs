//! Transforms: what happens to the bytes between the source and storage (compression,
//! encryption, hashing), and back again on the read path.

pub mod compress;
pub mod encryption;

use serde::{Deserialize, Serialize};

/// How the dump is compressed before it is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "algorithm", rename_all = "lowercase")]
pub enum Compression {
    Zstd { level: i32 },
    Gzip { level: i32 },
    None,
}

/// Default zstd level: measured as the best size-for-time trade-off in bench/ (see README).
pub const DEFAULT_ZSTD_LEVEL: i32 = 3;
