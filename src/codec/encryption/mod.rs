//! Encryption: the client-side encryption stage, with age. On the way out it sits between
//! compression and hashing (compress → encrypt → hash → upload), so the sha256 in a manifest is
//! over the encrypted bytes as stored. On the way back it sits between the hashed stored bytes
//! and the decompressor, and age's authentication of every chunk adds its own check: only
//! authenticated plaintext is passed on.
//!
//! Invariants: a backup needs public keys only (or the passphrase); private keys are read only
//! to restore, verify and drill. No key or passphrase reaches a manifest, a log line, an error
//! message or `config` output: manifests name recipients by fingerprint.
//!
//! age's streaming encryptor and decryptor are synchronous (`std::io`). Each runs on a blocking
//! thread of its own between two channels of [`CHUNK`]-sized pieces, so the stream stays a
//! stream with bounded memory (a few chunks), and the passphrase's scrypt work never stalls the
//! async runtime.

use std::fmt;
use std::io::{self, BufRead, Read, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use age::secrecy::SecretString;
use bytes::{Buf, Bytes, BytesMut};
use serde::{Deserialize, Serialize};

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::mpsc;

use crate::codec::compress::{self, BoxRead, Chunk};
use crate::secret::Secret;

/// Key suffix of encrypted objects (`….dump.zst.age`, `….globals.sql.zst.age`).
pub const SUFFIX: &str = ".age";

/// Size of the pieces passed between the stream and the age thread.
const CHUNK: usize = 256 * 1024;

/// How much of a stored object is read to check its age header. A header holds one stanza
/// (about 120 bytes) per recipient, so this leaves room for hundreds of recipients.
const HEADER_LIMIT: u64 = 64 * 1024;

/// How a backup is encrypted, as recorded in its manifest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Scheme {
    /// To one or more age X25519 public keys.
    #[serde(rename = "age-x25519")]
    X25519,
    /// With a passphrase (age's scrypt recipient).
    #[serde(rename = "age-scrypt")]
    Scrypt,
}

impl fmt::Display for Scheme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Scheme::X25519 => "age-x25519",
            Scheme::Scrypt => "age-scrypt",
        })
    }
}

/// An age X25519 public key (`age1…`). Public: it may be shown, but manifests record only its
/// [`fingerprint`](Recipient::fingerprint).
#[derive(Clone, PartialEq, Eq)]
pub struct Recipient(age::x25519::Recipient);

impl Recipient {
    /// The first 8 bytes of the sha256 of the key's text, in hex: names the key in manifests
    /// and messages without giving it away.
    pub fn fingerprint(&self) -> String {
        fingerprint(&self.0.to_string())
    }
}

fn fingerprint(key_text: &str) -> String {
    crate::codec::hash::sha256_hex(key_text.as_bytes())[..16].to_string()
}

impl FromStr for Recipient {
    type Err = &'static str;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        age::x25519::Recipient::from_str(s).map(Recipient)
    }
}

impl fmt::Display for Recipient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl fmt::Debug for Recipient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl Serialize for Recipient {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// An age X25519 identity (private key). Its `Debug` form is redacted.
#[derive(Clone)]
pub struct Identity(age::x25519::Identity);

impl Identity {
    /// The public key that encrypts to this identity.
    pub fn recipient(&self) -> Recipient {
        Recipient(self.0.to_public())
    }
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Identity({})", self.recipient().fingerprint())
    }
}

/// Why a key file cannot be used. Messages name the file and the line, never a key.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    #[error("cannot read `{}`: {source}", .path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("line {line} of `{}` is not {expected}", .path.display())]
    Line {
        path: PathBuf,
        line: usize,
        expected: &'static str,
    },
    #[error("`{}` holds no {what}", .path.display())]
    Empty { path: PathBuf, what: &'static str },
}

const RECIPIENT_FORMAT: &str = "an age X25519 public key (age1…)";
const IDENTITY_FORMAT: &str = "an age X25519 identity (AGE-SECRET-KEY-1…)";

/// The keys of a file with one key per line; blank lines and `#` comments are skipped
/// (`age-keygen` writes its public key as a comment).
fn read_key_file<T: FromStr>(
    path: &Path,
    expected: &'static str,
    what: &'static str,
) -> Result<Vec<T>, KeyFileError> {
    let text = std::fs::read_to_string(path).map_err(|source| KeyFileError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let mut keys = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        keys.push(line.parse().map_err(|_| KeyFileError::Line {
            path: path.to_path_buf(),
            line: i + 1,
            expected,
        })?);
    }
    if keys.is_empty() {
        return Err(KeyFileError::Empty {
            path: path.to_path_buf(),
            what,
        });
    }
    Ok(keys)
}

