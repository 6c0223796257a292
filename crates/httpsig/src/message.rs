//! The sans-IO view of an HTTP message ([`HttpMessage`]) and an owned implementation
//! ([`Message`]) that parses and prints raw HTTP/1.1 messages.

use std::fmt;

use crate::error::Error;

/// What the signature base needs from an HTTP message.
///
/// Implement it for your own message type; adapters for `http::Request` / `http::Response`
/// are in [`crate::http`] (feature `http`). Derived values are returned as received:
/// normalisation (lower-casing `@authority`, dropping default ports, `?` for `@query`)
/// is done by the signature base, so every implementation gets it right.
pub trait HttpMessage {
    /// The request method (`None` for a response).
    fn method(&self) -> Option<&str>;
    /// The scheme the request was (or will be) received over, e.g. `https`.
    fn scheme(&self) -> Option<&str>;
    /// The authority: the `Host` header (HTTP/1.1) or `:authority` (HTTP/2, HTTP/3), or the
    /// authority of an absolute-form target.
    fn authority(&self) -> Option<&str>;
    /// The path of the target URI, percent-encoding untouched (`None` for `*` or CONNECT).
    fn path(&self) -> Option<&str>;
    /// The query without its leading `?`; `None` when there is no `?` at all.
    fn query(&self) -> Option<&str>;
    /// The request target exactly as in the request line, when it is not in origin form
    /// (absolute, authority or asterisk form). `None` means origin form (path + query).
    fn request_target(&self) -> Option<&str> {
        None
    }
    /// The status code (`None` for a request).
    fn status(&self) -> Option<u16>;
    /// Calls `f` with the value of every field line named `name` (lower-case), in order.
    fn field_lines(&self, name: &str, f: &mut dyn FnMut(&[u8]));
    /// Calls `f` with the value of every trailer field line named `name`, in order.
    fn trailer_lines(&self, name: &str, f: &mut dyn FnMut(&[u8])) {
        let _ = (name, f);
    }
}

impl<T: HttpMessage + ?Sized> HttpMessage for &T {
    fn method(&self) -> Option<&str> {
        (**self).method()
    }
    fn scheme(&self) -> Option<&str> {
        (**self).scheme()
    }
    fn authority(&self) -> Option<&str> {
        (**self).authority()
    }
    fn path(&self) -> Option<&str> {
        (**self).path()
    }
    fn query(&self) -> Option<&str> {
        (**self).query()
    }
    fn request_target(&self) -> Option<&str> {
        (**self).request_target()
    }
    fn status(&self) -> Option<u16> {
        (**self).status()
    }
    fn field_lines(&self, name: &str, f: &mut dyn FnMut(&[u8])) {
        (**self).field_lines(name, f)
    }
    fn trailer_lines(&self, name: &str, f: &mut dyn FnMut(&[u8])) {
        (**self).trailer_lines(name, f)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Start {
    Request {
        method: String,
        target: String,
        path: Option<String>,
        query: Option<String>,
        target_authority: Option<String>,
        origin_form: bool,
    },
    Response {
        status: u16,
        reason: String,
    },
}

/// An owned HTTP message: start line, header fields, body and trailers.
///
/// It parses raw HTTP/1.1 text (CRLF or LF line ends, obs-fold, chunked bodies with
/// trailers) and prints it back with added fields, so the CLI and tests can work on files.
///
/// ```
/// use oba_httpsig::{HttpMessage, Message};
/// let m = Message::parse(b"GET /a?b=c HTTP/1.1\r\nHost: Example.com\r\n\r\n")?;
/// assert_eq!(m.method(), Some("GET"));
/// assert_eq!(m.query(), Some("b=c"));
/// # Ok::<(), oba_httpsig::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    start: Start,
    version: String,
    scheme: String,
    fields: Fields,
    trailers: Fields,
    /// The body as transmitted (still chunked if it was).
    raw_body: Vec<u8>,
    /// The decoded content.
    body: Vec<u8>,
    crlf: bool,
}

impl Message {
    /// A request with an origin-form or absolute-form target; scheme `https`.
    pub fn request(method: &str, target: &str) -> Result<Self, Error> {
        let mut m = Message {
            start: Start::Response {
                status: 0,
                reason: String::new(),
            },
            version: "HTTP/1.1".into(),
            scheme: "https".into(),
            fields: Vec::new(),
            trailers: Vec::new(),
            raw_body: Vec::new(),
            body: Vec::new(),
            crlf: true,
        };
        m.start = parse_request_target(method, target)?;
        Ok(m)
    }

