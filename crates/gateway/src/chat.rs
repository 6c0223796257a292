//! The chat protocols' shapes (OpenAI chat completions and responses, Ollama chat and
//! generate): the new user message(s) of a request, and the assistant's reply and the
//! upstream's token counts, reassembled from a JSON answer or from SSE / NDJSON chunks
//! as they pass (a line is decoded only once complete, so multi-byte text split across
//! chunks is exact). Memory records the turns; the response tap and metering read the
//! counts.

use serde_json::Value;

/// The chat routes whose turns are recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChatRoute {
    /// `/v1/chat/completions`.
    ChatCompletions,
    /// `/v1/responses`.
    Responses,
    /// Ollama `/api/chat`.
    OllamaChat,
    /// Ollama `/api/generate`.
    OllamaGenerate,
}

impl ChatRoute {
    /// The chat route at `path`, if it is one.
    pub fn of(path: &str) -> Option<ChatRoute> {
        match path {
            "/v1/chat/completions" => Some(ChatRoute::ChatCompletions),
            "/v1/responses" => Some(ChatRoute::Responses),
            "/api/chat" => Some(ChatRoute::OllamaChat),
            "/api/generate" => Some(ChatRoute::OllamaGenerate),
            _ => None,
        }
    }
}

/// Text of a message `content`: a string, or an array of parts whose text is joined.
fn content_text(c: &Value) -> Option<String> {
    match c {
        Value::String(s) => Some(s.clone()),
        Value::Array(parts) => {
            let texts: Vec<&str> = parts
                .iter()
                .filter_map(|p| match p {
                    Value::String(s) => Some(s.as_str()),
                    Value::Object(o) => o.get("text").and_then(Value::as_str),
                    _ => None,
                })
                .collect();
            (!texts.is_empty()).then(|| texts.join("\n"))
        }
        _ => None,
    }
}

/// The trailing user messages of a `messages` / `input` array, joined.
fn trailing_user(items: &[Value]) -> String {
    let start = items
        .iter()
        .rposition(|m| m.get("role").and_then(Value::as_str) != Some("user"))
        .map_or(0, |i| i + 1);
    items[start..]
        .iter()
        .filter_map(|m| m.get("content").and_then(content_text))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The new user message(s) of a request body: the trailing `user` messages (chat), the
/// `input` (responses) or the `prompt` (generate).
pub fn user_text(route: ChatRoute, body: &Value) -> String {
    match route {
        ChatRoute::ChatCompletions | ChatRoute::OllamaChat => body
            .get("messages")
            .and_then(Value::as_array)
            .map(|m| trailing_user(m))
            .unwrap_or_default(),
        ChatRoute::Responses => match body.get("input") {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Array(items)) => trailing_user(items),
            _ => String::new(),
        },
        ChatRoute::OllamaGenerate => body
            .get("prompt")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned(),
    }
}

/// The reply text in one JSON object: a whole answer, or one stream chunk / event.
fn reply_piece(route: ChatRoute, v: &Value, streamed: bool) -> Option<String> {
    match route {
        ChatRoute::ChatCompletions => {
            let choice = v.get("choices")?.get(0)?;
            let field = if streamed { "delta" } else { "message" };
            choice.get(field)?.get("content").and_then(content_text)
        }
        ChatRoute::Responses if streamed => (v.get("type")?.as_str()?
            == "response.output_text.delta")
            .then(|| v.get("delta")?.as_str().map(str::to_owned))?,
        ChatRoute::Responses => {
            if let Some(t) = v.get("output_text").and_then(Value::as_str) {
                return Some(t.to_owned());
            }
            let mut out = String::new();
            for item in v.get("output")?.as_array()? {
                for c in item
                    .get("content")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    if c.get("type").and_then(Value::as_str) == Some("output_text") {
                        out.push_str(c.get("text").and_then(Value::as_str).unwrap_or_default());
                    }
                }
            }
            Some(out)
        }
        ChatRoute::OllamaChat => v.get("message")?.get("content").and_then(content_text),
        ChatRoute::OllamaGenerate => v.get("response")?.as_str().map(str::to_owned),
    }
}

