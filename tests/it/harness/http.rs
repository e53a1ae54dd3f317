//! A fake Slack or webhook endpoint: a real HTTP server that records what it is sent.

use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How the fake Slack answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    Status(u16),
    /// Never answers (until the connection is dropped).
    Hang,
    /// Nothing listens on the port: connections are refused.
    Down,
}

/// A real local HTTP server standing in for Slack or a webhook: records every request body.
pub struct FakeHttp {
    pub port: u16,
    pub bodies: Arc<Mutex<Vec<String>>>,
}

impl FakeHttp {
    pub fn start(answer: Answer) -> FakeHttp {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let bodies = Arc::new(Mutex::new(Vec::new()));
        if answer == Answer::Down {
            drop(listener);
            return FakeHttp { port, bodies };
        }
        let b = bodies.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut stream) = conn else { continue };
                let b = b.clone();
                std::thread::spawn(move || {
                    use std::io::{Read, Write};
                    let mut data = Vec::new();
                    let mut buf = [0u8; 8192];
                    let body = loop {
                        let n = match stream.read(&mut buf) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        data.extend_from_slice(&buf[..n]);
                        let Some(end) = data.windows(4).position(|w| w == b"\r\n\r\n") else {
                            continue;
                        };
                        let head = String::from_utf8_lossy(&data[..end]).to_lowercase();
                        let len: usize = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .and_then(|v| v.trim().parse().ok())
                            .unwrap_or(0);
                        if data.len() >= end + 4 + len {
                            break String::from_utf8_lossy(&data[end + 4..end + 4 + len])
                                .into_owned();
                        }
                    };
                    b.lock().unwrap().push(body);
                    match answer {
                        Answer::Hang => std::thread::sleep(Duration::from_secs(120)),
                        Answer::Down => unreachable!("nothing listens"),
                        Answer::Status(code) => {
                            let _ = write!(
                                stream,
                                "HTTP/1.1 {code} X\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok"
                            );
                        }
                    }
                });
            }
        });
        FakeHttp { port, bodies }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/hook/T000-secret-path", self.port)
    }

    /// The JSON bodies received so far.
    pub fn messages(&self) -> Vec<serde_json::Value> {
        self.bodies
            .lock()
            .unwrap()
            .iter()
            .filter_map(|b| serde_json::from_str(b).ok())
            .collect()
    }
}

/// The raw answer (status line, headers, body) of `GET path` on the local `port`; empty
/// when nothing listens yet.
pub fn http_get(port: u16, path: &str) -> String {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return String::new();
    };
    let _ = write!(
        s,
        "GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"
    );
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}