    /// A request as sent to an absolute URL (`https://host:port/path?query`): origin-form
    /// target, `Host` = the URL's authority (port kept, userinfo dropped), scheme from
    /// the URL — what a client signs before handing the request to its HTTP stack.
    ///
    /// ```
    /// use oba_httpsig::{HttpMessage, Message};
    /// let m = Message::request_to("GET", "http://127.0.0.1:8080/v1/models?x=1")?;
    /// assert_eq!((m.authority(), m.path(), m.query()), (Some("127.0.0.1:8080"), Some("/v1/models"), Some("x=1")));
    /// assert_eq!(m.request_target(), None, "origin form");
    /// # Ok::<(), oba_httpsig::Error>(())
    /// ```
    pub fn request_to(method: &str, url: &str) -> Result<Self, Error> {
        let not_absolute = || Error::malformed(format!("{url:?} is not an absolute http(s) URL"));
        // A fragment is never sent (RFC 9110 7.1).
        let url = url.split('#').next().unwrap_or_default();
        let (scheme, _) = url.split_once("://").ok_or_else(not_absolute)?;
        if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
            return Err(not_absolute());
        }
        let Start::Request {
            path,
            query,
            target_authority: Some(authority),
            ..
        } = parse_request_target(method, url)?
        else {
            return Err(not_absolute());
        };
        let authority = authority
            .rsplit_once('@')
            .map_or(authority.as_str(), |(_, h)| h);
        if authority.is_empty() {
            return Err(not_absolute());
        }
        let mut target = path.unwrap_or_else(|| "/".into());
        if let Some(q) = query {
            target.push('?');
            target.push_str(&q);
        }
        Ok(Message::request(method, &target)?
            .with_scheme(scheme)
            .with_header("Host", authority))
    }

    /// A response with the given status code.
    pub fn response(status: u16) -> Result<Self, Error> {
        if !(100..=999).contains(&status) {
            return Err(Error::malformed(format!(
                "status {status} is not three digits"
            )));
        }
        Ok(Message {
            start: Start::Response {
                status,
                reason: String::new(),
            },
            version: "HTTP/1.1".into(),
            scheme: "https".into(),
            fields: Vec::new(),
            trailers: Vec::new(),
            raw_body: Vec::new(),
            body: Vec::new(),
            crlf: true,
        })
    }

    /// Adds a header field line (builder style).
    pub fn with_header(mut self, name: &str, value: impl AsRef<[u8]>) -> Self {
        self.append_header(name, value);
        self
    }

    /// Adds a trailer field line (builder style).
    pub fn with_trailer(mut self, name: &str, value: impl AsRef<[u8]>) -> Self {
        self.trailers
            .push((name.to_owned(), trim_ows(value.as_ref()).to_vec()));
        self
    }