/// How the response body is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// One JSON document.
    Json,
    /// Server-sent events (`data: {...}` lines).
    Sse,
    /// Newline-delimited JSON.
    Ndjson,
}

impl Framing {
    /// From the response's `Content-Type`.
    pub fn of(content_type: &str) -> Framing {
        let ct = content_type.to_ascii_lowercase();
        if ct.contains("event-stream") {
            Framing::Sse
        } else if ct.contains("ndjson") {
            Framing::Ndjson
        } else {
            Framing::Json
        }
    }
}

/// What a response said, once it ended.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Reply {
    /// The assistant's text (chat routes).
    pub text: String,
    /// The whole answer arrived and was kept.
    pub complete: bool,
    /// The upstream's token counts, if it reported them.
    pub counts: Option<crate::metering::usage::Counts>,
    /// The text was cut at the size cap (or a whole answer was too large to keep).
    pub truncated: bool,
}

/// Reassembles the assistant's reply (chat routes) and the upstream's token counts (any
/// route) from response chunks, in the order they pass.
#[derive(Debug)]
pub struct Reassembler {
    route: Option<ChatRoute>,
    counts: Option<crate::metering::usage::Counts>,
    framing: Framing,
    /// Bytes of an incomplete line (streams) or the whole body (JSON).
    pending: Vec<u8>,
    reply: String,
    /// Bytes past `max` are not kept (the reply is then marked incomplete).
    max: usize,
    overflow: bool,
    /// The stream said it finished (`[DONE]`, `done: true`, `response.completed`).
    finished: bool,
    /// The client went away: the text it did not receive is not kept (counts still are).
    text_stopped: bool,
}

impl Reassembler {
    /// Starts reassembling; at most `max` bytes of reply are kept. Without a chat route
    /// only the counts are read.
    pub fn new(route: Option<ChatRoute>, framing: Framing, max: usize) -> Self {
        Reassembler {
            route,
            counts: None,
            framing,
            pending: Vec::new(),
            reply: String::new(),
            max,
            overflow: false,
            finished: false,
            text_stopped: false,
        }
    }

    /// From now on only the counts are read: the reply keeps what passed so far (for a
    /// whole-JSON answer, nothing), and it is reported incomplete.
    pub fn stop_text(&mut self) {
        self.text_stopped = true;
    }