/// Reads a recipients file: one `age1…` public key per line.
pub fn read_recipients_file(path: &Path) -> Result<Vec<Recipient>, KeyFileError> {
    read_key_file(path, RECIPIENT_FORMAT, "recipient")
}

/// Reads an identity file as `age-keygen` writes it: `AGE-SECRET-KEY-1…` lines.
pub fn read_identity_file(path: &Path) -> Result<Vec<Identity>, KeyFileError> {
    let keys: Vec<age::x25519::Identity> = read_key_file(path, IDENTITY_FORMAT, "identity")?;
    Ok(keys.into_iter().map(Identity).collect())
}

/// Parses configured recipients; an error names the entry's position (1-based) only, since a
/// secret key pasted by mistake must not be echoed.
pub fn parse_recipients(texts: &[String]) -> Result<Vec<Recipient>, String> {
    texts
        .iter()
        .enumerate()
        .map(|(i, t)| {
            t.trim().parse().map_err(|_| {
                if t.trim().starts_with("AGE-SECRET-KEY-") {
                    format!(
                        "entry {} is an age identity (a private key), not a recipient: configure its public key (`age-keygen -y`) and keep the identity away from the backup side",
                        i + 1
                    )
                } else {
                    format!("entry {} is not {RECIPIENT_FORMAT}", i + 1)
                }
            })
        })
        .collect()
}

/// How a backup is encrypted. Recipients are named by fingerprint only (see
/// [`Recipient::fingerprint`]), never by key.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct EncryptionRecord {
    pub scheme: Scheme,
    /// Fingerprints of the age recipients (empty for a passphrase).
    #[serde(default)]
    pub recipients: Vec<String>,
}

/// The `[encryption]` section, validated: what new backups are encrypted to, and what decrypts
/// encrypted ones. The default encrypts nothing and decrypts nothing.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Encryption {
    /// Public keys new backups are encrypted to.
    pub recipients: Vec<Recipient>,
    /// Passphrase new backups are encrypted with (instead of recipients); it also decrypts them.
    pub passphrase: Option<Secret>,
    /// Where [`Encryption::identities`] were read from.
    pub identity_file: Option<PathBuf>,
    /// Private keys that decrypt backups encrypted to recipients.
    #[serde(skip)]
    pub identities: Vec<Identity>,
    /// How the identity file was named (`encryption.identity_file` or `--identity`), for
    /// messages.
    #[serde(skip)]
    identity_origin: String,
}

#[cfg(test)]
impl Encryption {
    /// A fresh key pair: encrypts to its recipient and decrypts with its identity.
    pub(crate) fn generated_for_tests() -> Encryption {
        let id = Identity(age::x25519::Identity::generate());
        Encryption {
            recipients: vec![id.recipient()],
            identities: vec![id],
            identity_origin: "a test key".into(),
            ..Encryption::default()
        }
    }
}

/// Why a backup cannot be decrypted. Key problems name what to configure; none quotes a key.
#[derive(Debug, Clone, thiserror::Error)]
pub enum DecryptError {
    #[error("it is encrypted to age recipient(s) {fingerprints} and no identity is configured to decrypt it: pass --identity FILE, or set encryption.identity_file (PGSIDECAR_ENCRYPTION__IDENTITY_FILE)")]
    NoIdentity { fingerprints: String },
    #[error("it is encrypted with a passphrase and none is configured: set encryption.passphrase_file (PGSIDECAR_ENCRYPTION__PASSPHRASE_FILE) or encryption.passphrase (PGSIDECAR_ENCRYPTION__PASSPHRASE)")]
    NoPassphrase,
    #[error("the identity from {origin} does not decrypt it: it is encrypted to age recipient(s) {wanted}, and the identity file holds the key(s) of {have}")]
    WrongIdentity {
        origin: String,
        wanted: String,
        have: String,
    },
    #[error("the configured passphrase (encryption.passphrase) does not decrypt it")]
    WrongPassphrase,
    /// The stored bytes are not a valid age file or fail its authentication.
    #[error("decryption failed: {0}")]
    Failed(String),
}

impl DecryptError {
    /// Whether the configured keys are the problem (rather than the stored bytes).
    pub fn is_key_problem(&self) -> bool {
        !matches!(self, DecryptError::Failed(_))
    }
}

