//! A lean HTTP/1.1 load client for the commands mode: one keep-alive connection per
//! client, the request written from one reused buffer, the answer read with just enough
//! parsing to find its status and its end. reqwest cost the bench's client about a fifth
//! of this 2-core machine, taken from the server it measures; this client costs a fraction
//! of that, as `wrk` or the peer's in-process bench would. `--client reqwest` keeps the
//! old client, so figures can be compared with earlier rounds.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The longest answer head or body this client accepts.
const MAX_ANSWER: usize = 1 << 20;

/// One client's connection to the server.
pub struct Connection {
    addr: SocketAddr,
    host: String,
    headers: String,
    stream: Option<TcpStream>,
    request: Vec<u8>,
    answer: Vec<u8>,
}

impl Connection {
    /// `base` is `http://host:port`; `headers` are extra request lines, each ending in CRLF.
    pub async fn new(base: &str, headers: String) -> anyhow::Result<Self> {
        let authority = base
            .strip_prefix("http://")
            .ok_or_else(|| anyhow::anyhow!("the lean client speaks plain http only: {base}"))?
            .trim_end_matches('/');
        let addr = tokio::net::lookup_host(authority)
            .await?
            .next()
            .ok_or_else(|| anyhow::anyhow!("{authority} resolves to no address"))?;
        Ok(Self {
            addr,
            host: authority.to_owned(),
            headers,
            stream: None,
            request: Vec::with_capacity(1024),
            answer: Vec::with_capacity(4096),
        })
    }

    /// Posts `body` as JSON to `path` and returns the answer's status. The connection is
    /// opened on first use and again after any error or a `connection: close`.
    pub async fn post_json(&mut self, path: &str, body: &str) -> anyhow::Result<u16> {
        use std::io::Write;
        self.request.clear();
        write!(
            self.request,
            "POST {path} HTTP/1.1\r\nhost: {}\r\n{}content-type: application/json\r\n\
             content-length: {}\r\n\r\n{body}",
            self.host,
            self.headers,
            body.len()
        )?;
        let outcome = self.exchange().await;
        if !matches!(outcome, Ok((_, true))) {
            self.stream = None;
        }
        outcome.map(|(status, _)| status)
    }

    /// Writes the request and reads one answer: its status and whether the connection stays.
    async fn exchange(&mut self) -> anyhow::Result<(u16, bool)> {
        if self.stream.is_none() {
            let stream = TcpStream::connect(self.addr).await?;
            stream.set_nodelay(true)?;
            self.stream = Some(stream);
        }
        let stream = self.stream.as_mut().expect("connected above");
        stream.write_all(&self.request).await?;
        self.answer.clear();
        let head_end = loop {
            if let Some(i) = find(&self.answer, b"\r\n\r\n") {
                break i + 4;
            }
            read_more(stream, &mut self.answer).await?;
        };
        let head = std::str::from_utf8(&self.answer[..head_end])?;
        let status: u16 = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| anyhow::anyhow!("not an HTTP answer"))?;
        let mut length = 0;
        let mut keep = true;
        for line in head.split("\r\n").skip(1) {
            let Some((name, value)) = line.split_once(':') else {
                continue;
            };
            let value = value.trim();
            if name.eq_ignore_ascii_case("content-length") {
                length = value.parse::<usize>()?;
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                // The readings route answers with a length; anything else is not ours to read.
                anyhow::bail!("an answer in {value} encoding");
            } else if name.eq_ignore_ascii_case("connection") {
                keep = !value.eq_ignore_ascii_case("close");
            }
        }
        let total = head_end + length;
        anyhow::ensure!(total <= MAX_ANSWER, "answer of {total} bytes");
        while self.answer.len() < total {
            read_more(stream, &mut self.answer).await?;
        }
        Ok((status, keep))
    }
}

async fn read_more(stream: &mut TcpStream, buf: &mut Vec<u8>) -> anyhow::Result<()> {
    anyhow::ensure!(
        buf.len() < MAX_ANSWER,
        "answer longer than {MAX_ANSWER} bytes"
    );
    buf.reserve(4096);
    let n = stream.read_buf(buf).await?;
    anyhow::ensure!(n > 0, "the server closed the connection");
    Ok(())
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}
