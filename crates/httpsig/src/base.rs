//! The signature base (RFC 9421 section 2.5) and component values (sections 2.1, 2.2).

use base64::Engine;

use crate::component::{Component, ComponentName, Derived};
use crate::error::{Error, Reason};
use crate::message::HttpMessage;
use crate::params::SignatureParams;

/// Builds the signature base for `params` over `message`.
///
/// `related` is the request that a response answers; it is needed when a component has
/// the `req` parameter (RFC 9421 2.4). Components are written in the order covered and
/// `@signature-params` exactly as received: the base is byte-exact with the signer's.
///
/// ```
/// use oba_httpsig::{signature_base, Message, SignatureParams};
/// let m = Message::parse(b"GET /foo?a=b HTTP/1.1\r\nHost: Example.COM:443\r\n\r\n")?;
/// let p: SignatureParams = r#"("@method" "@authority" "@query");created=1"#.parse()?;
/// let base = signature_base(&m, None, &p)?;
/// assert_eq!(
///     String::from_utf8(base).unwrap(),
///     "\"@method\": GET\n\"@authority\": example.com\n\"@query\": ?a=b\n\
///      \"@signature-params\": (\"@method\" \"@authority\" \"@query\");created=1"
/// );
/// # Ok::<(), oba_httpsig::Error>(())
/// ```
pub fn signature_base<M: HttpMessage + ?Sized>(
    message: &M,
    related: Option<&dyn HttpMessage>,
    params: &SignatureParams,
) -> Result<Vec<u8>, Error> {
    let mut out = Vec::with_capacity(64 * (params.components().len() + 1));
    for c in params.components() {
        let target: &dyn HttpMessage = if c.is_req() {
            related.ok_or_else(|| {
                Error::new(
                    Reason::MissingComponent,
                    format!("{c} needs the related request, which was not given"),
                )
            })?
        } else {
            &DynRef(message)
        };
        out.extend_from_slice(c.as_str().as_bytes());
        out.extend_from_slice(b": ");
        let start = out.len();
        component_value(target, c, &mut out)?;
        if out[start..].iter().any(|&b| b == b'\n' || b == b'\r') {
            return Err(Error::new(
                Reason::InvalidComponent,
                format!("the value of {c} contains a line break"),
            ));
        }
        out.push(b'\n');
    }
    out.extend_from_slice(b"\"@signature-params\": ");
    out.extend_from_slice(params.as_str().as_bytes());
    Ok(out)
}

/// Writes the value of one component (without its identifier) to `out`.
///
/// The `req` parameter is not looked at here: pass the related request as `message`.
pub fn component_value(
    message: &dyn HttpMessage,
    c: &Component,
    out: &mut Vec<u8>,
) -> Result<(), Error> {
    match c.name() {
        ComponentName::Derived(d) => derived_value(message, *d, c, out),
        ComponentName::Field(name) => field_value(message, name, c, out),
    }
}

/// Lets `&M` (possibly unsized) be used as `&dyn HttpMessage`.
struct DynRef<'a, M: ?Sized>(&'a M);

impl<M: HttpMessage + ?Sized> HttpMessage for DynRef<'_, M> {
    fn method(&self) -> Option<&str> {
        self.0.method()
    }
    fn scheme(&self) -> Option<&str> {
        self.0.scheme()
    }
    fn authority(&self) -> Option<&str> {
        self.0.authority()
    }
    fn path(&self) -> Option<&str> {
        self.0.path()
    }
    fn query(&self) -> Option<&str> {
        self.0.query()
    }
    fn request_target(&self) -> Option<&str> {
        self.0.request_target()
    }
    fn status(&self) -> Option<u16> {
        self.0.status()
    }
    fn field_lines(&self, name: &str, f: &mut dyn FnMut(&[u8])) {
        self.0.field_lines(name, f)
    }
    fn trailer_lines(&self, name: &str, f: &mut dyn FnMut(&[u8])) {
        self.0.trailer_lines(name, f)
    }
}

fn missing(c: &Component, what: &str) -> Error {
    Error::new(Reason::MissingComponent, format!("{c}: {what}"))
}

fn request_only(c: &Component) -> Error {
    Error::new(
        Reason::InvalidComponent,
        format!("{c} applies to requests only (use ;req on a response)"),
    )
}

