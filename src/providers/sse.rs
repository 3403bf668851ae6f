//! An incremental Server-Sent Events parser (the WHATWG event-stream format), fed with
//! whatever byte chunks the network hands over: a chunk may end inside a line, inside a
//! UTF-8 character or between the `\r` and `\n` of a line break.
//!
//! Written here rather than taken from a crate because the crates that parse SSE either
//! own the HTTP request (eventsource clients that reconnect on their own, which a provider
//! call must never do) or pull in a second HTTP stack; what is needed is the ~80 lines of
//! line splitting and field handling below.

use std::collections::VecDeque;
use std::pin::Pin;

use futures_util::{Stream, StreamExt};

use super::{ProviderError, ReplyEvent, ReplyStream};

/// One dispatched event: its `event:` type (if any) and its `data:` lines joined by `\n`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    pub event: Option<String>,
    pub data: String,
}

/// Keeps the partial line and the event being built between chunks.
#[derive(Debug, Default)]
pub struct SseParser {
    line: Vec<u8>,
    /// The previous chunk ended in `\r`: a `\n` opening the next chunk belongs to it.
    after_cr: bool,
    event: Option<String>,
    data: String,
    has_data: bool,
}

impl SseParser {
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds one chunk and returns the events it completed, in order.
    pub fn push(&mut self, chunk: &[u8]) -> Vec<SseEvent> {
        let mut out = Vec::new();
        for &byte in chunk {
            if self.after_cr {
                self.after_cr = false;
                if byte == b'\n' {
                    continue;
                }
            }
            match byte {
                b'\n' => self.end_line(&mut out),
                b'\r' => {
                    self.after_cr = true;
                    self.end_line(&mut out);
                }
                _ => self.line.push(byte),
            }
        }
        out
    }

    /// The body ended. A last event whose lines were complete but that lacked the closing
    /// blank line is dispatched (servers often omit it after `[DONE]`); a half line is not.
    pub fn finish(&mut self) -> Option<SseEvent> {
        self.line.clear();
        self.dispatch()
    }

    fn end_line(&mut self, out: &mut Vec<SseEvent>) {
        let line = std::mem::take(&mut self.line);
        if line.is_empty() {
            out.extend(self.dispatch());
            return;
        }
        // Complete lines cannot split a character; invalid bytes become U+FFFD.
        let line = String::from_utf8_lossy(&line);
        if line.starts_with(':') {
            return; // a comment, used as keep-alive
        }
        let (field, value) = match line.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (line.as_ref(), ""),
        };
        match field {
            "data" => {
                if self.has_data {
                    self.data.push('\n');
                }
                self.data.push_str(value);
                self.has_data = true;
            }
            "event" => self.event = Some(value.to_owned()),
            _ => {} // id, retry and unknown fields mean nothing to a one-shot reply
        }
    }

    fn dispatch(&mut self) -> Option<SseEvent> {
        let event = self.event.take();
        if !self.has_data {
            return None;
        }
        self.has_data = false;
        Some(SseEvent {
            event,
            data: std::mem::take(&mut self.data),
        })
    }
}

/// Turns SSE events into reply events; one per wire format (OpenAI, Anthropic).
pub(crate) trait Decoder: Send + 'static {
    /// Handles one event, pushing what it yields; `Ok(true)` once the reply is complete.
    fn event(&mut self, event: SseEvent, out: &mut Vec<ReplyEvent>) -> Result<bool, ProviderError>;
    /// The body ended before the decoder saw the end of the reply: complete it if the
    /// stream said enough (pushing a completion), or say what is missing.
    fn end(&mut self, out: &mut Vec<ReplyEvent>) -> Result<(), ProviderError>;
}

struct Decoding<S, D> {
    body: Pin<Box<S>>,
    parser: SseParser,
    decoder: D,
    pending: VecDeque<Result<ReplyEvent, ProviderError>>,
    done: bool,
}