/// The error inside `e` if the decryption stage produced it.
pub fn as_decrypt_error(e: &io::Error) -> Option<&DecryptError> {
    e.get_ref()?.downcast_ref::<DecryptError>()
}

/// What encrypts new backups, built on the age thread (the passphrase's scrypt work takes
/// about a second).
enum Seal {
    Recipients(Vec<age::x25519::Recipient>),
    Passphrase(SecretString),
}

impl Seal {
    fn encryptor(self) -> io::Result<age::Encryptor> {
        match self {
            Seal::Recipients(r) => {
                age::Encryptor::with_recipients(r.iter().map(|r| r as &dyn age::Recipient))
                    .map_err(|e| io::Error::other(format!("cannot encrypt: {e}")))
            }
            Seal::Passphrase(p) => Ok(age::Encryptor::with_user_passphrase(p)),
        }
    }
}

/// What opens a backup, built on the age thread (scrypt identities calibrate their work limit
/// when created).
#[derive(Clone)]
enum Opener {
    Identities(Vec<age::x25519::Identity>),
    Passphrase(SecretString),
}

impl Opener {
    fn identities(self) -> Vec<Box<dyn age::Identity>> {
        match self {
            Opener::Identities(ids) => ids
                .into_iter()
                .map(|i| Box::new(i) as Box<dyn age::Identity>)
                .collect(),
            Opener::Passphrase(p) => vec![Box::new(age::scrypt::Identity::new(p))],
        }
    }

    /// Reads the header of the age file `input` and unlocks it; `wrong` is the error for keys
    /// that do not match.
    fn open<R: BufRead>(
        self,
        input: R,
        wrong: &DecryptError,
    ) -> Result<age::stream::StreamReader<R>, DecryptError> {
        let scrypt = matches!(self, Opener::Passphrase(_));
        let ids = self.identities();
        age::Decryptor::new_buffered(input)
            .and_then(|d| d.decrypt(ids.iter().map(|i| &**i)))
            .map_err(|e| match e {
                age::DecryptError::NoMatchingKeys => wrong.clone(),
                // scrypt's stanza does not authenticate under another passphrase.
                age::DecryptError::DecryptionFailed if scrypt => wrong.clone(),
                age::DecryptError::Io(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                    DecryptError::Failed("the age header is incomplete".into())
                }
                age::DecryptError::Io(e) => DecryptError::Failed(e.to_string()),
                other => DecryptError::Failed(format!("age header: {other}")),
            })
    }
}

impl Encryption {
    /// Encryption to `recipients`, or with `passphrase`; the two exclude each other.
    pub fn new(recipients: Vec<Recipient>, passphrase: Option<Secret>) -> Result<Self, String> {
        if !recipients.is_empty() && passphrase.is_some() {
            return Err("set either recipients (age public keys) or a passphrase, not both".into());
        }
        Ok(Encryption {
            recipients,
            passphrase,
            ..Encryption::default()
        })
    }

    /// This encryption with the identities of the file `path` (replacing any read before);
    /// `origin` names where the path came from in messages (`--identity`).
    pub fn with_identity_file(mut self, path: &Path, origin: &str) -> Result<Self, KeyFileError> {
        self.identities = read_identity_file(path)?;
        self.identity_file = Some(path.to_path_buf());
        self.identity_origin = format!("{origin} `{}`", path.display());
        Ok(self)
    }

    /// How new backups are encrypted; `None`: they are stored unencrypted.
    pub fn scheme(&self) -> Option<Scheme> {
        if !self.recipients.is_empty() {
            Some(Scheme::X25519)
        } else if self.passphrase.is_some() {
            Some(Scheme::Scrypt)
        } else {
            None
        }
    }

    /// What a new backup's manifest records: the scheme and the recipients' fingerprints.
    pub fn record(&self) -> Option<EncryptionRecord> {
        Some(EncryptionRecord {
            scheme: self.scheme()?,
            recipients: self.recipients.iter().map(Recipient::fingerprint).collect(),
        })
    }

    fn seal(&self) -> Option<Seal> {
        match self.scheme()? {
            Scheme::X25519 => Some(Seal::Recipients(
                self.recipients.iter().map(|r| r.0.clone()).collect(),
            )),
            Scheme::Scrypt => self
                .passphrase
                .as_ref()
                .map(|p| Seal::Passphrase(SecretString::from(p.expose().to_string()))),
        }
    }