fn derived_value(
    m: &dyn HttpMessage,
    d: Derived,
    c: &Component,
    out: &mut Vec<u8>,
) -> Result<(), Error> {
    if d == Derived::Status {
        let s = m.status().ok_or_else(|| {
            Error::new(
                Reason::InvalidComponent,
                "@status applies to responses only",
            )
        })?;
        if !(100..=999).contains(&s) {
            return Err(missing(c, "status code is not three digits"));
        }
        out.extend_from_slice(s.to_string().as_bytes());
        return Ok(());
    }
    let method = m.method().ok_or_else(|| request_only(c))?;
    match d {
        Derived::Method => out.extend_from_slice(method.as_bytes()),
        Derived::Authority => write_authority(m, c, out)?,
        Derived::Scheme => write_scheme(m, c, out)?,
        Derived::TargetUri => {
            if let Some(rt) = m.request_target().filter(|t| t.contains("://")) {
                out.extend_from_slice(rt.as_bytes());
            } else {
                write_scheme(m, c, out)?;
                out.extend_from_slice(b"://");
                write_authority(m, c, out)?;
                write_path(m, c, out)?;
                if let Some(q) = m.query() {
                    out.push(b'?');
                    out.extend_from_slice(q.as_bytes());
                }
            }
        }
        Derived::RequestTarget => match m.request_target() {
            Some(rt) => out.extend_from_slice(rt.as_bytes()),
            None => {
                write_path(m, c, out)?;
                if let Some(q) = m.query() {
                    out.push(b'?');
                    out.extend_from_slice(q.as_bytes());
                }
            }
        },
        Derived::Path => write_path(m, c, out)?,
        Derived::Query => {
            out.push(b'?');
            if let Some(q) = m.query() {
                out.extend_from_slice(q.as_bytes());
            }
        }
        Derived::QueryParam => {
            let want = c.query_param_name().unwrap_or_default();
            let mut value = None;
            for pair in m.query().unwrap_or_default().split('&') {
                if pair.is_empty() {
                    continue;
                }
                let (n, v) = pair.split_once('=').unwrap_or((pair, ""));
                if reencode(n) == want {
                    if value.is_some() {
                        // RFC 9421 2.2.8: a repeated name MUST NOT be covered (cover @query).
                        return Err(Error::new(
                            Reason::InvalidComponent,
                            format!(
                                "{c}: the parameter occurs more than once; cover @query instead"
                            ),
                        ));
                    }
                    value = Some(reencode(v));
                }
            }
            let value = value.ok_or_else(|| missing(c, "query parameter absent"))?;
            out.extend_from_slice(value.as_bytes());
        }
        Derived::Status => unreachable!("handled above"),
    }
    Ok(())
}

fn write_scheme(m: &dyn HttpMessage, c: &Component, out: &mut Vec<u8>) -> Result<(), Error> {
    let s = m.scheme().ok_or_else(|| missing(c, "scheme unknown"))?;
    out.extend(s.bytes().map(|b| b.to_ascii_lowercase()));
    Ok(())
}

fn write_path(m: &dyn HttpMessage, c: &Component, out: &mut Vec<u8>) -> Result<(), Error> {
    match m.path() {
        Some("") => out.push(b'/'),
        Some(p) => out.extend_from_slice(p.as_bytes()),
        None => return Err(missing(c, "request has no path")),
    }
    Ok(())
}

/// `@authority`: lower-cased, default port for the scheme removed (RFC 9421 2.2.3).
fn write_authority(m: &dyn HttpMessage, c: &Component, out: &mut Vec<u8>) -> Result<(), Error> {
    let a = m
        .authority()
        .filter(|a| !a.is_empty())
        .ok_or_else(|| missing(c, "no Host / :authority"))?;
    // userinfo is not part of the HTTP authority (RFC 9110 4.2.4).
    let a = a.rsplit_once('@').map_or(a, |(_, h)| h);
    let default_port = match m.scheme() {
        Some(s) if s.eq_ignore_ascii_case("https") => Some(":443"),
        Some(s) if s.eq_ignore_ascii_case("http") => Some(":80"),
        _ => None,
    };
    let a = match default_port {
        Some(p) if a.ends_with(p) && !a.ends_with(']') => &a[..a.len() - p.len()],
        _ => a,
    };
    out.extend(a.bytes().map(|b| b.to_ascii_lowercase()));
    Ok(())
}