/// Reads an HTTP body as SSE through `decoder` into a [`ReplyStream`]. A body that fails or
/// ends early yields the deltas so far, then one error; nothing follows a completion.
pub(crate) fn reply_stream<S, B, D>(body: S, decoder: D) -> ReplyStream
where
    S: Stream<Item = Result<B, reqwest::Error>> + Send + 'static,
    B: AsRef<[u8]>,
    D: Decoder,
{
    let state = Decoding {
        body: Box::pin(body),
        parser: SseParser::new(),
        decoder,
        pending: VecDeque::new(),
        done: false,
    };
    Box::pin(futures_util::stream::unfold(state, |mut st| async move {
        loop {
            if let Some(item) = st.pending.pop_front() {
                return Some((item, st));
            }
            if st.done {
                return None;
            }
            let mut out = Vec::new();
            let result = match st.body.next().await {
                Some(Ok(chunk)) => {
                    let mut result = Ok(false);
                    for event in st.parser.push(chunk.as_ref()) {
                        result = st.decoder.event(event, &mut out);
                        if !matches!(result, Ok(false)) {
                            break;
                        }
                    }
                    result
                }
                Some(Err(err)) => Err(ProviderError::from_reqwest(&err)),
                None => {
                    let mut result = Ok(false);
                    if let Some(event) = st.parser.finish() {
                        result = st.decoder.event(event, &mut out);
                    }
                    match result {
                        Ok(false) => st.decoder.end(&mut out).map(|()| true),
                        other => other,
                    }
                }
            };
            st.pending.extend(out.into_iter().map(Ok));
            match result {
                Ok(false) => {}
                Ok(true) => st.done = true,
                Err(err) => {
                    st.pending.push_back(Err(err));
                    st.done = true;
                }
            }
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    const STREAM: &str = ": keep-alive\r\n\
        data: {\"a\":\"h\u{e9}llo\"}\r\n\r\n\
        event: message_delta\n\
        data: line one\n\
        data:line two\n\
        id: 7\n\n\
        :another comment\n\
        \n\
        data: [DONE]\r\r";

    fn expected() -> Vec<SseEvent> {
        vec![
            SseEvent {
                event: None,
                data: "{\"a\":\"h\u{e9}llo\"}".into(),
            },
            SseEvent {
                event: Some("message_delta".into()),
                data: "line one\nline two".into(),
            },
            SseEvent {
                event: None,
                data: "[DONE]".into(),
            },
        ]
    }

    fn parse_in_pieces(bytes: &[u8], cuts: &[usize]) -> Vec<SseEvent> {
        let mut parser = SseParser::new();
        let mut events = Vec::new();
        let mut start = 0;
        for &cut in cuts {
            events.extend(parser.push(&bytes[start..cut]));
            start = cut;
        }
        events.extend(parser.push(&bytes[start..]));
        events.extend(parser.finish());
        events
    }

    #[test]
    fn a_whole_stream_in_one_chunk_gives_every_event() {
        assert_eq!(parse_in_pieces(STREAM.as_bytes(), &[]), expected());
    }

    #[test]
    fn every_single_split_point_gives_the_same_events() {
        let bytes = STREAM.as_bytes();
        for cut in 0..=bytes.len() {
            assert_eq!(parse_in_pieces(bytes, &[cut]), expected(), "cut at {cut}");
        }
    }

    #[test]
    fn byte_by_byte_and_pseudo_random_splits_give_the_same_events() {
        let bytes = STREAM.as_bytes();
        let every: Vec<usize> = (1..bytes.len()).collect();
        assert_eq!(parse_in_pieces(bytes, &every), expected());
        // A small deterministic generator: many different sets of cut points.
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..500 {
            let mut cuts = Vec::new();
            let mut at = 0;
            loop {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                at += 1 + (seed % 9) as usize;
                if at >= bytes.len() {
                    break;
                }
                cuts.push(at);
            }
            assert_eq!(parse_in_pieces(bytes, &cuts), expected(), "cuts {cuts:?}");
        }
    }

    #[test]
    fn a_half_line_at_the_end_of_the_body_is_dropped() {
        let mut parser = SseParser::new();
        assert!(parser.push(b"data: {\"trunc").is_empty());
        assert_eq!(parser.finish(), None);
    }

    #[test]
    fn an_event_without_data_is_not_dispatched() {
        let mut parser = SseParser::new();
        assert!(parser.push(b"event: ping\n\n").is_empty());
    }
}
