//! The `Signature-Agent` field (draft-meunier-webbotauth-httpsig-protocol-02 section 4.1).
//!
//! Signers send a Dictionary (`sig1="https://agent.example"`) and cover the member of
//! their own label as `"signature-agent";key="sig1"`. Verifiers also accept, as
//! documented leniencies, the legacy sf-string form (`"https://agent.example"`, covered as
//! plain `"signature-agent"`) and the bare unquoted URL that some agents send today.

use url::Url;

use crate::Error;

/// How a member says where its keys are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AgentType {
    /// An origin whose `/.well-known/http-message-signatures-directory` holds the keys
    /// (the default).
    Directory,
    /// A direct JWK Set URI.
    JwksUri,
    /// A Signature Agent Card (Client ID Metadata Document) URI.
    Cimd,
}

impl AgentType {
    /// The `type` parameter value.
    pub fn as_str(self) -> &'static str {
        match self {
            AgentType::Directory => "directory",
            AgentType::JwksUri => "jwks_uri",
            AgentType::Cimd => "cimd",
        }
    }
}

/// The syntax a `Signature-Agent` value used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgentForm {
    /// An RFC 8941 Dictionary (what signers must send).
    Dictionary,
    /// A single sf-string (legacy drafts).
    LegacyString,
    /// A bare URL, not a structured field at all (seen in the wild).
    BareUrl,
}

/// One member of `Signature-Agent`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentMember {
    /// The dictionary key (empty for the legacy and bare forms, which belong to whatever
    /// signature covers the field).
    pub key: String,
    /// The URI as written.
    pub uri: String,
    /// Where the keys are.
    pub kind: AgentType,
}

/// A parsed `Signature-Agent` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignatureAgent {
    /// The syntax used.
    pub form: AgentForm,
    /// The members, in order.
    pub members: Vec<AgentMember>,
}

/// A usable agent: where to look the keys up.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AgentRef {
    /// The https URL (for `Directory`, the origin).
    pub url: Url,
    /// What the URL points at.
    pub kind: AgentType,
}

impl AgentRef {
    /// The URL to fetch: for a directory, the origin's well-known path.
    pub fn fetch_url(&self) -> Url {
        match self.kind {
            AgentType::Directory => {
                let mut u = self.url.clone();
                u.set_path(crate::directory::WELL_KNOWN_PATH);
                u
            }
            AgentType::JwksUri | AgentType::Cimd => self.url.clone(),
        }
    }
}

impl SignatureAgent {
    /// Parses a `Signature-Agent` field value.
    ///
    /// ```
    /// use oba_webbotauth::agent::{SignatureAgent, AgentForm, AgentType};
    /// let sa = SignatureAgent::parse(r#"sig1="https://signature-agent.test/jwks.json";type=jwks_uri"#)?;
    /// assert_eq!(sa.form, AgentForm::Dictionary);
    /// assert_eq!(sa.members[0].kind, AgentType::JwksUri);
    /// let legacy = SignatureAgent::parse(r#""https://signature-agent.test""#)?;
    /// assert_eq!(legacy.form, AgentForm::LegacyString);
    /// # Ok::<(), oba_webbotauth::Error>(())
    /// ```
    pub fn parse(value: &str) -> Result<Self, Error> {
        let value = value.trim();
        if value.is_empty() {
            return Err(Error::SignatureAgent("empty Signature-Agent".into()));
        }
        if value.starts_with('"') {
            let item: sfv::Item = sfv::Parser::new(value)
                .parse()
                .map_err(|e| Error::SignatureAgent(format!("bad legacy Signature-Agent: {e}")))?;
            let uri = item
                .bare_item
                .as_string()
                .ok_or_else(|| {
                    Error::SignatureAgent("legacy Signature-Agent is not a string".into())
                })?
                .as_str()
                .to_owned();
            return Ok(SignatureAgent {
                form: AgentForm::LegacyString,
                members: vec![AgentMember {
                    key: String::new(),
                    uri,
                    kind: AgentType::Directory,
                }],
            });
        }
        match sfv::Parser::new(value).parse::<sfv::Dictionary>() {
            Ok(dict) => {
                let mut members = Vec::with_capacity(dict.len());
                for (k, entry) in dict {
                    let sfv::ListEntry::Item(item) = entry else {
                        return Err(Error::SignatureAgent(format!(
                            "member {k:?} is not a string"
                        )));
                    };
                    let uri = item
                        .bare_item
                        .as_string()
                        .ok_or_else(|| {
                            Error::SignatureAgent(format!(
                                "member {:?} is not a string",
                                k.as_str()
                            ))
                        })?
                        .as_str()
                        .to_owned();
                    let kind = match item.params.get("type") {
                        None => AgentType::Directory,
                        Some(t) => {
                            let t = t
                                .as_token()
                                .map(|t| t.as_str().to_owned())
                                .or_else(|| t.as_string().map(|s| s.as_str().to_owned()))
                                .unwrap_or_default();
                            match t.as_str() {
                                "directory" => AgentType::Directory,
                                "jwks_uri" => AgentType::JwksUri,
                                "cimd" => AgentType::Cimd,
                                other => {
                                    return Err(Error::SignatureAgent(format!(
                                        "unknown member type {other:?}"
                                    )))
                                }
                            }
                        }
                    };
                    members.push(AgentMember {
                        key: k.as_str().to_owned(),
                        uri,
                        kind,
                    });
                }
                Ok(SignatureAgent {
                    form: AgentForm::Dictionary,
                    members,
                })
            }
            Err(e) => {
                // Leniency: a bare URL (`https://agent.example`), which is not an sf value.
                if (value.starts_with("https://") || value.starts_with("http://"))
                    && !value.bytes().any(|b| b <= b' ' || b == b'"' || b == b',')
                {
                    Ok(SignatureAgent {
                        form: AgentForm::BareUrl,
                        members: vec![AgentMember {
                            key: String::new(),
                            uri: value.to_owned(),
                            kind: AgentType::Directory,
                        }],
                    })
                } else {
                    Err(Error::SignatureAgent(format!("not a Dictionary: {e}")))
                }
            }
        }
    }

