//! A fake registry that misbehaves on demand: it answers each request as a
//! test's handler says, and can go silent (accept and never answer), stop a
//! body half-way, or redirect. A real registry cannot stall when asked to,
//! so the tests of timeouts, stall reports and Ctrl-C use this one.
//!
//! ```ignore
//! #[path = "common/fake_registry.rs"]
//! mod fake_registry;
//! let fake = fake_registry::FakeRegistry::start(|_method, _path| fake_registry::Reply::Silent);
//! ```

#![allow(dead_code, unreachable_pub)]

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

/// How to answer one request.
#[derive(Debug, Clone)]
pub enum Reply {
    /// Read the request, then say nothing until the server is dropped.
    Silent,
    /// A complete answer.
    Full { status: u16, headers: Vec<(String, String)>, body: Vec<u8> },
    /// Headers announcing all of `body`, then only its first `sent` bytes,
    /// then nothing.
    Partial { headers: Vec<(String, String)>, body: Vec<u8>, sent: usize },
}

impl Reply {
    /// 200 with a JSON body of this media type.
    pub fn json(media_type: &str, body: Vec<u8>) -> Self {
        Self::Full { status: 200, headers: vec![("Content-Type".into(), media_type.into())], body }
    }

    /// A redirect to `location`.
    pub fn redirect(location: &str) -> Self {
        Self::Full { status: 307, headers: vec![("Location".into(), location.into())], body: Vec::new() }
    }

    pub fn status(status: u16) -> Self {
        Self::Full { status, headers: Vec::new(), body: Vec::new() }
    }
}

type Handler = dyn Fn(&str, &str) -> Reply + Send + Sync;

/// The server; stops (and closes every held connection) when dropped.
pub struct FakeRegistry {
    /// `127.0.0.1:PORT`.
    pub addr: String,
    stop: Arc<AtomicBool>,
    /// Requests received so far.
    requests: Arc<AtomicUsize>,
}

impl FakeRegistry {
    pub fn start(handler: impl Fn(&str, &str) -> Reply + Send + Sync + 'static) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        listener.set_nonblocking(true).expect("nonblocking");
        let stop = Arc::new(AtomicBool::new(false));
        let requests = Arc::new(AtomicUsize::new(0));
        let handler: Arc<Handler> = Arc::new(handler);
        let (stop2, requests2) = (stop.clone(), requests.clone());
        std::thread::spawn(move || {
            while !stop2.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let (handler, stop, requests) = (handler.clone(), stop2.clone(), requests2.clone());
                        std::thread::spawn(move || serve(stream, &*handler, &stop, &requests));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Self { addr, stop, requests }
    }

    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

impl Drop for FakeRegistry {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// Answers requests on one connection (keep-alive) until told to stop.
fn serve(stream: TcpStream, handler: &Handler, stop: &AtomicBool, requests: &AtomicUsize) {
    let _ = stream.set_read_timeout(Some(Duration::from_millis(50)));
    let mut reader = BufReader::new(stream.try_clone().expect("clone"));
    let mut out = stream;
    loop {
        let Some((method, path, body_len)) = read_head(&mut reader, stop) else { return };
        // Skip a request body (uploads): read what was announced.
        let mut left = body_len;
        while left > 0 && !stop.load(Ordering::SeqCst) {
            match reader.fill_buf() {
                Ok([]) => return,
                Ok(buf) => {
                    let n = buf.len().min(left);
                    reader.consume(n);
                    left -= n;
                }
                Err(_) => {}
            }
        }
        requests.fetch_add(1, Ordering::SeqCst);
        match handler(&method, &path) {
            Reply::Silent => return hold(stop),
            Reply::Full { status, headers, body } => {
                let head = head(status, &headers, body.len());
                let body = if method == "HEAD" { &[][..] } else { &body[..] };
                if out.write_all(head.as_bytes()).and_then(|()| out.write_all(body)).is_err() {
                    return;
                }
            }
            Reply::Partial { headers, body, sent } => {
                let _ = out.write_all(head(200, &headers, body.len()).as_bytes());
                let _ = out.write_all(&body[..sent.min(body.len())]);
                let _ = out.flush();
                return hold(stop);
            }
        }
    }
}

fn head(status: u16, headers: &[(String, String)], len: usize) -> String {
    let mut head = format!("HTTP/1.1 {status} X\r\nContent-Length: {len}\r\n");
    for (k, v) in headers {
        let _ = write!(head, "{k}: {v}\r\n");
    }
    head.push_str("\r\n");
    head
}

/// Keeps a connection open and silent until the server stops.
fn hold(stop: &AtomicBool) {
    while !stop.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The request line and the Content-Length of one request.
fn read_head(reader: &mut BufReader<TcpStream>, stop: &AtomicBool) -> Option<(String, String, usize)> {
    let mut lines = Vec::new();
    let mut line = String::new();
    loop {
        if stop.load(Ordering::SeqCst) {
            return None;
        }
        match reader.read_line(&mut line) {
            Ok(0) => return None,
            Ok(_) if line.ends_with('\n') => {
                let done = line.trim_end().is_empty();
                lines.push(std::mem::take(&mut line));
                if done {
                    break;
                }
            }
            Ok(_) | Err(_) => {}
        }
    }
    let mut first = lines.first()?.split_whitespace();
    let method = first.next()?.to_owned();
    let path = first.next()?.to_owned();
    let len = lines
        .iter()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case("content-length").then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    Some((method, path, len))
}
