//! Proxies between the sidecar and its servers: a TCP proxy that slows, freezes or cuts
//! traffic, and an HTTP proxy in front of S3 that injects faults.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// A TCP proxy the test controls: it can slow traffic towards the server or cut it.
pub struct Proxy {
    pub port: u16,
    cut: Arc<AtomicBool>,
    /// Keeps the connections open but forwards nothing: a black hole, no FIN or RST.
    frozen: Arc<AtomicBool>,
    /// Bytes per second allowed towards the server; 0 means unlimited.
    rate: Arc<AtomicU64>,
}

impl Proxy {
    pub fn start(target: u16) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let cut = Arc::new(AtomicBool::new(false));
        let frozen = Arc::new(AtomicBool::new(false));
        let rate = Arc::new(AtomicU64::new(0));
        let (c, f, r) = (cut.clone(), frozen.clone(), rate.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(client) = conn else { continue };
                if c.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let Ok(server) = TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], target)))
                else {
                    continue;
                };
                let link = Link {
                    cut: c.clone(),
                    frozen: f.clone(),
                    rate: r.clone(),
                };
                pump(
                    client.try_clone().unwrap(),
                    server.try_clone().unwrap(),
                    link.clone(),
                );
                let back = Link {
                    rate: Arc::new(AtomicU64::new(0)),
                    ..link
                };
                pump(server, client, back);
            }
        });
        Proxy {
            port,
            cut,
            frozen,
            rate,
        }
    }

    /// Stops forwarding in both directions without closing anything, until [`Proxy::thaw`].
    pub fn freeze(&self) {
        self.frozen.store(true, Ordering::SeqCst);
    }

    pub fn thaw(&self) {
        self.frozen.store(false, Ordering::SeqCst);
    }

    /// Drops every connection and refuses new ones until [`Proxy::restore`].
    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
    }

    pub fn restore(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }

    /// Limits traffic towards the server to `bytes_per_sec` (0: unlimited).
    pub fn throttle(&self, bytes_per_sec: u64) {
        self.rate.store(bytes_per_sec, Ordering::SeqCst);
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

/// What one direction of a proxied connection obeys.
#[derive(Clone)]
struct Link {
    cut: Arc<AtomicBool>,
    frozen: Arc<AtomicBool>,
    /// Bytes per second; 0 means unlimited.
    rate: Arc<AtomicU64>,
}

fn pump(mut from: TcpStream, mut to: TcpStream, link: Link) {
    use std::io::{Read, Write};
    std::thread::spawn(move || {
        from.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            if link.cut.load(Ordering::SeqCst) {
                break;
            }
            if link.frozen.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
            let n = match from.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    continue
                }
                Err(_) => break,
            };
            if to.write_all(&buf[..n]).is_err() {
                break;
            }
            let r = link.rate.load(Ordering::SeqCst);
            if r > 0 {
                std::thread::sleep(Duration::from_secs_f64(n as f64 / r as f64));
            }
        }
        let _ = from.shutdown(std::net::Shutdown::Both);
        let _ = to.shutdown(std::net::Shutdown::Both);
    });
}

/// What [`HttpFaultProxy`] injects.
#[derive(Clone, Copy, Debug)]
pub enum Fault {
    /// The first `count` UploadPart requests are answered with `status` and the S3 error
    /// `code` (500 InternalError, 503 SlowDown).
    Parts {
        count: u64,
        status: u16,
        code: &'static str,
    },
    /// Every CompleteMultipartUpload is answered 200 OK with an `<Error>` body, as S3 does
    /// when a completion fails after it started answering.
    CompleteErrorBody,
    /// Every DeleteObject is answered 403 AccessDenied, as S3 answers a role whose bucket
    /// policy denies `s3:DeleteObject`.
    Deletes,
}

/// An HTTP proxy in front of S3 that answers some requests itself with an injected fault and
/// forwards everything else (one request per connection).
pub struct HttpFaultProxy {
    pub port: u16,
    /// UploadPart requests answered with 500 so far.
    pub injected: Arc<AtomicU64>,
}

impl HttpFaultProxy {
    pub fn with_fault(target: u16, fault: Fault) -> HttpFaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let injected = Arc::new(AtomicU64::new(0));
        let inj = injected.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(client) = conn else { continue };
                let inj = inj.clone();
                std::thread::spawn(move || {
                    let _ = http_fault_one(client, target, fault, &inj);
                });
            }
        });
        HttpFaultProxy { port, injected }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

fn http_fault_one(
    mut client: TcpStream,
    target: u16,
    fault: Fault,
    injected: &AtomicU64,
) -> std::io::Result<()> {
    use std::io::{Read, Write};
    let mut data = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let end = loop {
        let n = client.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        data.extend_from_slice(&buf[..n]);
        if let Some(end) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            break end;
        }
    };
    let head = String::from_utf8_lossy(&data[..end]).into_owned();
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())
                .flatten()
        })
        .unwrap_or(0);
    while data.len() < end + 4 + len {
        let n = client.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        data.extend_from_slice(&buf[..n]);
    }
    let request_line = head.lines().next().unwrap_or_default();
    let is_upload_part = request_line.starts_with("PUT ")
        && request_line.contains("partNumber=")
        && request_line.contains("uploadId=");
    let is_complete = request_line.starts_with("POST ")
        && request_line.contains("uploadId=")
        && !request_line.contains("partNumber=");
    let is_delete_object =
        request_line.starts_with("DELETE ") && !request_line.contains("uploadId=");
    let answer = |client: &mut TcpStream, status: u16, code: &str| {
        let body = format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\
             <Error><Code>{code}</Code><Message>injected by the test</Message></Error>"
        );
        write!(
            client,
            "HTTP/1.1 {status} Injected\r\ncontent-type: application/xml\r\n\
             content-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )
    };
    match fault {
        Fault::Parts {
            count,
            status,
            code,
        } if is_upload_part => {
            if injected.fetch_add(1, Ordering::SeqCst) < count {
                return answer(&mut client, status, code);
            }
            injected.fetch_sub(1, Ordering::SeqCst);
        }
        Fault::CompleteErrorBody if is_complete => {
            injected.fetch_add(1, Ordering::SeqCst);
            return answer(&mut client, 200, "InternalError");
        }
        Fault::Deletes if is_delete_object => {
            injected.fetch_add(1, Ordering::SeqCst);
            return answer(&mut client, 403, "AccessDenied");
        }
        _ => {}
    }
    // Forward with `Connection: close`, so the server's response ends at EOF.
    let mut out = String::new();
    for line in head.lines() {
        if !line.to_ascii_lowercase().starts_with("connection:") {
            out.push_str(line);
            out.push_str("\r\n");
        }
    }
    out.push_str("connection: close\r\n\r\n");
    let mut server = TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], target)))?;
    server.write_all(out.as_bytes())?;
    server.write_all(&data[end + 4..end + 4 + len])?;
    std::io::copy(&mut server, &mut client)?;
    let _ = client.shutdown(std::net::Shutdown::Both);
    Ok(())
}
