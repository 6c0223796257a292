//! The response body on its way to the client: passed on chunk by chunk, never delayed,
//! while the reply (memory) and the token counts (metering) are read from it; with
//! `include_usage` added by the gateway, the usage chunk the client did not ask for is
//! removed. When the body ends — or the client goes away — `on_end` gets what was seen.
//!
//! A client that leaves a stream early does not end the bill: with a drain limit, the
//! rest of the upstream's answer is read in the background (and discarded) until it
//! ends or the limit passes, so the token counts it sends last are still exact.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Bytes;
use futures_util::stream::BoxStream;
use futures_util::{Stream, StreamExt};

use crate::chat::{Reassembler, Reply};
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
    /// The client left early and the rest of the upstream's answer was read to its end.
    pub drained: bool,
}

/// Reading on after the client left: for at most `limit`, or until `stop` turns true
/// (the gateway shutting down).
#[derive(Debug, Clone)]
pub struct Drain {
    /// The longest the rest of an answer is read.
    pub limit: Duration,
    /// Set when the gateway shuts down: drains then end at once.
    pub stop: tokio::sync::watch::Receiver<bool>,
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
    /// How long to keep reading the upstream after the client left (`None`: stop at once).
    drain: Option<Drain>,
}

impl Tap {
    /// Taps `inner`; `strip_usage`: remove the usage-only SSE chunk (the caller then
    /// must not send the upstream's Content-Length); `length`: the Content-Length sent;
    /// `drain`: how long the rest of the answer is read for its counts when the client
    /// leaves early.
    pub fn new(
        inner: BoxStream<'static, Result<Bytes, reqwest::Error>>,
        parser: Reassembler,
        strip_usage: bool,
        length: Option<u64>,
        drain: Option<Drain>,
        on_end: Box<dyn FnOnce(Seen) + Send>,
    ) -> Self {
        Tap {
            inner,
            parser: Some(parser),
            filter: strip_usage.then(UsageChunkFilter::default),
            bytes_out: 0,
            length: length.filter(|_| !strip_usage),
            on_end: Some(on_end),
            drain,
        }
    }

    fn end(&mut self, ended: bool) {
        if let (Some(p), Some(f)) = (self.parser.take(), self.on_end.take()) {
            f(Seen {
                reply: p.finish(ended),
                bytes_out: self.bytes_out,
                ended,
                drained: false,
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
    /// The client went away before the end: what passed is reported, not ended — after
    /// the rest of the upstream's answer was drained for its counts, when allowed.
    fn drop(&mut self) {
        let runtime = tokio::runtime::Handle::try_current();
        let (Some(mut drain), Ok(runtime)) = (self.drain.take(), runtime) else {
            return self.end(false);
        };
        let (Some(mut parser), Some(on_end)) = (self.parser.take(), self.on_end.take()) else {
            return; // already reported
        };
        parser.stop_text();
        let mut inner = std::mem::replace(&mut self.inner, futures_util::stream::empty().boxed());
        let bytes_out = self.bytes_out;
        runtime.spawn(async move {
            let read_to_end = async {
                while let Some(chunk) = inner.next().await {
                    match chunk {
                        Ok(c) => parser.push(&c),
                        Err(_) => return false,
                    }
                }
                true
            };
            let drained = tokio::select! {
                r = tokio::time::timeout(drain.limit, read_to_end) => r.unwrap_or(false),
                _ = drain.stop.wait_for(|stop| *stop) => false,
            };
            drop(inner); // closes the upstream connection if it is still open
            on_end(Seen {
                reply: parser.finish(false),
                bytes_out,
                ended: false,
                drained,
            });
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chat::{ChatRoute, Framing};
    use crate::metering::usage::Counts;
    use tokio::sync::{mpsc, oneshot, watch};

    type Chunks = mpsc::UnboundedSender<Result<Bytes, reqwest::Error>>;

    /// A tap over a channel; its report arrives on the receiver.
    fn tap(drain: Option<Drain>) -> (Tap, Chunks, oneshot::Receiver<Seen>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let (seen_tx, seen_rx) = oneshot::channel();
        let stream =
            futures_util::stream::unfold(
                rx,
                |mut rx| async move { rx.recv().await.map(|c| (c, rx)) },
            );
        let parser = Reassembler::new(Some(ChatRoute::OllamaChat), Framing::Ndjson, 1024);
        let on_end = Box::new(move |s: Seen| {
            let _ = seen_tx.send(s);
        });
        (
            Tap::new(stream.boxed(), parser, false, None, drain, on_end),
            tx,
            seen_rx,
        )
    }

    fn line(text: &str, done: bool) -> Result<Bytes, reqwest::Error> {
        let mut v = serde_json::json!({"message": {"content": text}, "done": done});
        if done {
            v["prompt_eval_count"] = 7.into();
            v["eval_count"] = 5.into();
        }
        Ok(Bytes::from(format!("{v}\n")))
    }

    #[tokio::test]
    async fn a_client_leaving_is_reported_with_what_passed() {
        let (mut t, tx, seen) = tap(None);
        tx.send(line("Hi", false)).unwrap();
        let first = t.next().await.unwrap().unwrap();
        drop(t);
        let seen = seen.await.expect("reported at once");
        assert_eq!((seen.ended, seen.drained), (false, false));
        assert_eq!(seen.bytes_out, first.len() as u64);
        assert_eq!((seen.reply.text.as_str(), seen.reply.counts), ("Hi", None));
    }

    #[tokio::test]
    async fn a_drain_reads_the_counts_but_keeps_only_the_text_that_passed() {
        let (_stop_tx, stop) = watch::channel(false);
        let drain = Drain {
            limit: Duration::from_secs(30),
            stop,
        };
        let (mut t, tx, mut seen) = tap(Some(drain));
        tx.send(line("Hi", false)).unwrap();
        let first = t.next().await.unwrap().unwrap();
        drop(t);
        tokio::task::yield_now().await;
        assert!(seen.try_recv().is_err(), "still reading the rest");
        tx.send(line(" there", false)).unwrap();
        tx.send(line("", true)).unwrap();
        drop(tx);
        let seen = seen.await.unwrap();
        assert_eq!((seen.ended, seen.drained), (false, true));
        assert_eq!(seen.bytes_out, first.len() as u64);
        assert_eq!(seen.reply.text, "Hi");
        assert!(!seen.reply.complete);
        let exact = Counts {
            prompt: 7,
            completion: 5,
        };
        assert_eq!(seen.reply.counts, Some(exact));
    }

    #[tokio::test]
    async fn a_drain_ends_when_the_gateway_stops() {
        let (stop_tx, stop) = watch::channel(false);
        let drain = Drain {
            limit: Duration::from_secs(3600),
            stop,
        };
        let (mut t, tx, seen) = tap(Some(drain));
        tx.send(line("Hi", false)).unwrap();
        t.next().await.unwrap().unwrap();
        drop(t);
        stop_tx.send_replace(true);
        let seen = seen.await.unwrap();
        assert_eq!((seen.drained, seen.reply.counts), (false, None));
        drop(tx);
    }
}