    /// The member a signature labelled `label` belongs to, given how it covers the field:
    /// `member_key` is the `key` parameter of its `"signature-agent"` component (`None`
    /// when it covers the whole field, which is right for the legacy and bare forms).
    pub fn member_for(&self, member_key: Option<&str>) -> Option<&AgentMember> {
        match (self.form, member_key) {
            (AgentForm::Dictionary, Some(k)) => self.members.iter().find(|m| m.key == k),
            (AgentForm::LegacyString | AgentForm::BareUrl, None) => self.members.first(),
            _ => None,
        }
    }
}

impl AgentMember {
    /// Checks that the member can be used: an https URI, and for the directory type an
    /// origin (no path beyond `/`, no query, no fragment, no userinfo). `allow_http_loopback`
    /// lets `http://127.0.0.1` / `http://localhost` through, for tests.
    pub fn resolve(&self, allow_http_loopback: bool) -> Result<AgentRef, Error> {
        let url = Url::parse(&self.uri)
            .map_err(|e| Error::SignatureAgent(format!("{:?} is not a URI: {e}", self.uri)))?;
        check_https(&url, allow_http_loopback)?;
        if !url.username().is_empty() || url.password().is_some() {
            return Err(Error::SignatureAgent("userinfo is not allowed".into()));
        }
        if self.kind == AgentType::Directory
            && (url.path() != "/" || url.query().is_some() || url.fragment().is_some())
        {
            return Err(Error::SignatureAgent(format!(
                "{:?}: a directory member must be an origin",
                self.uri
            )));
        }
        Ok(AgentRef {
            url,
            kind: self.kind,
        })
    }
}

/// https only; plain http to loopback only when allowed.
pub(crate) fn check_https(url: &Url, allow_http_loopback: bool) -> Result<(), Error> {
    match url.scheme() {
        "https" if url.host_str().is_some_and(|h| !h.is_empty()) => Ok(()),
        "http" if allow_http_loopback && is_loopback_host(url) => Ok(()),
        _ => Err(Error::SignatureAgent(format!("{url} is not an https URL"))),
    }
}

fn is_loopback_host(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(d)) => d == "localhost",
        Some(url::Host::Ipv4(a)) => a.is_loopback(),
        Some(url::Host::Ipv6(a)) => a.is_loopback(),
        None => false,
    }
}

/// Serialises the dictionary form of one member, as a signer sends it: an origin is a
/// key directory (`label="https://bot.example"`); a URL with a path is a JWK Set
/// (`label="https://registry.example/agents/x/jwks.json";type=jwks_uri`).
pub fn dictionary_member(label: &str, uri: &str) -> Result<String, Error> {
    let s = sfv::String::from_string(uri.to_owned())
        .map_err(|_| Error::SignatureAgent("URI is not printable ASCII".into()))?;
    let key = sfv::KeyRef::from_str(label)
        .map_err(|_| Error::SignatureAgent(format!("bad label {label:?}")))?;
    let is_origin = Url::parse(uri).is_ok_and(|u| u.path() == "/" && u.query().is_none());
    let mut ser = sfv::DictSerializer::new();
    let params = ser.bare_item(key, &s);
    if !is_origin {
        params.parameter(
            sfv::KeyRef::from_str("type").map_err(|_| Error::SignatureAgent("type".into()))?,
            sfv::TokenRef::from_str("jwks_uri")
                .map_err(|_| Error::SignatureAgent("type".into()))?,
        );
    }
    ser.finish()
        .ok_or_else(|| Error::SignatureAgent("empty dictionary".into()))
}