    /// Feeds a chunk.
    pub fn push(&mut self, chunk: &[u8]) {
        let cap = self.max.saturating_mul(4).max(1 << 20);
        if self.framing == Framing::Json {
            // A whole answer past the cap is not kept: no text, and no counts (the
            // caller then estimates from the bytes sent).
            if !self.overflow {
                self.pending.extend_from_slice(chunk);
                if self.pending.len() > cap {
                    self.overflow = true;
                    self.pending = Vec::new();
                }
            }
            return;
        }
        // Streams: past the text cap, lines are still read for the counts.
        self.pending.extend_from_slice(chunk);
        while let Some(i) = self.pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.pending.drain(..=i).collect();
            self.line(&line);
        }
        if self.reply.len() > self.max {
            let mut cut = self.max;
            while !self.reply.is_char_boundary(cut) {
                cut -= 1;
            }
            self.reply.truncate(cut);
            self.overflow = true;
        }
        if self.pending.len() > cap {
            // One line far past the cap: dropped.
            self.overflow = true;
            self.pending.clear();
        }
    }

    fn line(&mut self, line: &[u8]) {
        let Ok(line) = std::str::from_utf8(line) else {
            return;
        };
        let line = line.trim();
        let json = match self.framing {
            Framing::Sse => match line.strip_prefix("data:") {
                Some(d) if d.trim() == "[DONE]" => {
                    self.finished = true;
                    return;
                }
                Some(d) => d.trim(),
                None => return,
            },
            _ => line,
        };
        let Ok(v) = serde_json::from_str::<Value>(json) else {
            return;
        };
        if v.get("done").and_then(Value::as_bool) == Some(true)
            || v.get("type").and_then(Value::as_str) == Some("response.completed")
        {
            self.finished = true;
        }
        if let Some(c) = crate::metering::usage::counts_in(&v) {
            self.counts = Some(c);
        }
        if self.overflow || self.text_stopped {
            return;
        }
        if let Some(piece) = self.route.and_then(|r| reply_piece(r, &v, true)) {
            self.reply.push_str(&piece);
        }
    }

    /// The reply; `stream_ended`: the upstream's body ended normally.
    pub fn finish(mut self, stream_ended: bool) -> Reply {
        match self.framing {
            Framing::Json => {
                let parsed = serde_json::from_slice::<Value>(&self.pending).ok();
                let text = parsed
                    .as_ref()
                    .filter(|_| !self.text_stopped)
                    .zip(self.route)
                    .and_then(|(v, r)| reply_piece(r, v, false))
                    .unwrap_or_default();
                Reply {
                    counts: parsed.as_ref().and_then(crate::metering::usage::counts_in),
                    complete: stream_ended
                        && parsed.is_some()
                        && !self.overflow
                        && !self.text_stopped,
                    text,
                    truncated: self.overflow,
                }
            }
            _ => {
                // A last line without its newline.
                let rest = std::mem::take(&mut self.pending);
                if !rest.is_empty() {
                    self.line(&rest);
                }
                Reply {
                    complete: stream_ended && !self.overflow && self.finished && !self.text_stopped,
                    text: self.reply,
                    counts: self.counts,
                    truncated: self.overflow,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// (text, complete).
    fn done(r: Reassembler, ended: bool) -> (String, bool) {
        let reply = r.finish(ended);
        (reply.text, reply.complete)
    }

    #[test]
    fn the_new_user_messages_are_the_trailing_ones() {
        let body = json!({"messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "old question"},
            {"role": "assistant", "content": "old answer"},
            {"role": "user", "content": "first"},
            {"role": "user", "content": [{"type": "text", "text": "second"}]},
        ]});
        assert_eq!(
            user_text(ChatRoute::ChatCompletions, &body),
            "first\nsecond"
        );
        assert_eq!(
            user_text(ChatRoute::Responses, &json!({"input": "hi"})),
            "hi"
        );
        assert_eq!(
            user_text(
                ChatRoute::Responses,
                &json!({"input": [{"role": "user", "content": [{"type": "input_text", "text": "yo"}]}]})
            ),
            "yo"
        );
        assert_eq!(
            user_text(ChatRoute::OllamaGenerate, &json!({"prompt": "p"})),
            "p"
        );
        assert_eq!(
            user_text(ChatRoute::OllamaChat, &json!({"messages": 3})),
            ""
        );
    }

    #[test]
    fn sse_chunks_split_inside_a_multibyte_character_reassemble_exactly() {
        let stream = "data: {\"choices\":[{\"delta\":{\"role\":\"assistant\"}}]}\n\n\
                      data: {\"choices\":[{\"delta\":{\"content\":\"naïve 日本\"}}]}\n\n\
                      data: {\"choices\":[{\"delta\":{\"content\":\"語 🎉\"}}]}\n\n\
                      data: {\"choices\":[],\"usage\":{\"total_tokens\":3}}\n\n\
                      data: [DONE]\n\n";
        let bytes = stream.as_bytes();
        // Every split point, including inside 日, 語 and 🎉.
        for cut in 1..bytes.len() {
            let mut r = Reassembler::new(Some(ChatRoute::ChatCompletions), Framing::Sse, 1 << 20);
            r.push(&bytes[..cut]);
            r.push(&bytes[cut..]);
            assert_eq!(
                done(r, true),
                ("naïve 日本語 🎉".to_owned(), true),
                "cut at {cut}"
            );
        }
        // Byte by byte.
        let mut r = Reassembler::new(Some(ChatRoute::ChatCompletions), Framing::Sse, 1 << 20);
        for b in bytes {
            r.push(std::slice::from_ref(b));
        }
        assert_eq!(done(r, true).0, "naïve 日本語 🎉");
    }

    #[test]
    fn ollama_ndjson_and_a_stream_cut_short() {
        let stream = "{\"message\":{\"role\":\"assistant\",\"content\":\"Hel\"},\"done\":false}\n\
                      {\"message\":{\"role\":\"assistant\",\"content\":\"lo\"},\"done\":false}\n\
                      {\"message\":{\"role\":\"assistant\",\"content\":\"\"},\"done\":true,\"eval_count\":2}\n";
        let mut r = Reassembler::new(Some(ChatRoute::OllamaChat), Framing::Ndjson, 1 << 20);
        r.push(stream.as_bytes());
        assert_eq!(done(r, true), ("Hello".to_owned(), true));
        // The client went away after the first line: partial, not complete.
        let mut r = Reassembler::new(Some(ChatRoute::OllamaChat), Framing::Ndjson, 1 << 20);
        r.push(stream.lines().next().unwrap().as_bytes());
        r.push(b"\n");
        assert_eq!(done(r, false), ("Hel".to_owned(), false));
        let mut r = Reassembler::new(Some(ChatRoute::OllamaGenerate), Framing::Ndjson, 1 << 20);
        r.push(b"{\"response\":\"a\",\"done\":false}\n{\"response\":\"b\",\"done\":true}");
        assert_eq!(done(r, true), ("ab".to_owned(), true));
    }

    #[test]
    fn whole_json_answers_on_each_route() {
        let cases = [
            (
                ChatRoute::ChatCompletions,
                json!({"choices": [{"message": {"role": "assistant", "content": "A"}}]}),
            ),
            (
                ChatRoute::Responses,
                json!({"output": [{"type": "message", "content": [{"type": "output_text", "text": "B"}]}]}),
            ),
            (
                ChatRoute::OllamaChat,
                json!({"message": {"role": "assistant", "content": "C"}, "done": true}),
            ),
            (
                ChatRoute::OllamaGenerate,
                json!({"response": "D", "done": true}),
            ),
        ];
        for (route, v, want) in cases
            .into_iter()
            .zip(["A", "B", "C", "D"])
            .map(|((r, v), w)| (r, v, w))
        {
            let mut r = Reassembler::new(Some(route), Framing::Json, 1 << 20);
            let s = v.to_string();
            let (a, b) = s.as_bytes().split_at(s.len() / 2);
            r.push(a);
            r.push(b);
            assert_eq!(done(r, true), (want.to_owned(), true));
        }
    }

    #[test]
    fn responses_stream_events_and_the_size_cap() {
        let stream = "event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"delta\":\"Hi \"}\n\n\
                      event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"delta\":\"there\"}\n\n\
                      event: response.completed\ndata: {\"type\":\"response.completed\"}\n\n";
        let mut r = Reassembler::new(Some(ChatRoute::Responses), Framing::Sse, 1 << 20);
        r.push(stream.as_bytes());
        assert_eq!(done(r, true), ("Hi there".to_owned(), true));
        let mut r = Reassembler::new(Some(ChatRoute::Responses), Framing::Sse, 5);
        r.push(stream.as_bytes());
        assert_eq!(
            done(r, true),
            ("Hi th".to_owned(), false),
            "over the cap: cut, incomplete"
        );
        // Past the cap the counts are still read.
        let mut r = Reassembler::new(Some(ChatRoute::ChatCompletions), Framing::Sse, 3);
        r.push(b"data: {\"choices\":[{\"delta\":{\"content\":\"long reply\"}}]}\n\n");
        r.push(
            b"data: {\"choices\":[],\"usage\":{\"prompt_tokens\":2,\"completion_tokens\":9}}\n\n",
        );
        let reply = r.finish(true);
        assert_eq!((reply.text.as_str(), reply.truncated), ("lon", true));
        assert_eq!(
            reply.counts,
            Some(crate::metering::usage::Counts {
                prompt: 2,
                completion: 9
            })
        );
        let mut r = Reassembler::new(Some(ChatRoute::Responses), Framing::Sse, 8);
        r.push(stream.as_bytes());
        assert_eq!(
            done(r, true),
            ("Hi there".to_owned(), true),
            "at the cap: whole"
        );
    }
}
