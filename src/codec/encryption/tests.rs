//! Encryption tests: round trips, named key errors, and failures that reach the reader.

use super::*;
use tokio::io::AsyncReadExt;

fn keypair() -> (Identity, Recipient) {
    let id = Identity(age::x25519::Identity::generate());
    let r = id.recipient();
    (id, r)
}

fn reading(id: Identity) -> Encryption {
    Encryption {
        identities: vec![id],
        identity_origin: "--identity `test`".into(),
        ..Encryption::default()
    }
}

async fn read_all(mut r: BoxRead) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    r.read_to_end(&mut out).await?;
    Ok(out)
}

/// Bytes that do not repeat within a chunk, several chunks long.
fn data(len: usize) -> Vec<u8> {
    (0..len as u64)
        .map(|i| (i.wrapping_mul(2654435761) >> 7) as u8)
        .collect()
}

#[tokio::test]
async fn a_stream_round_trips_through_age() {
    let (id, r) = keypair();
    let enc = Encryption::new(vec![r.clone()], None).unwrap();
    let record = enc.record().unwrap();
    assert_eq!(record.scheme, Scheme::X25519);
    assert_eq!(record.recipients, vec![r.fingerprint()]);
    assert_eq!(r.fingerprint().len(), 16);
    for len in [0, 17, CHUNK, 3 * CHUNK + 5] {
        let plain = data(len);
        let stored = read_all(enc.encrypt(Box::pin(io::Cursor::new(plain.clone()))))
            .await
            .unwrap();
        assert!(stored.starts_with(b"age-encryption.org/v1\n"), "{len}");
        assert!(!stored.windows(16).any(|w| len > 16 && w == &plain[..16]));
        let back = reading(id.clone())
            .decrypt(&record, io::Cursor::new(stored.clone()))
            .unwrap();
        assert_eq!(read_all(back).await.unwrap(), plain, "{len}");
        reading(id.clone())
            .check_header(&record, &stored[..])
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn missing_and_wrong_keys_are_named() {
    let (_, r) = keypair();
    let (other, _) = keypair();
    let enc = Encryption::new(vec![r.clone()], None).unwrap();
    let record = enc.record().unwrap();
    let stored = enc.encrypt_bytes(b"secret rows".to_vec()).await.unwrap();

    let err = Encryption::default().check_keys(&record).unwrap_err();
    assert!(
        err.to_string().contains("--identity FILE") && err.to_string().contains(&r.fingerprint()),
        "{err}"
    );
    let err = reading(other.clone())
        .check_header(&record, &stored[..])
        .await
        .unwrap_err();
    assert!(
        matches!(err, DecryptError::WrongIdentity { .. })
            && err.to_string().contains(&other.recipient().fingerprint()),
        "{err}"
    );
    let mut out = Vec::new();
    let e = reading(other)
        .decrypt(&record, io::Cursor::new(stored))
        .unwrap()
        .read_to_end(&mut out)
        .await
        .unwrap_err();
    assert!(
        matches!(
            as_decrypt_error(&e),
            Some(DecryptError::WrongIdentity { .. })
        ),
        "{e}"
    );
    assert!(out.is_empty());
}

#[tokio::test]
async fn a_flipped_byte_fails_authentication_and_nothing_after_it_is_released() {
    let (id, r) = keypair();
    let enc = Encryption::new(vec![r], None).unwrap();
    let record = enc.record().unwrap();
    let plain = data(4 * CHUNK);
    let mut stored = read_all(enc.encrypt(Box::pin(io::Cursor::new(plain.clone()))))
        .await
        .unwrap();
    let mid = stored.len() / 2;
    stored[mid] ^= 0x01;
    let mut out = Vec::new();
    let e = reading(id)
        .decrypt(&record, io::Cursor::new(stored))
        .unwrap()
        .read_to_end(&mut out)
        .await
        .unwrap_err();
    assert!(
        matches!(as_decrypt_error(&e), Some(DecryptError::Failed(_))),
        "{e}"
    );
    assert!(out.len() < plain.len() / 2 + CHUNK, "{}", out.len());
    assert_eq!(out[..], plain[..out.len()]);
}

#[tokio::test]
async fn a_passphrase_round_trips_and_a_wrong_one_is_named() {
    let enc = Encryption::new(vec![], Some(Secret::new("correct horse"))).unwrap();
    let record = enc.record().unwrap();
    assert_eq!(record.scheme, Scheme::Scrypt);
    assert!(record.recipients.is_empty());
    let stored = enc.encrypt_bytes(b"roles".to_vec()).await.unwrap();
    assert_eq!(
        enc.decrypt_bytes(&record, stored.clone().into())
            .await
            .unwrap(),
        b"roles"
    );
    let wrong = Encryption::new(vec![], Some(Secret::new("battery staple"))).unwrap();
    let err = wrong
        .decrypt_bytes(&record, stored.into())
        .await
        .unwrap_err();
    assert!(matches!(err, DecryptError::WrongPassphrase), "{err}");
    assert!(matches!(
        Encryption::default().check_keys(&record),
        Err(DecryptError::NoPassphrase)
    ));
}

#[tokio::test]
async fn an_input_error_reaches_the_reader_unchanged() {
    struct Failing;
    impl AsyncRead for Failing {
        fn poll_read(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            _: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<io::Result<()>> {
            std::task::Poll::Ready(Err(io::Error::other("boom")))
        }
    }
    let (_, r) = keypair();
    let enc = Encryption::new(vec![r], None).unwrap();
    let err = read_all(enc.encrypt(Box::pin(Failing))).await.unwrap_err();
    assert_eq!(err.to_string(), "boom");
}

#[test]
fn key_files_skip_comments_and_name_bad_lines() {
    let dir = tempfile::tempdir().unwrap();
    let (id, r) = keypair();
    let path = dir.path().join("key.txt");
    std::fs::write(
        &path,
        format!(
            "# created: 2026-11-24\n# public key: {r}\n{}\n",
            age::secrecy::ExposeSecret::expose_secret(&id.0.to_string())
        ),
    )
    .unwrap();
    let ids = read_identity_file(&path).unwrap();
    assert_eq!(ids[0].recipient(), r);
    assert!(!format!("{:?}", ids[0]).contains("AGE-SECRET-KEY"));

    std::fs::write(&path, format!("{r}\n\n# old key\nage1nonsense\n")).unwrap();
    let err = read_recipients_file(&path).unwrap_err().to_string();
    assert!(err.contains("line 4"), "{err}");
    std::fs::write(&path, "# nothing\n").unwrap();
    let err = read_recipients_file(&path).unwrap_err().to_string();
    assert!(err.contains("holds no recipient"), "{err}");

    let secret = age::secrecy::ExposeSecret::expose_secret(&id.0.to_string()).to_string();
    let err = parse_recipients(&[r.to_string(), secret.clone()]).unwrap_err();
    assert!(err.contains("entry 2") && !err.contains(&secret), "{err}");
}
