//! A provider stand-in for tests: a tiny HTTP/1.1 server on loopback that answers each
//! request with the next scripted reply (or the default one) and records what it was sent.
//! It streams real SSE over chunked HTTP, split mid-event, with delays; it can fail with a
//! status, stall, or drop the connection mid-stream.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{sleep, Instant};

/// How to stream an OpenAI-compatible reply.
#[derive(Clone, Debug)]
pub struct Script {
    /// Wait this long after the headers before the first event.
    pub stall: Duration,
    pub pieces: Vec<String>,
    /// Between events.
    pub delay: Duration,
    /// Close the connection (without ending the chunked body) after this many pieces.
    pub drop_after: Option<usize>,
    /// `None` sends `null`.
    pub finish_reason: Option<String>,
    pub usage: Option<(u32, u32)>,
    /// Omit `id`, `object`, `created`, `model`, `index`.
    pub minimal: bool,
}

impl Default for Script {
    fn default() -> Self {
        Self {
            stall: Duration::ZERO,
            pieces: ["Hello", ", wor", "ld!"].map(String::from).to_vec(),
            delay: Duration::from_millis(5),
            drop_after: None,
            finish_reason: Some("stop".into()),
            usage: Some((11, 3)),
            minimal: false,
        }
    }
}

#[derive(Clone, Debug)]
pub enum Reply {
    Status {
        code: u16,
        retry_after: Option<String>,
    },
    Stream(Script),
    /// An Anthropic messages stream of these pieces.
    Anthropic(Vec<String>),
}

/// One request as the stand-in received it.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Value,
    pub at: Instant,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Default)]
struct Inner {
    queue: VecDeque<Reply>,
    requests: Vec<Recorded>,
}

#[derive(Clone)]
pub struct StandIn {
    pub base_url: String,
    inner: Arc<Mutex<Inner>>,
}

impl StandIn {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base_url = format!("http://{}/v1", listener.local_addr().unwrap());
        let this = Self {
            base_url,
            inner: Arc::default(),
        };
        let server = this.clone();
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let server = server.clone();
                tokio::spawn(async move { server.serve(socket).await });
            }
        });
        this
    }

    /// The next requests get these replies, in order; then the default stream.
    pub fn then(&self, reply: Reply) -> &Self {
        self.inner.lock().unwrap().queue.push_back(reply);
        self
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.inner.lock().unwrap().requests.clone()
    }

    async fn serve(&self, mut socket: TcpStream) {
        let Some(request) = read_request(&mut socket).await else {
            return;
        };
        let anthropic = request.path.ends_with("/messages");
        let reply = {
            let mut inner = self.inner.lock().unwrap();
            inner.requests.push(request);
            inner.queue.pop_front()
        };
        let reply = reply.unwrap_or_else(|| {
            if anthropic {
                Reply::Anthropic(vec!["Hi".into(), " there".into()])
            } else {
                Reply::Stream(Script::default())
            }
        });
        let _ = respond(&mut socket, reply).await;
    }
}

async fn read_request(socket: &mut TcpStream) -> Option<Recorded> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = socket.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let mut lines = head.split("\r\n");
    let path = lines.next()?.split(' ').nth(1)?.to_owned();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let length: usize = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    while buf.len() < head_end + length {
        let n = socket.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let body = serde_json::from_slice(&buf[head_end..head_end + length]).unwrap_or(Value::Null);
    Some(Recorded {
        path,
        headers,
        body,
        at: Instant::now(),
    })
}

/// Writes one event as two HTTP chunks split in its middle, so the client sees a chunk
/// boundary inside an SSE line.
async fn send_event(socket: &mut TcpStream, event: &str) -> std::io::Result<()> {
    let bytes = event.as_bytes();
    let mut cut = bytes.len() / 2;
    while !event.is_char_boundary(cut) {
        cut += 1;
    }
    for part in [&bytes[..cut], &bytes[cut..]] {
        if part.is_empty() {
            continue;
        }
        socket
            .write_all(format!("{:x}\r\n", part.len()).as_bytes())
            .await?;
        socket.write_all(part).await?;
        socket.write_all(b"\r\n").await?;
        socket.flush().await?;
        sleep(Duration::from_millis(1)).await;
    }
    Ok(())
}

async fn respond(socket: &mut TcpStream, reply: Reply) -> std::io::Result<()> {
    let script = match reply {
        Reply::Status { code, retry_after } => {
            let retry = retry_after
                .map(|r| format!("retry-after: {r}\r\n"))
                .unwrap_or_default();
            let body = r#"{"error":{"message":"scripted failure"}}"#;
            let head = format!(
                "HTTP/1.1 {code} Scripted\r\ncontent-type: application/json\r\n{retry}content-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            return socket.write_all(head.as_bytes()).await;
        }
        Reply::Anthropic(pieces) => return anthropic(socket, pieces).await,
        Reply::Stream(script) => script,
    };
    socket
        .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n")
        .await?;
    socket.flush().await?;
    sleep(script.stall).await;
    send_event(socket, ": keep-alive\n\n").await?;
    for (i, piece) in script.pieces.iter().enumerate() {
        if script.drop_after == Some(i) {
            return socket.shutdown().await;
        }
        let chunk = if script.minimal {
            json!({"choices": [{"delta": {"content": piece}}]})
        } else {
            json!({"id": "c1", "object": "chat.completion.chunk", "created": 1,
                   "model": "m", "choices": [{"index": 0, "delta": {"content": piece},
                   "finish_reason": null}]})
        };
        send_event(socket, &format!("data: {chunk}\n\n")).await?;
        sleep(script.delay).await;
    }
    let finish =
        json!({"choices": [{"index": 0, "delta": {}, "finish_reason": script.finish_reason}]});
    send_event(socket, &format!("data: {finish}\n\n")).await?;
    if let Some((p, c)) = script.usage {
        let usage = json!({"choices": [], "usage": {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}});
        send_event(socket, &format!("data: {usage}\r\n\r\n")).await?;
    }
    send_event(socket, "data: [DONE]\n\n").await?;
    socket.write_all(b"0\r\n\r\n").await?;
    socket.flush().await
}

async fn anthropic(socket: &mut TcpStream, pieces: Vec<String>) -> std::io::Result<()> {
    socket
        .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n")
        .await?;
    let mut events = vec![
        (
            "message_start",
            json!({"type": "message_start", "message": {"id": "msg_1", "type": "message", "role": "assistant", "content": [], "usage": {"input_tokens": 21, "output_tokens": 1}}}),
        ),
        (
            "content_block_start",
            json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
        ),
        ("ping", json!({"type": "ping"})),
    ];
    for piece in &pieces {
        events.push((
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": piece}}),
        ));
    }
    events.push((
        "content_block_stop",
        json!({"type": "content_block_stop", "index": 0}),
    ));
    events.push(("message_delta", json!({"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": null}, "usage": {"output_tokens": 7}})));
    events.push(("message_stop", json!({"type": "message_stop"})));
    for (name, data) in events {
        send_event(socket, &format!("event: {name}\ndata: {data}\n\n")).await?;
    }
    socket.write_all(b"0\r\n\r\n").await?;
    socket.flush().await
}