    /// Sets the body (builder style).
    pub fn with_body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self.raw_body = self.body.clone();
        self
    }

    /// Sets the scheme used for `@scheme` and `@target-uri` (builder style).
    pub fn with_scheme(mut self, scheme: &str) -> Self {
        self.scheme = scheme.to_ascii_lowercase();
        self
    }

    /// Sets the scheme used for `@scheme` and `@target-uri`.
    pub fn set_scheme(&mut self, scheme: &str) {
        self.scheme = scheme.to_ascii_lowercase();
    }

    /// Appends a header field line.
    pub fn append_header(&mut self, name: &str, value: impl AsRef<[u8]>) {
        self.fields
            .push((name.to_owned(), trim_ows(value.as_ref()).to_vec()));
    }

    /// Removes every header field line with this name (case-insensitive).
    pub fn remove_header(&mut self, name: &str) {
        self.fields.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
    }

    /// The header field lines, in order, names as received.
    pub fn headers(&self) -> impl Iterator<Item = (&str, &[u8])> {
        self.fields.iter().map(|(n, v)| (n.as_str(), v.as_slice()))
    }

    /// The combined value of a header field (lines joined with `, `), if present.
    pub fn header(&self, name: &str) -> Option<String> {
        let mut out: Option<Vec<u8>> = None;
        for (n, v) in &self.fields {
            if n.eq_ignore_ascii_case(name) {
                match &mut out {
                    Some(o) => {
                        o.extend_from_slice(b", ");
                        o.extend_from_slice(v);
                    }
                    None => out = Some(v.clone()),
                }
            }
        }
        out.map(|o| String::from_utf8_lossy(&o).into_owned())
    }

    /// The decoded body (de-chunked).
    pub fn body(&self) -> &[u8] {
        &self.body
    }

    /// True for a request.
    pub fn is_request(&self) -> bool {
        matches!(self.start, Start::Request { .. })
    }

    /// Parses a raw HTTP/1.1 message. A request must be in origin, absolute, authority
    /// or asterisk form; CRLF and bare LF line ends are both accepted.
    pub fn parse(input: &[u8]) -> Result<Self, Error> {
        let crlf = input.windows(2).any(|w| w == b"\r\n");
        let mut pos = 0;
        let start_line =
            next_line(input, &mut pos).ok_or_else(|| Error::malformed("empty message"))?;
        let start_line = std::str::from_utf8(start_line)
            .map_err(|_| Error::malformed("start line is not UTF-8"))?;
        let mut parts = start_line.splitn(3, ' ');
        let first = parts.next().unwrap_or_default();
        let second = parts
            .next()
            .ok_or_else(|| Error::malformed("start line has no target or status"))?;
        let third = parts.next();
        let (start, version) = if first.starts_with("HTTP/") {
            let status: u16 = second
                .parse()
                .ok()
                .filter(|s| (100..=999).contains(s) && second.len() == 3)
                .ok_or_else(|| Error::malformed(format!("bad status code {second:?}")))?;
            (
                Start::Response {
                    status,
                    reason: third.unwrap_or_default().to_owned(),
                },
                first.to_owned(),
            )
        } else {
            let version =
                third.ok_or_else(|| Error::malformed("request line has no HTTP version"))?;
            if !version.starts_with("HTTP/") || version.contains(' ') {
                return Err(Error::malformed(format!("bad HTTP version {version:?}")));
            }
            if first.is_empty() || !first.bytes().all(is_tchar) {
                return Err(Error::malformed(format!("bad method {first:?}")));
            }
            (parse_request_target(first, second)?, version.to_owned())
        };

        let mut fields = Vec::new();
        read_fields(input, &mut pos, &mut fields)?;
        let raw_body = input[pos.min(input.len())..].to_vec();
        let mut m = Message {
            start,
            version,
            scheme: "https".into(),
            fields,
            trailers: Vec::new(),
            body: Vec::new(),
            raw_body,
            crlf,
        };
        let chunked = m.header("transfer-encoding").is_some_and(|te| {
            te.to_ascii_lowercase()
                .split(',')
                .any(|t| t.trim() == "chunked")
        });
        if chunked {
            let (body, trailers) = dechunk(&m.raw_body)?;
            m.body = body;
            m.trailers = trailers;
        } else {
            m.body = m.raw_body.clone();
        }
        Ok(m)
    }

    /// Prints the message as HTTP/1.1 (with the line ends it was parsed with).
    pub fn to_bytes(&self) -> Vec<u8> {
        let eol: &[u8] = if self.crlf { b"\r\n" } else { b"\n" };
        let mut out = Vec::with_capacity(256 + self.raw_body.len());
        match &self.start {
            Start::Request { method, target, .. } => {
                out.extend_from_slice(format!("{method} {target} {}", self.version).as_bytes());
            }
            Start::Response { status, reason } => {
                out.extend_from_slice(format!("{} {status}", self.version).as_bytes());
                if !reason.is_empty() {
                    out.push(b' ');
                    out.extend_from_slice(reason.as_bytes());
                }
            }
        }
        out.extend_from_slice(eol);
        for (n, v) in &self.fields {
            out.extend_from_slice(n.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(v);
            out.extend_from_slice(eol);
        }
        out.extend_from_slice(eol);
        out.extend_from_slice(&self.raw_body);
        out
    }
}