    /// `input` encrypted as configured (or unchanged when backups are not encrypted). An error
    /// of `input` reaches the reader as it is (so a failed pg_dump is reported as such), and
    /// the stream ends cleanly only after age's final chunk.
    pub fn encrypt(&self, input: BoxRead) -> BoxRead {
        let Some(seal) = self.seal() else {
            return input;
        };
        let mut chunks = compress::read_chunks(input, CHUNK);
        let (tx, rx) = mpsc::channel::<Chunk>(1);
        let finished = Arc::new(AtomicBool::new(false));
        let done = finished.clone();
        tokio::task::spawn_blocking(move || {
            let result = (|| {
                let mut writer = seal
                    .encryptor()?
                    .wrap_output(ChannelWriter::new(tx.clone()))?;
                loop {
                    match chunks.blocking_recv() {
                        Some(Ok(data)) => {
                            writer.write_all(&data)?;
                            if data.len() < CHUNK {
                                break;
                            }
                        }
                        Some(Err(e)) => return Err(e),
                        None => {
                            return Err(io::Error::other(
                                "the stream to encrypt stopped before its end",
                            ))
                        }
                    }
                }
                // Writes age's final chunk: without it the file would not decrypt.
                writer.finish()?.flush()
            })();
            match result {
                Ok(()) => done.store(true, Ordering::Release),
                Err(e) => {
                    let _ = tx.blocking_send(Err(e));
                }
            }
        });
        Box::pin(compress::reader_from(rx, finished))
    }

    /// `data` encrypted as configured (or unchanged), for small objects.
    #[cfg(test)]
    pub(crate) async fn encrypt_bytes(&self, data: Vec<u8>) -> io::Result<Vec<u8>> {
        let Some(seal) = self.seal() else {
            return Ok(data);
        };
        tokio::task::spawn_blocking(move || {
            let mut out = seal.encryptor()?.wrap_output(Vec::new())?;
            out.write_all(&data)?;
            out.finish()
        })
        .await
        .map_err(io::Error::other)?
    }

    /// What opens a backup recorded with `record`, or which key is missing.
    fn opener(&self, record: &EncryptionRecord) -> Result<Opener, DecryptError> {
        match record.scheme {
            Scheme::X25519 if self.identities.is_empty() => Err(DecryptError::NoIdentity {
                fingerprints: record.recipients.join(", "),
            }),
            Scheme::X25519 => Ok(Opener::Identities(
                self.identities.iter().map(|i| i.0.clone()).collect(),
            )),
            Scheme::Scrypt => match &self.passphrase {
                None => Err(DecryptError::NoPassphrase),
                Some(p) => Ok(Opener::Passphrase(SecretString::from(
                    p.expose().to_string(),
                ))),
            },
        }
    }

    fn wrong_key(&self, record: &EncryptionRecord) -> DecryptError {
        match record.scheme {
            Scheme::X25519 => DecryptError::WrongIdentity {
                origin: self.identity_origin.clone(),
                wanted: record.recipients.join(", "),
                have: self
                    .identities
                    .iter()
                    .map(|i| i.recipient().fingerprint())
                    .collect::<Vec<_>>()
                    .join(", "),
            },
            Scheme::Scrypt => DecryptError::WrongPassphrase,
        }
    }

    /// Checks without reading any stored bytes that a key for `record` is configured.
    pub fn check_keys(&self, record: &EncryptionRecord) -> Result<(), DecryptError> {
        self.opener(record).map(drop)
    }

    /// Checks that the configured keys open the age header at the start of `head` (only the
    /// header is read), so a wrong key is found before anything is changed.
    pub async fn check_header(
        &self,
        record: &EncryptionRecord,
        head: impl AsyncRead + Send + Unpin,
    ) -> Result<(), DecryptError> {
        let opener = self.opener(record)?;
        let wrong = self.wrong_key(record);
        let mut buf = Vec::new();
        head.take(HEADER_LIMIT)
            .read_to_end(&mut buf)
            .await
            .map_err(|e| DecryptError::Failed(format!("cannot read the age header: {e}")))?;
        tokio::task::spawn_blocking(move || opener.open(&buf[..], &wrong).map(drop))
            .await
            .map_err(|e| DecryptError::Failed(e.to_string()))?
    }

