//! Token counts from the upstream's own answer: OpenAI-compatible `usage`
//! (`prompt_tokens` / `completion_tokens`, or `input_tokens` / `output_tokens` on
//! `/v1/responses`), Ollama's `prompt_eval_count` / `eval_count`; from a whole JSON
//! answer or from the stream chunk or event that carries them. And the request side:
//! asking an OpenAI-compatible stream for its usage chunk when the client did not, then
//! removing that chunk from what the client receives.

use serde_json::Value;

/// Exact counts reported by the upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counts {
    /// Prompt (input) tokens.
    pub prompt: u64,
    /// Completion (output) tokens.
    pub completion: u64,
}

/// The counts in one JSON object (a whole answer, a stream chunk, or an event), if it
/// carries them.
pub fn counts_in(v: &Value) -> Option<Counts> {
    let n = |o: &Value, k: &str| o.get(k).and_then(Value::as_u64);
    // Ollama: the final object (`done: true`) of /api/chat and /api/generate.
    if let (Some(p), Some(c)) = (n(v, "prompt_eval_count"), n(v, "eval_count")) {
        return Some(Counts {
            prompt: p,
            completion: c,
        });
    }
    if v.get("done").and_then(Value::as_bool) == Some(true) && n(v, "eval_count").is_some() {
        return Some(Counts {
            prompt: n(v, "prompt_eval_count").unwrap_or(0),
            completion: n(v, "eval_count").unwrap_or(0),
        });
    }
    // `/v1/responses` streams put the final response inside `response.completed`.
    let usage = v
        .get("usage")
        .filter(|u| u.is_object())
        .or_else(|| v.get("response")?.get("usage").filter(|u| u.is_object()))?;
    let prompt = n(usage, "prompt_tokens").or_else(|| n(usage, "input_tokens"))?;
    let completion = n(usage, "completion_tokens")
        .or_else(|| n(usage, "output_tokens"))
        .unwrap_or(0);
    Some(Counts { prompt, completion })
}

/// For an OpenAI-compatible streamed request (`/v1/chat/completions`,
/// `/v1/completions` with `"stream": true`) that did not ask for usage: sets
/// `stream_options.include_usage` and returns `true` (the caller then strips the usage
/// chunk from the client's stream).
pub fn ask_for_usage(body: &mut Value) -> bool {
    if body.get("stream").and_then(Value::as_bool) != Some(true) {
        return false;
    }
    let asked = body
        .get("stream_options")
        .and_then(|o| o.get("include_usage"))
        .and_then(Value::as_bool)
        == Some(true);
    if asked {
        return false;
    }
    let Some(obj) = body.as_object_mut() else {
        return false;
    };
    let options = obj
        .entry("stream_options")
        .or_insert_with(|| Value::Object(Default::default()));
    match options.as_object_mut() {
        Some(o) => {
            o.insert("include_usage".into(), Value::Bool(true));
            true
        }
        None => false,
    }
}

/// Is this SSE event (its `data:` payload) the usage-only chunk an upstream sends because
/// `include_usage` was set: `choices` empty and `usage` present?
pub fn is_usage_only_chunk(data: &str) -> bool {
    let Ok(v) = serde_json::from_str::<Value>(data.trim()) else {
        return false;
    };
    v.get("choices")
        .and_then(Value::as_array)
        .is_some_and(Vec::is_empty)
        && v.get("usage").is_some_and(Value::is_object)
}

/// Removes the usage-only chunk from an SSE stream, event by event. Bytes pass through
/// as soon as the event they belong to is complete (an event is never split or
/// delayed past its own end); everything else is untouched.
#[derive(Debug, Default)]
pub struct UsageChunkFilter {
    pending: Vec<u8>,
}