impl fmt::Display for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&String::from_utf8_lossy(&self.to_bytes()))
    }
}

fn parse_request_target(method: &str, target: &str) -> Result<Start, Error> {
    let bad = || Error::malformed(format!("bad request target {target:?}"));
    if target.is_empty() || target.bytes().any(|b| b <= b' ' || b == 0x7f || b == b'#') {
        // No fragment: it is never sent on the wire (RFC 9112 3.2).
        return Err(bad());
    }
    let (path, query, target_authority, origin_form) = if target.starts_with('/') {
        let (p, q) = split_query(target);
        (Some(p.to_owned()), q.map(str::to_owned), None, true)
    } else if target == "*" {
        (None, None, None, false)
    } else if let Some((scheme, rest)) = target.split_once("://") {
        if scheme.is_empty()
            || !scheme
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b))
        {
            return Err(bad());
        }
        let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (auth, pq) = rest.split_at(end);
        let pq = pq.split('#').next().unwrap_or_default();
        let (p, q) = split_query(pq);
        let p = if p.is_empty() { "/" } else { p };
        (
            Some(p.to_owned()),
            q.map(str::to_owned),
            Some(auth.to_owned()),
            false,
        )
    } else if method.eq_ignore_ascii_case("CONNECT") && target.contains(':') {
        (None, None, Some(target.to_owned()), false)
    } else {
        return Err(bad());
    };
    Ok(Start::Request {
        method: method.to_owned(),
        target: target.to_owned(),
        path,
        query,
        target_authority,
        origin_form,
    })
}

fn split_query(pq: &str) -> (&str, Option<&str>) {
    match pq.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (pq, None),
    }
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// The next line (without its CR LF / LF), advancing `pos`; `None` at the end.
fn next_line<'a>(input: &'a [u8], pos: &mut usize) -> Option<&'a [u8]> {
    if *pos >= input.len() {
        return None;
    }
    let rest = &input[*pos..];
    let (line, adv) = match rest.iter().position(|&b| b == b'\n') {
        Some(i) => (&rest[..i], i + 1),
        None => (rest, rest.len()),
    };
    *pos += adv;
    Some(line.strip_suffix(b"\r").unwrap_or(line))
}

/// A field value (or an obs-fold continuation of one) without surrounding whitespace;
/// a bare CR or a NUL is refused (RFC 9110 5.5).
fn field_value(raw: &[u8]) -> Result<&[u8], Error> {
    let value = trim_ows(raw);
    if value.iter().any(|&b| b == b'\r' || b == 0) {
        return Err(Error::malformed("bare CR or NUL in a field value"));
    }
    Ok(value)
}

