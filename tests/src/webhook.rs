//! A webhook receiver on loopback, for the controllers' notifications: it records every POST
//! (its signature header and JSON body) and refuses the first delivery of each event with a
//! 503, so that the sender's retry is exercised too.

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::{Arc, Mutex};

use serde_json::Value;

/// One delivery as received.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub signature: Option<String>,
    pub body: Vec<u8>,
    pub event: Value,
    /// Whether it was answered 200 (the first of each event id is refused).
    pub accepted: bool,
}

/// The receiver: serves until the process ends.
pub struct Receiver {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Delivery>>>,
}

impl Receiver {
    pub fn start() -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let seen: Arc<Mutex<Vec<Delivery>>> = Arc::default();
        let s = seen.clone();
        std::thread::spawn(move || {
            let mut refused: HashSet<String> = HashSet::new();
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                let mut r = BufReader::new(conn.try_clone().expect("clone"));
                let mut len = 0usize;
                let mut signature = None;
                let mut line = String::new();
                loop {
                    line.clear();
                    if r.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    let lower = line.to_ascii_lowercase();
                    if let Some(v) = lower.strip_prefix("content-length:") {
                        len = v.trim().parse().unwrap_or(0);
                    }
                    if lower.starts_with("x-ferry-signature:") {
                        signature = line.split_once(':').map(|(_, v)| v.trim().to_string());
                    }
                }
                let mut body = vec![0u8; len];
                let _ = r.read_exact(&mut body);
                let event: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                let id = event["id"].as_str().unwrap_or_default().to_string();
                let accepted = !refused.insert(id);
                let status = if accepted {
                    "200 OK"
                } else {
                    "503 Service Unavailable"
                };
                let _ = conn.write_all(
                    format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                        .as_bytes(),
                );
                if let Ok(mut v) = s.lock() {
                    v.push(Delivery {
                        signature,
                        body,
                        event,
                        accepted,
                    });
                }
            }
        });
        Receiver { addr, seen }
    }

    /// Its URL.
    pub fn url(&self) -> String {
        format!("http://{}/hooks/ferry", self.addr)
    }

    /// Every delivery so far.
    pub fn deliveries(&self) -> Vec<Delivery> {
        self.seen.lock().map(|v| v.clone()).unwrap_or_default()
    }

    /// The accepted events of kind `event` (`rpo_violated`, ...) from `site`.
    pub fn events(&self, event: &str, site: &str) -> Vec<Value> {
        self.deliveries()
            .into_iter()
            .filter(|d| d.accepted && d.event["event"] == event && d.event["site"] == site)
            .map(|d| d.event)
            .collect()
    }
}
