//! The response body on its way to the client: passed on chunk by chunk, never delayed,
//! while the reply (memory) and the token counts (metering) are read from it; with
//! `include_usage` added by the gateway, the usage chunk the client did not ask for is
//! removed. When the body ends — or the client goes away — `on_end` gets what was seen.

use std::pin::Pin;
use std::task::{Context, Poll};

use axum::body::Bytes;
use futures_util::stream::BoxStream;
use futures_util::Stream;

use crate::memory::capture::{Reassembler, Reply};
use crate::metering::usage::UsageChunkFilter;

/// What passed, reported once at the end.
#[derive(Debug)]
pub struct Seen {
    /// The reply and counts.
    pub reply: Reply,
    /// Bytes sent to the client.
    pub bytes_out: u64,
    /// The body ended normally (not cut by the client or an upstream error).
    pub ended: bool,
}

/// The tapped body.
pub struct Tap {
    inner: BoxStream<'static, Result<Bytes, reqwest::Error>>,
    parser: Option<Reassembler>,
    filter: Option<UsageChunkFilter>,
    bytes_out: u64,
    /// The upstream's Content-Length, when the body passes unchanged: hyper stops
    /// polling once that many bytes went out, so reaching it is the end.
    length: Option<u64>,
    on_end: Option<Box<dyn FnOnce(Seen) + Send>>,
}

impl Tap {
    /// Taps `inner`; `strip_usage`: remove the usage-only SSE chunk (the caller then
    /// must not send the upstream's Content-Length); `length`: the Content-Length sent.
    pub fn new(
        inner: BoxStream<'static, Result<Bytes, reqwest::Error>>,
        parser: Reassembler,
        strip_usage: bool,
        length: Option<u64>,
        on_end: Box<dyn FnOnce(Seen) + Send>,
    ) -> Self {
        Tap {
            inner,
            parser: Some(parser),
            filter: strip_usage.then(UsageChunkFilter::default),
            bytes_out: 0,
            length: length.filter(|_| !strip_usage),
            on_end: Some(on_end),
        }
    }

    fn end(&mut self, ended: bool) {
        if let (Some(p), Some(f)) = (self.parser.take(), self.on_end.take()) {
            f(Seen {
                reply: p.finish(ended),
                bytes_out: self.bytes_out,
                ended,
            });
        }
    }
}

impl Stream for Tap {
    type Item = Result<Bytes, reqwest::Error>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            if self.parser.is_none() {
                return Poll::Ready(None);
            }
            match self.inner.as_mut().poll_next(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(chunk))) => {
                    if let Some(p) = self.parser.as_mut() {
                        p.push(&chunk);
                    }
                    let out = match self.filter.as_mut() {
                        Some(f) => Bytes::from(f.push(&chunk)),
                        None => chunk,
                    };
                    if out.is_empty() {
                        continue;
                    }
                    self.bytes_out += out.len() as u64;
                    if self.length.is_some_and(|n| self.bytes_out >= n) {
                        self.end(true);
                    }
                    return Poll::Ready(Some(Ok(out)));
                }
                Poll::Ready(Some(Err(e))) => {
                    self.end(false);
                    return Poll::Ready(Some(Err(e)));
                }
                Poll::Ready(None) => {
                    let rest = self.filter.as_mut().map(|f| f.finish()).unwrap_or_default();
                    if !rest.is_empty() {
                        self.bytes_out += rest.len() as u64;
                    }
                    self.end(true);
                    if rest.is_empty() {
                        return Poll::Ready(None);
                    }
                    return Poll::Ready(Some(Ok(Bytes::from(rest))));
                }
            }
        }
    }
}

impl Drop for Tap {
    /// The client went away before the end: what passed is reported, not ended.
    fn drop(&mut self) {
        self.end(false);
    }
}