    /// `stored` decrypted, as a stream; fails at once when no key for `record` is configured.
    /// A wrong key, a damaged header and any chunk that fails age's authentication end the
    /// stream with an `io::Error` carrying a [`DecryptError`] (see [`as_decrypt_error`]); only
    /// authenticated plaintext is passed on, and the stream ends cleanly only after age's
    /// final chunk.
    pub fn decrypt(
        &self,
        record: &EncryptionRecord,
        stored: impl AsyncRead + Send + Unpin + 'static,
    ) -> Result<BoxRead, DecryptError> {
        let opener = self.opener(record)?;
        let wrong = self.wrong_key(record);
        let chunks = compress::read_chunks(stored, CHUNK);
        let (tx, rx) = mpsc::channel::<Chunk>(1);
        let finished = Arc::new(AtomicBool::new(false));
        let done = finished.clone();
        tokio::task::spawn_blocking(move || {
            let result = (|| {
                let mut plain = opener
                    .open(ChannelReader::new(chunks), &wrong)
                    .map_err(io::Error::other)?;
                loop {
                    let mut buf = BytesMut::zeroed(CHUNK);
                    let n = read_full(&mut plain, &mut buf).map_err(|e| match e.kind() {
                        io::ErrorKind::InvalidData => io::Error::other(DecryptError::Failed(
                            format!("the stored bytes fail age's authentication ({e})"),
                        )),
                        io::ErrorKind::UnexpectedEof => io::Error::other(DecryptError::Failed(
                            "the age file is truncated".into(),
                        )),
                        _ => e,
                    })?;
                    buf.truncate(n);
                    if n > 0 && tx.blocking_send(Ok(buf.freeze())).is_err() {
                        // The reader is gone: nobody is left to tell.
                        return Ok(());
                    }
                    if n < CHUNK {
                        return Ok(());
                    }
                }
            })();
            match result {
                Ok(()) => done.store(true, Ordering::Release),
                Err(e) => {
                    let _ = tx.blocking_send(Err(e));
                }
            }
        });
        Ok(Box::pin(compress::reader_from(rx, finished)))
    }

    /// A small age file decrypted whole.
    #[cfg(test)]
    pub(crate) async fn decrypt_bytes(
        &self,
        record: &EncryptionRecord,
        data: Bytes,
    ) -> Result<Vec<u8>, DecryptError> {
        let opener = self.opener(record)?;
        let wrong = self.wrong_key(record);
        tokio::task::spawn_blocking(move || {
            let mut plain = opener.open(&data[..], &wrong)?;
            let mut out = Vec::new();
            plain
                .read_to_end(&mut out)
                .map_err(|e| DecryptError::Failed(e.to_string()))?;
            Ok(out)
        })
        .await
        .map_err(|e| DecryptError::Failed(e.to_string()))?
    }
}

/// Reads until `buf` is full or the input ends; returns the bytes read.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// The age thread's output: written bytes go out in [`CHUNK`]-sized pieces.
struct ChannelWriter {
    tx: mpsc::Sender<Chunk>,
    buf: BytesMut,
}

impl ChannelWriter {
    fn new(tx: mpsc::Sender<Chunk>) -> Self {
        ChannelWriter {
            tx,
            buf: BytesMut::new(),
        }
    }

    fn send(&mut self) -> io::Result<()> {
        let piece = self.buf.split().freeze();
        self.tx.blocking_send(Ok(piece)).map_err(|_| {
            io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the reader of the encrypted stream is gone",
            )
        })
    }
}

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK {
            self.send()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            self.send()
        }
    }
}

/// The age thread's input: the chunks of [`compress::read_chunks`] as a `BufRead`.
struct ChannelReader {
    rx: mpsc::Receiver<Chunk>,
    current: Bytes,
    /// The last chunk (shorter than [`CHUNK`]) has arrived.
    ended: bool,
}

impl ChannelReader {
    fn new(rx: mpsc::Receiver<Chunk>) -> Self {
        ChannelReader {
            rx,
            current: Bytes::new(),
            ended: false,
        }
    }
}

impl BufRead for ChannelReader {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        while self.current.is_empty() && !self.ended {
            match self.rx.blocking_recv() {
                Some(Ok(chunk)) => {
                    self.ended = chunk.len() < CHUNK;
                    self.current = chunk;
                }
                Some(Err(e)) => {
                    self.ended = true;
                    return Err(e);
                }
                None => {
                    self.ended = true;
                    return Err(io::Error::other("the stored stream stopped before its end"));
                }
            }
        }
        Ok(&self.current)
    }

    fn consume(&mut self, n: usize) {
        self.current.advance(n);
    }
}

impl Read for ChannelReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let available = self.fill_buf()?;
        let n = available.len().min(out.len());
        out[..n].copy_from_slice(&available[..n]);
        self.consume(n);
        Ok(n)
    }
}

#[cfg(test)]
mod tests;
