//! Transforms: what happens to the bytes between the source and storage (compression,
//! encryption, hashing), and back again on the read path.

pub mod compress;
pub mod encryption;
pub mod hash;

use std::io;

use tokio::io::{AsyncRead, AsyncReadExt};

use compress::BoxRead;
use encryption::{DecryptError, Encryption, EncryptionRecord};

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

/// The transforms of one backup, both ways: [`Codec::encode`] compresses then encrypts (when
/// keys are configured), [`Codec::decode`] decrypts (when the backup is encrypted) then
/// decompresses. Dumps use the streams; globals, which are small, the bytes.
pub struct Codec<'a> {
    pub compression: Compression,
    pub encryption: &'a Encryption,
}

impl Codec<'_> {
    /// The stored form of `raw`.
    pub fn encode(&self, raw: impl AsyncRead + Send + 'static) -> BoxRead {
        self.encryption
            .encrypt(compress::compress(raw, self.compression))
    }

    /// The stored form of `raw`, in memory.
    pub async fn encode_bytes(&self, raw: Vec<u8>) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        self.encode(io::Cursor::new(raw))
            .read_to_end(&mut out)
            .await?;
        Ok(out)
    }

    /// The raw bytes of `stored`; `record` is the backup's encryption, from its manifest.
    /// Fails at once when the keys cannot open it; later failures come as read errors
    /// (see [`encryption::as_decrypt_error`]).
    pub fn decode(
        &self,
        record: Option<&EncryptionRecord>,
        stored: impl AsyncRead + Send + Unpin + 'static,
    ) -> Result<BoxRead, DecryptError> {
        let plain: BoxRead = match record {
            None => Box::pin(stored),
            Some(record) => self.encryption.decrypt(record, stored)?,
        };
        Ok(compress::decompress(plain, self.compression))
    }

    /// The raw bytes of `stored`, in memory.
    pub async fn decode_bytes(
        &self,
        record: Option<&EncryptionRecord>,
        stored: Vec<u8>,
    ) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        self.decode(record, io::Cursor::new(stored))
            .map_err(io::Error::other)?
            .read_to_end(&mut out)
            .await?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn decode_undoes_encode_for_every_compression_with_and_without_keys() {
        let keyed = Encryption::generated_for_tests();
        let plain = Encryption::default();
        let raw: Vec<u8> = (0..3_000_000u32)
            .flat_map(|i| (i % 7).to_le_bytes())
            .collect();
        for compression in [
            Compression::Zstd { level: 3 },
            Compression::Gzip { level: 6 },
            Compression::None,
        ] {
            for encryption in [&plain, &keyed] {
                let codec = Codec {
                    compression,
                    encryption,
                };
                let stored = codec.encode_bytes(raw.clone()).await.unwrap();
                let transformed = compression != Compression::None || encryption.scheme().is_some();
                assert_eq!(stored != raw, transformed, "{compression:?}");
                let record = encryption.record();
                let back = codec.decode_bytes(record.as_ref(), stored).await.unwrap();
                assert!(back == raw, "{compression:?} {:?}", record.is_some());
            }
        }
    }
}