impl UsageChunkFilter {
    /// Feeds a chunk; returns the bytes to send on.
    pub fn push(&mut self, chunk: &[u8]) -> Vec<u8> {
        self.pending.extend_from_slice(chunk);
        let mut out = Vec::with_capacity(self.pending.len());
        // Events end with a blank line ("\n\n", or "\r\n\r\n").
        while let Some(end) = event_end(&self.pending) {
            let event: Vec<u8> = self.pending.drain(..end).collect();
            if !is_usage_event(&event) {
                out.extend_from_slice(&event);
            }
        }
        out
    }

    /// The rest at the end of the stream.
    pub fn finish(&mut self) -> Vec<u8> {
        let rest = std::mem::take(&mut self.pending);
        if is_usage_event(&rest) {
            Vec::new()
        } else {
            rest
        }
    }
}

fn event_end(buf: &[u8]) -> Option<usize> {
    let lf = buf.windows(2).position(|w| w == b"\n\n").map(|i| i + 2);
    let crlf = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4);
    match (lf, crlf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

fn is_usage_event(event: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(event) else {
        return false;
    };
    let data: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .collect();
    !data.is_empty() && is_usage_only_chunk(&data.concat())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn counts_on_each_protocol() {
        let openai = json!({"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 4, "total_tokens": 9}});
        assert_eq!(
            counts_in(&openai),
            Some(Counts {
                prompt: 5,
                completion: 4
            })
        );
        let responses = json!({"type": "response.completed", "response": {"usage": {"input_tokens": 7, "output_tokens": 2}}});
        assert_eq!(
            counts_in(&responses),
            Some(Counts {
                prompt: 7,
                completion: 2
            })
        );
        let ollama = json!({"done": true, "prompt_eval_count": 11, "eval_count": 3});
        assert_eq!(
            counts_in(&ollama),
            Some(Counts {
                prompt: 11,
                completion: 3
            })
        );
        // A cached Ollama prompt omits prompt_eval_count.
        assert_eq!(
            counts_in(&json!({"done": true, "eval_count": 3})),
            Some(Counts {
                prompt: 0,
                completion: 3
            })
        );
        assert_eq!(
            counts_in(&json!({"choices": [{"delta": {"content": "x"}}], "usage": null})),
            None
        );
        assert_eq!(counts_in(&json!({"done": false, "message": {}})), None);
    }

    #[test]
    fn include_usage_is_added_only_when_missing() {
        let mut b = json!({"stream": true, "messages": []});
        assert!(ask_for_usage(&mut b));
        assert_eq!(b["stream_options"]["include_usage"], true);
        let mut b = json!({"stream": true, "stream_options": {"include_usage": true}});
        assert!(!ask_for_usage(&mut b), "the client asked itself");
        let mut b = json!({"stream": true, "stream_options": {"include_usage": false, "x": 1}});
        assert!(ask_for_usage(&mut b));
        assert_eq!(b["stream_options"], json!({"include_usage": true, "x": 1}));
        let mut b = json!({"messages": []});
        assert!(!ask_for_usage(&mut b), "not streamed");
    }

    #[test]
    fn the_usage_chunk_is_removed_wherever_the_chunks_split() {
        let content = "data: {\"choices\":[{\"delta\":{\"content\":\"hé\"}}]}\n\n";
        let usage =
            "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":2}}\n\n";
        let done = "data: [DONE]\n\n";
        let stream = format!("{content}{usage}{done}");
        let want = format!("{content}{done}");
        let bytes = stream.as_bytes();
        for cut in 0..=bytes.len() {
            let mut f = UsageChunkFilter::default();
            let mut out = f.push(&bytes[..cut]);
            out.extend(f.push(&bytes[cut..]));
            out.extend(f.finish());
            assert_eq!(String::from_utf8(out).unwrap(), want, "cut at {cut}");
        }
        // A content chunk that happens to carry usage: null stays.
        let mut f = UsageChunkFilter::default();
        let keep = "data: {\"choices\":[{\"delta\":{}}],\"usage\":null}\r\n\r\n";
        assert_eq!(f.push(keep.as_bytes()), keep.as_bytes());
    }
}