fn read_fields(input: &[u8], pos: &mut usize, out: &mut Fields) -> Result<(), Error> {
    while let Some(line) = next_line(input, pos) {
        if line.is_empty() {
            return Ok(());
        }
        if line[0] == b' ' || line[0] == b'\t' {
            // obs-fold (RFC 9112 5.2): replace with a single space (RFC 9421 2.1).
            let (_, v) = out
                .last_mut()
                .ok_or_else(|| Error::malformed("continuation line before any field"))?;
            let cont = field_value(line)?;
            if !cont.is_empty() {
                if !v.is_empty() {
                    v.push(b' ');
                }
                v.extend_from_slice(cont);
            }
            continue;
        }
        let colon = line
            .iter()
            .position(|&b| b == b':')
            .ok_or_else(|| Error::malformed("field line without a colon"))?;
        let name = &line[..colon];
        if name.is_empty() || !name.iter().all(|&b| is_tchar(b)) {
            return Err(Error::malformed(format!(
                "bad field name {:?}",
                String::from_utf8_lossy(name)
            )));
        }
        let value = field_value(&line[colon + 1..])?;
        let name = String::from_utf8_lossy(name).into_owned();
        out.push((name, value.to_vec()));
    }
    Ok(())
}

type Fields = Vec<(String, Vec<u8>)>;

fn dechunk(raw: &[u8]) -> Result<(Vec<u8>, Fields), Error> {
    let mut body = Vec::new();
    let mut pos = 0;
    loop {
        let line =
            next_line(raw, &mut pos).ok_or_else(|| Error::malformed("chunked body ends early"))?;
        let size_str = std::str::from_utf8(line)
            .ok()
            .map(|l| l.split(';').next().unwrap_or_default().trim())
            .ok_or_else(|| Error::malformed("bad chunk size line"))?;
        let size = usize::from_str_radix(size_str, 16)
            .map_err(|_| Error::malformed(format!("bad chunk size {size_str:?}")))?;
        if size == 0 {
            break;
        }
        let end = pos
            .checked_add(size)
            .filter(|&e| e <= raw.len())
            .ok_or_else(|| Error::malformed("chunk longer than the body"))?;
        body.extend_from_slice(&raw[pos..end]);
        pos = end;
        // The CRLF (or LF) that ends the chunk data.
        match next_line(raw, &mut pos) {
            Some([]) | None => {}
            Some(_) => return Err(Error::malformed("chunk data longer than its size")),
        }
    }
    let mut trailers = Vec::new();
    read_fields(raw, &mut pos, &mut trailers)?;
    Ok((body, trailers))
}

/// Trims optional whitespace (SP / HTAB) at both ends (RFC 9110 5.5).
pub(crate) fn trim_ows(v: &[u8]) -> &[u8] {
    let start = v
        .iter()
        .position(|&b| b != b' ' && b != b'\t')
        .unwrap_or(v.len());
    let end = v
        .iter()
        .rposition(|&b| b != b' ' && b != b'\t')
        .map_or(start, |e| e + 1);
    &v[start..end]
}