/// Decodes as `application/x-www-form-urlencoded` and re-encodes with percent-encoding
/// (space as `%20`), per RFC 9421 2.2.8.
fn reencode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => decoded.push(b' '),
            b'%' if i + 2 < bytes.len()
                && hex(bytes[i + 1]).is_some()
                && hex(bytes[i + 2]).is_some() =>
            {
                decoded.push(hex(bytes[i + 1]).unwrap_or(0) * 16 + hex(bytes[i + 2]).unwrap_or(0));
                i += 2;
            }
            b => decoded.push(b),
        }
        i += 1;
    }
    let mut out = String::with_capacity(decoded.len() * 3);
    for b in decoded {
        if b.is_ascii_alphanumeric() || matches!(b, b'*' | b'-' | b'.' | b'_') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn field_value(
    m: &dyn HttpMessage,
    name: &str,
    c: &Component,
    out: &mut Vec<u8>,
) -> Result<(), Error> {
    let read = |f: &mut dyn FnMut(&[u8])| {
        if c.is_tr() {
            m.trailer_lines(name, f);
        } else {
            m.field_lines(name, f);
        }
    };
    if !c.is_bs() && !c.is_sf() && c.dict_key().is_none() {
        // The common case, written straight into the base: lines trimmed, joined by ", ".
        let mut n = 0usize;
        read(&mut |v: &[u8]| {
            if n > 0 {
                out.extend_from_slice(b", ");
            }
            out.extend_from_slice(crate::message::trim_ows(v));
            n += 1;
        });
        if n == 0 {
            return Err(missing(c, "field absent from the message"));
        }
        return Ok(());
    }
    let mut lines: Vec<Vec<u8>> = Vec::new();
    read(&mut |v: &[u8]| lines.push(crate::message::trim_ows(v).to_vec()));
    if lines.is_empty() {
        return Err(missing(c, "field absent from the message"));
    }
    if c.is_bs() {
        let mut s = String::new();
        for (i, l) in lines.iter().enumerate() {
            if i > 0 {
                s.push_str(", ");
            }
            s.push(':');
            base64::engine::general_purpose::STANDARD.encode_string(l, &mut s);
            s.push(':');
        }
        out.extend_from_slice(s.as_bytes());
        return Ok(());
    }
    let combined = lines.join(&b", "[..]);
    if let Some(key) = c.dict_key() {
        let dict: sfv::Dictionary = sfv::Parser::new(&combined).parse().map_err(|e| {
            Error::new(
                Reason::MissingComponent,
                format!("{c}: the field is not a Dictionary: {e}"),
            )
        })?;
        let member = dict
            .get(key)
            .ok_or_else(|| missing(c, "dictionary member absent"))?;
        let list: sfv::List = vec![member.clone()];
        let s = sfv::FieldType::serialize(&list).unwrap_or_default();
        out.extend_from_slice(s.as_bytes());
    } else if c.is_sf() {
        out.extend_from_slice(strict_sf(&combined, c)?.as_bytes());
    } else {
        out.extend_from_slice(&combined);
    }
    Ok(())
}

/// Strict re-serialisation of a structured field whose type is not declared: tried as a
/// List, then a Dictionary, then an Item. A value that parses as both a List and a
/// Dictionary serialises the same way under both, except when a key repeats — where the
/// Dictionary reading would drop members (RFC 8941: last one wins). Trying the List first
/// keeps every member covered, so nothing can be added to a List field unsigned.
fn strict_sf(v: &[u8], c: &Component) -> Result<String, Error> {
    use sfv::FieldType;
    if let Ok(l) = sfv::Parser::new(v).parse::<sfv::List>() {
        return Ok(l.serialize().unwrap_or_default());
    }
    if let Ok(d) = sfv::Parser::new(v).parse::<sfv::Dictionary>() {
        return Ok(d.serialize().unwrap_or_default());
    }
    if let Ok(i) = sfv::Parser::new(v).parse::<sfv::Item>() {
        return Ok(i.serialize());
    }
    Err(Error::new(
        Reason::MissingComponent,
        format!("{c}: the field is not a structured field"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_query_param_is_refused() {
        let m = crate::Message::parse(b"GET /p?a=1&b=2&a=3 HTTP/1.1\nHost: h\n\n").unwrap();
        let c = Component::query_param("a").unwrap();
        let err = component_value(&m, &c, &mut Vec::new()).unwrap_err();
        assert_eq!(err.reason(), Reason::InvalidComponent);
        let b = Component::query_param("b").unwrap();
        let mut out = Vec::new();
        component_value(&m, &b, &mut out).unwrap();
        assert_eq!(out, b"2");
    }

    #[test]
    fn reencodes_query_params() {
        assert_eq!(
            reencode("this%20is%20a%20big%0Amultiline%20value"),
            "this%20is%20a%20big%0Amultiline%20value"
        );
        assert_eq!(reencode("with+plus+whitespace"), "with%20plus%20whitespace");
        assert_eq!(reencode("fa%C3%A7ade%22%3A%20"), "fa%C3%A7ade%22%3A%20");
        assert_eq!(reencode("100%"), "100%25");
        assert_eq!(reencode("%zz"), "%25zz");
    }
}
