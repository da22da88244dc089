//! A real HTTP receiver for webhook tests: it listens on a loopback port, records every
//! request (headers and body), and answers each by a plan — a status code, or no
//! answer at all (a receiver that hangs).

#![allow(
    clippy::expect_used,
    reason = "a test helper fails its test loudly on the first surprise"
)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How the receiver answers one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Status(u16),
    /// Reads the request and never answers.
    Hang,
    /// Answers 200 with a body that starts (8 KiB) and never ends.
    EndlessBody,
    /// A scripted answer, its body written piece by piece.
    Answer(Answer),
}

/// A status, headers, and a body sent in pieces with a pause before each (a model's
/// or an agent's stream), then the connection is closed.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub pieces: Vec<Vec<u8>>,
    pub pause: Duration,
}

impl Answer {
    /// A `text/event-stream` answer, one piece per given chunk (written as is).
    pub fn event_stream<S: AsRef<str>>(pieces: &[S], pause: Duration) -> Answer {
        Answer {
            status: 200,
            headers: vec![("content-type".into(), "text/event-stream".into())],
            pieces: pieces
                .iter()
                .map(|p| p.as_ref().as_bytes().to_vec())
                .collect(),
            pause,
        }
    }

    /// A JSON answer with this status (and extra headers).
    pub fn json(status: u16, body: &serde_json::Value, headers: &[(&str, &str)]) -> Answer {
        let mut all = vec![("content-type".to_owned(), "application/json".to_owned())];
        all.extend(
            headers
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
        );
        Answer {
            status,
            headers: all,
            pieces: vec![body.to_string().into_bytes()],
            pause: Duration::ZERO,
        }
    }
}

/// A request as received.
#[derive(Debug, Clone)]
pub struct Received {
    /// The request line's target, e.g. `/v1/chat/completions`.
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub at: Instant,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("a webhook body is JSON")
    }
}

/// Writes the whole answer to the `n`th request; the flag says the receiver stops.
type Handler = dyn Fn(usize, &Received, &mut TcpStream, &AtomicBool) + Send + Sync;

#[derive(Debug)]
pub struct Receiver {
    port: u16,
    received: Arc<Mutex<Vec<Received>>>,
    stop: Arc<AtomicBool>,
}

impl Receiver {
    /// Starts a receiver that answers the `n`th request (from 0) with `plan(n)`.
    pub fn start(plan: impl Fn(usize) -> Reply + Send + Sync + 'static) -> Receiver {
        Receiver::start_raw(move |n, _, stream, stop| answer(plan(n), stream, stop))
    }

    /// Starts a receiver whose `handler` writes each whole answer itself (status line,
    /// headers, body) to the connection, which is closed after it returns.
    pub fn start_raw(
        handler: impl Fn(usize, &Received, &mut TcpStream, &AtomicBool) + Send + Sync + 'static,
    ) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").expect("a free loopback port");
        let port = listener.local_addr().expect("bound").port();
        let received = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let plan: Arc<Handler> = Arc::new(handler);
        {
            let (received, stop) = (received.clone(), stop.clone());
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        return;
                    }
                    let Ok(stream) = stream else { continue };
                    let (received, stop, plan) = (received.clone(), stop.clone(), plan.clone());
                    std::thread::spawn(move || serve(stream, &received, &stop, &*plan));
                }
            });
        }
        Receiver {
            port,
            received,
            stop,
        }
    }

    /// Always answers with this status.
    pub fn answering(status: u16) -> Receiver {
        Receiver::start(move |_| Reply::Status(status))
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/hook", self.port)
    }

    pub fn received(&self) -> Vec<Received> {
        self.received.lock().map(|r| r.clone()).unwrap_or_default()
    }

    /// Waits until at least `n` requests arrived, failing after `within`.
    pub fn wait_for(&self, n: usize, within: Duration) -> Vec<Received> {
        let deadline = Instant::now() + within;
        loop {
            let got = self.received();
            if got.len() >= n {
                return got;
            }
            assert!(
                Instant::now() < deadline,
                "{} of {n} webhook requests within {within:?}",
                got.len()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

fn hang(stop: &AtomicBool) {
    while !stop.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn serve(stream: TcpStream, received: &Mutex<Vec<Received>>, stop: &AtomicBool, plan: &Handler) {
    let mut reader = BufReader::new(match stream.try_clone() {
        Ok(clone) => clone,
        Err(_) => return,
    });
    let mut headers = Vec::new();
    let mut line = String::new();
    // Request line, then headers up to the blank line.
    if reader.read_line(&mut line).unwrap_or(0) == 0 {
        return;
    }
    let path = line
        .split_whitespace()
        .nth(1)
        .unwrap_or_default()
        .to_owned();
    loop {
        line.clear();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let trimmed = line.trim_end();
        if trimmed.is_empty() {
            break;
        }
        if let Some((name, value)) = trimmed.split_once(':') {
            headers.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
        }
    }
    let length: usize = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; length];
    if reader.read_exact(&mut body).is_err() {
        return;
    }
    let request = Received {
        path,
        headers,
        body,
        at: Instant::now(),
    };
    let index = {
        let Ok(mut all) = received.lock() else { return };
        all.push(request.clone());
        all.len() - 1
    };
    let mut stream = stream;
    plan(index, &request, &mut stream, stop);
}

fn answer(reply: Reply, stream: &mut TcpStream, stop: &AtomicBool) {
    match reply {
        Reply::Status(status) => {
            let _ = write!(
                stream,
                "HTTP/1.1 {status} X\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok"
            );
        }
        Reply::Hang => hang(stop),
        Reply::Answer(answer) => {
            let mut head = format!("HTTP/1.1 {} X\r\nconnection: close\r\n", answer.status);
            for (name, value) in &answer.headers {
                head.push_str(&format!("{name}: {value}\r\n"));
            }
            head.push_str("\r\n");
            if stream.write_all(head.as_bytes()).is_err() {
                return;
            }
            for piece in &answer.pieces {
                std::thread::sleep(answer.pause);
                if stream
                    .write_all(piece)
                    .and_then(|()| stream.flush())
                    .is_err()
                {
                    return;
                }
            }
        }
        Reply::EndlessBody => {
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\ncontent-length: 1000000000\r\n\r\n{}",
                "x".repeat(8192)
            );
            hang(stop);
        }
    }
}