impl HttpMessage for Message {
    fn method(&self) -> Option<&str> {
        match &self.start {
            Start::Request { method, .. } => Some(method),
            Start::Response { .. } => None,
        }
    }
    fn scheme(&self) -> Option<&str> {
        match &self.start {
            Start::Request { .. } => Some(&self.scheme),
            Start::Response { .. } => None,
        }
    }
    fn authority(&self) -> Option<&str> {
        match &self.start {
            Start::Request {
                target_authority, ..
            } => {
                let mut host = None;
                for (n, v) in &self.fields {
                    if n.eq_ignore_ascii_case("host") {
                        host = std::str::from_utf8(v).ok();
                        break;
                    }
                }
                // An absolute-form target wins over Host (RFC 9112 3.2.2).
                target_authority.as_deref().or(host)
            }
            Start::Response { .. } => None,
        }
    }
    fn path(&self) -> Option<&str> {
        match &self.start {
            Start::Request { path, .. } => path.as_deref(),
            Start::Response { .. } => None,
        }
    }
    fn query(&self) -> Option<&str> {
        match &self.start {
            Start::Request { query, .. } => query.as_deref(),
            Start::Response { .. } => None,
        }
    }
    fn request_target(&self) -> Option<&str> {
        match &self.start {
            Start::Request {
                target,
                origin_form: false,
                ..
            } => Some(target),
            _ => None,
        }
    }
    fn status(&self) -> Option<u16> {
        match &self.start {
            Start::Request { .. } => None,
            Start::Response { status, .. } => Some(*status),
        }
    }
    fn field_lines(&self, name: &str, f: &mut dyn FnMut(&[u8])) {
        for (n, v) in &self.fields {
            if n.eq_ignore_ascii_case(name) {
                f(v);
            }
        }
    }
    fn trailer_lines(&self, name: &str, f: &mut dyn FnMut(&[u8])) {
        for (n, v) in &self.trailers {
            if n.eq_ignore_ascii_case(name) {
                f(v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_request_forms() {
        let m =
            Message::parse(b"GET https://www.example.com/path?param=value HTTP/1.1\n\n").unwrap();
        assert_eq!(m.authority(), Some("www.example.com"));
        assert_eq!(m.path(), Some("/path"));
        assert_eq!(
            m.request_target(),
            Some("https://www.example.com/path?param=value")
        );
        let m = Message::parse(b"CONNECT www.example.com:80 HTTP/1.1\nHost: www.example.com\n")
            .unwrap();
        assert_eq!(m.path(), None);
        assert_eq!(m.request_target(), Some("www.example.com:80"));
        let m = Message::parse(b"OPTIONS * HTTP/1.1\nHost: a\n").unwrap();
        assert_eq!(m.request_target(), Some("*"));
    }

    #[test]
    fn request_to_an_absolute_url() {
        let m = Message::request_to("POST", "https://user@Example.com:8443/a/b?c=d#frag").unwrap();
        assert_eq!(m.header("host").as_deref(), Some("Example.com:8443"));
        assert_eq!(
            (m.path(), m.query(), m.scheme()),
            (Some("/a/b"), Some("c=d"), Some("https"))
        );
        let m = Message::request_to("GET", "http://h").unwrap();
        assert_eq!(m.path(), Some("/"));
        for bad in ["/relative", "ftp://h/x", "https:///x", "https://"] {
            assert!(Message::request_to("GET", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn folds_and_trims() {
        let m = Message::parse(b"HTTP/1.1 200 OK\r\nX:  a  \r\nY: b\r\n    c\r\n\r\nbody").unwrap();
        assert_eq!(m.header("x").unwrap(), "a");
        assert_eq!(m.header("y").unwrap(), "b c");
        assert_eq!(m.body(), b"body");
        assert_eq!(
            m.to_bytes(),
            b"HTTP/1.1 200 OK\r\nX: a\r\nY: b c\r\n\r\nbody"
        );
    }

    #[test]
    fn dechunks_with_trailers() {
        let m = Message::parse(
            b"HTTP/1.1 200 OK\nTransfer-Encoding: chunked\n\n4\nHTTP\n7\nMessage\n0\nExpires: x\n",
        )
        .unwrap();
        assert_eq!(m.body(), b"HTTPMessage");
        let mut got = Vec::new();
        m.trailer_lines("expires", &mut |v| got.push(v.to_vec()));
        assert_eq!(got, vec![b"x".to_vec()]);
    }

    #[test]
    fn rejects_garbage() {
        for bad in [
            &b""[..],
            b"GET",
            b"GET /x",
            b"GET x HTTP/1.1\n",
            b"GET /a#frag HTTP/1.1\n",
            b"GET /a HTTP/1.1 extra\n",
            b"GET /a HTTP/1.1\nX: a\rb\n",
            b"HTTP/1.1 20 OK\n",
            b"G T /x HTTP/1.1\n",
            b"GET /x HTTP/1.1\nno colon\n",
            b"GET /x HTTP/1.1\n folded first\n",
            b"HTTP/1.1 200 OK\nTransfer-Encoding: chunked\n\nzz\n",
            b"HTTP/1.1 200 OK\nTransfer-Encoding: chunked\n\nffffffffffffffffff\n",
            b"HTTP/1.1 200 OK\nTransfer-Encoding: chunked\n\n10\nab\n",
        ] {
            assert!(
                Message::parse(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
