//! Signature Agent Cards (draft-meunier-webbotauth-registry-03, Client ID Metadata
//! Document shape) and registry lists (`registry.txt`).

use oba_httpsig::jwk::JwkSet;
use serde::{Deserialize, Serialize};

use crate::Error;

/// A Signature Agent Card: who the bot is and where its keys are.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct SignatureAgentCard {
    /// The card's own URL (CIMD: must equal the URL it was fetched from).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// Display name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_name: Option<String>,
    /// Homepage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_uri: Option<String>,
    /// Logo.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logo_uri: Option<String>,
    /// Contacts (`mailto:` URIs, usually).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub contacts: Vec<String>,
    /// Where the keys are (a JWK Set / key directory).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_uri: Option<String>,
    /// Inline keys (exclusive with `jwks_uri`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks: Option<JwkSet>,
    /// The Web Bot Auth metadata (`expected-user-agent`, `rfc9309-product-token`,
    /// `trigger`, `purpose`, ...), kept as received.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub web_bot_auth: Option<serde_json::Map<String, serde_json::Value>>,
    /// Other members.
    #[serde(flatten)]
    pub other: serde_json::Map<String, serde_json::Value>,
}

impl SignatureAgentCard {
    /// Parses and validates a card fetched from `url`: `client_id` present and equal to
    /// `url` (simple string comparison), not both `jwks` and `jwks_uri`, https URIs.
    pub fn parse(json: &[u8], url: &str) -> Result<Self, Error> {
        let card: SignatureAgentCard =
            serde_json::from_slice(json).map_err(|e| Error::Card(format!("not a card: {e}")))?;
        card.validate(url)?;
        Ok(card)
    }

    /// Validates the card as served from `url`.
    pub fn validate(&self, url: &str) -> Result<(), Error> {
        match &self.client_id {
            Some(id) if id == url => {}
            Some(_) => return Err(Error::Card("client_id must match the card URL".into())),
            None => return Err(Error::Card("client_id is required".into())),
        }
        if self.jwks.is_some() && self.jwks_uri.is_some() {
            return Err(Error::Card(
                "card must not contain both jwks and jwks_uri".into(),
            ));
        }
        if self.jwks.is_none() && self.jwks_uri.is_none() {
            return Err(Error::Card("card has neither jwks nor jwks_uri".into()));
        }
        for (name, u) in [
            ("client_id", self.client_id.as_deref()),
            ("jwks_uri", self.jwks_uri.as_deref()),
        ] {
            if let Some(u) = u {
                https_url(u).map_err(|e| Error::Card(format!("{name}: {e}")))?;
            }
        }
        if let Some(ips) = self
            .web_bot_auth
            .as_ref()
            .and_then(|w| w.get("ips_uri"))
            .and_then(|v| v.as_str())
        {
            https_url(ips).map_err(|e| Error::Card(format!("ips_uri: {e}")))?;
        }
        Ok(())
    }
}

fn https_url(u: &str) -> Result<url::Url, String> {
    let url = url::Url::parse(u).map_err(|e| format!("{u:?} is not a URL: {e}"))?;
    if url.scheme() != "https" || url.host_str().is_none_or(str::is_empty) {
        return Err(format!("{u:?} must use https"));
    }
    Ok(url)
}

/// One entry of a registry list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegistryEntry {
    /// An https URL of a card or key directory.
    Url(String),
    /// An inline card (`data:application/json,...`).
    Inline(String),
}

impl RegistryEntry {
    /// The entry as written.
    pub fn as_str(&self) -> &str {
        match self {
            RegistryEntry::Url(s) | RegistryEntry::Inline(s) => s,
        }
    }
}

/// Parses a registry list: one https URL (or `data:` inline card) per line, `#` starts a
/// comment, blank lines ignored. Any other entry is an error naming its line.
pub fn parse_registry_list(text: &str) -> Result<Vec<RegistryEntry>, Error> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = if line.starts_with("data:") {
            line.trim()
        } else {
            line.split('#').next().unwrap_or_default().trim()
        };
        if line.is_empty() {
            continue;
        }
        if line.starts_with("data:") {
            out.push(RegistryEntry::Inline(line.to_owned()));
            continue;
        }
        https_url(line).map_err(|_| {
            Error::Card(format!(
                "line {}: registry entries must use https: {line:?}",
                n + 1
            ))
        })?;
        out.push(RegistryEntry::Url(line.to_owned()));
    }
    Ok(out)
}
