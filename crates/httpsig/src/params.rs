//! Signature parameters and the `Signature-Input` / `Signature` fields (RFC 9421 2.3, 4.1, 4.2).

use std::fmt;

use sfv::BareItem;

use crate::component::Component;
use crate::error::{Error, Reason};
use crate::sf::{self, Params, SfEntry};

/// The covered components and the signature parameters of one signature, in the order
/// they were received (or chosen by the signer). This is the value of `@signature-params`.
///
/// ```
/// use oba_httpsig::SignatureParams;
/// let p: SignatureParams =
///     r#"("@method" "@authority");keyid="k";created=1618884475"#.parse()?;
/// assert_eq!(p.created(), Some(1618884475));
/// // Serialised again in the received order, never a canonical one.
/// assert_eq!(p.to_string(), r#"("@method" "@authority");keyid="k";created=1618884475"#);
/// # Ok::<(), oba_httpsig::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct SignatureParams {
    components: Vec<Component>,
    params: Params,
    serialized: String,
}

impl SignatureParams {
    /// Signature parameters covering `components`, with no parameters yet.
    pub fn new(components: Vec<Component>) -> Result<Self, Error> {
        Self::build(components, Vec::new())
    }

    pub(crate) fn build(components: Vec<Component>, params: Params) -> Result<Self, Error> {
        if let Some(dup) = sf::first_duplicate(components.iter().map(Component::as_str)) {
            return Err(Error::new(
                Reason::DuplicateComponent,
                format!("{dup} is covered twice"),
            ));
        }
        if let Some(dup) = sf::first_duplicate(params.iter().map(|(k, _)| k.as_str())) {
            return Err(Error::new(
                Reason::DuplicateParameter,
                format!("parameter {dup:?} repeated"),
            ));
        }
        for (k, v) in &params {
            let ok = match k.as_str() {
                "created" | "expires" => matches!(v, BareItem::Integer(_)),
                "nonce" | "alg" | "keyid" | "tag" => matches!(v, BareItem::String(_)),
                _ => true, // extension parameters are kept and covered as received
            };
            if !ok {
                return Err(Error::malformed(format!(
                    "signature parameter {k:?} has the wrong type"
                )));
            }
        }
        let mut s = String::with_capacity(32 * (components.len() + 1));
        s.push('(');
        for (i, c) in components.iter().enumerate() {
            if i > 0 {
                s.push(' ');
            }
            s.push_str(c.as_str());
        }
        s.push(')');
        sf::write_params(&mut s, &params);
        Ok(SignatureParams {
            components,
            params,
            serialized: s,
        })
    }

    pub(crate) fn from_entry(entry: SfEntry) -> Result<Self, Error> {
        let SfEntry::Inner(items, params) = entry else {
            return Err(Error::malformed(
                "a Signature-Input member must be an inner list",
            ));
        };
        if items.len() > MAX_COMPONENTS {
            return Err(Error::malformed(format!(
                "more than {MAX_COMPONENTS} covered components"
            )));
        }
        let components = items
            .into_iter()
            .map(Component::from_sf_item)
            .collect::<Result<Vec<_>, _>>()?;
        Self::build(components, params)
    }

    /// Sets (or replaces in place) a parameter, keeping the order of the others.
    fn set(self, name: &str, value: BareItem) -> Result<Self, Error> {
        let mut params = self.params;
        match params.iter_mut().find(|(k, _)| k == name) {
            Some((_, v)) => *v = value,
            None => params.push((name.to_owned(), value)),
        }
        Self::build(self.components, params)
    }

    fn string(v: &str, what: &str) -> Result<BareItem, Error> {
        sfv::String::from_string(v.to_owned())
            .map(BareItem::String)
            .map_err(|_| Error::malformed(format!("{what} must be printable ASCII")))
    }

    /// Adds `created` (builder style).
    pub fn with_created(self, unix: i64) -> Result<Self, Error> {
        let i =
            sfv::Integer::try_from(unix).map_err(|_| Error::malformed("created out of range"))?;
        self.set("created", BareItem::Integer(i))
    }
    /// Adds `expires` (builder style).
    pub fn with_expires(self, unix: i64) -> Result<Self, Error> {
        let i =
            sfv::Integer::try_from(unix).map_err(|_| Error::malformed("expires out of range"))?;
        self.set("expires", BareItem::Integer(i))
    }
    /// Adds `nonce` (builder style).
    pub fn with_nonce(self, nonce: &str) -> Result<Self, Error> {
        let v = Self::string(nonce, "nonce")?;
        self.set("nonce", v)
    }
    /// Adds `alg` (builder style).
    pub fn with_alg(self, alg: crate::Algorithm) -> Result<Self, Error> {
        let v = Self::string(alg.name(), "alg")?;
        self.set("alg", v)
    }
    /// Adds `keyid` (builder style).
    pub fn with_keyid(self, keyid: &str) -> Result<Self, Error> {
        let v = Self::string(keyid, "keyid")?;
        self.set("keyid", v)
    }
    /// Adds `tag` (builder style).
    pub fn with_tag(self, tag: &str) -> Result<Self, Error> {
        let v = Self::string(tag, "tag")?;
        self.set("tag", v)
    }

    /// Replaces all parameters by the ones written in `wire` (`created=1;keyid="k"`),
    /// in that order.
    pub fn with_params_str(self, wire: &str) -> Result<Self, Error> {
        let wire = wire.trim();
        let wire = wire.strip_prefix(';').unwrap_or(wire);
        if wire.is_empty() {
            return Self::build(self.components, Vec::new());
        }
        let item = sf::parse_item(format!("x;{wire}").as_bytes())
            .map_err(|e| Error::malformed(format!("bad signature parameters {wire:?}: {e}")))?;
        Self::build(self.components, item.params)
    }

    /// The covered components, in order.
    pub fn components(&self) -> &[Component] {
        &self.components
    }

    /// Does the signature cover this component?
    pub fn covers(&self, c: &Component) -> bool {
        self.components.iter().any(|x| x.as_str() == c.as_str())
    }

    fn get(&self, name: &str) -> Option<&BareItem> {
        self.params.iter().find(|(k, _)| k == name).map(|(_, v)| v)
    }

    fn get_str(&self, name: &str) -> Option<&str> {
        self.get(name)
            .and_then(|v| v.as_string())
            .map(|s| s.as_str())
    }

    /// `created`, in seconds since the epoch.
    pub fn created(&self) -> Option<i64> {
        self.get("created")
            .and_then(|v| v.as_integer())
            .map(i64::from)
    }
    /// `expires`, in seconds since the epoch.
    pub fn expires(&self) -> Option<i64> {
        self.get("expires")
            .and_then(|v| v.as_integer())
            .map(i64::from)
    }
    /// `nonce`.
    pub fn nonce(&self) -> Option<&str> {
        self.get_str("nonce")
    }
    /// `alg`, as written.
    pub fn alg(&self) -> Option<&str> {
        self.get_str("alg")
    }
    /// `keyid`.
    pub fn keyid(&self) -> Option<&str> {
        self.get_str("keyid")
    }
    /// `tag`.
    pub fn tag(&self) -> Option<&str> {
        self.get_str("tag")
    }
    /// The names of all parameters, in order.
    pub fn param_names(&self) -> impl Iterator<Item = &str> {
        self.params.iter().map(|(k, _)| k.as_str())
    }

    /// The serialised value, exactly as it appears on the `@signature-params` line.
    pub fn as_str(&self) -> &str {
        &self.serialized
    }
}

impl fmt::Display for SignatureParams {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.serialized)
    }
}

impl std::str::FromStr for SignatureParams {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        // An inner list is a valid dictionary member value: parse it as `x=<s>`.
        let d = sf::parse_dictionary(format!("x={s}").as_bytes())
            .map_err(|e| Error::malformed(format!("bad signature parameters: {e}")))?;
        match d.as_slice() {
            [_] => Self::from_entry(
                d.into_iter()
                    .next()
                    .map(|(_, e)| e)
                    .ok_or_else(|| Error::malformed("bad signature parameters"))?,
            ),
            _ => Err(Error::malformed("bad signature parameters")),
        }
    }
}

/// Most signatures (labels) accepted in one message.
pub const MAX_SIGNATURES: usize = 64;
/// Most components one signature may cover.
pub const MAX_COMPONENTS: usize = 64;

/// Parses the (combined) `Signature-Input` value into labelled parameters, in order.
/// Duplicate labels are an error (RFC 8941 would let the last one win silently), and so
/// are more than [`MAX_SIGNATURES`] labels or [`MAX_COMPONENTS`] components.
pub fn parse_signature_input(value: &[u8]) -> Result<Vec<(String, SignatureParams)>, Error> {
    let dict = sf::parse_dictionary(value)
        .map_err(|e| Error::malformed(format!("Signature-Input: {e}")))?;
    if dict.len() > MAX_SIGNATURES {
        return Err(Error::malformed(format!(
            "more than {MAX_SIGNATURES} signatures"
        )));
    }
    if let Some(dup) = sf::first_duplicate(dict.iter().map(|(k, _)| k.as_str())) {
        return Err(Error::new(
            Reason::DuplicateLabel,
            format!("label {dup:?} appears twice in Signature-Input"),
        ));
    }
    dict.into_iter()
        .map(|(k, e)| SignatureParams::from_entry(e).map(|p| (k, p)))
        .collect()
}

/// Parses the (combined) `Signature` value into labelled signature bytes, in order.
pub fn parse_signature(value: &[u8]) -> Result<Vec<(String, Vec<u8>)>, Error> {
    let dict =
        sf::parse_dictionary(value).map_err(|e| Error::malformed(format!("Signature: {e}")))?;
    if dict.len() > MAX_SIGNATURES {
        return Err(Error::malformed(format!(
            "more than {MAX_SIGNATURES} signatures"
        )));
    }
    if let Some(dup) = sf::first_duplicate(dict.iter().map(|(k, _)| k.as_str())) {
        return Err(Error::new(
            Reason::DuplicateLabel,
            format!("label {dup:?} appears twice in Signature"),
        ));
    }
    dict.into_iter()
        .map(|(k, e)| match e {
            SfEntry::Item(sf::SfItem {
                bare: BareItem::ByteSequence(b),
                ..
            }) => Ok((k, b)),
            _ => Err(Error::malformed(format!(
                "Signature member {k:?} is not a byte sequence"
            ))),
        })
        .collect()
}

/// Serialises one `Signature-Input` member: `label=(...);params`.
pub fn signature_input_member(label: &str, params: &SignatureParams) -> String {
    format!("{label}={}", params.as_str())
}

/// Serialises one `Signature` member: `label=:base64:`.
pub fn signature_member(label: &str, signature: &[u8]) -> String {
    use base64::Engine;
    format!(
        "{label}=:{}:",
        base64::engine::general_purpose::STANDARD.encode(signature)
    )
}

/// Checks that `label` is a valid dictionary key (RFC 8941 `key`).
pub(crate) fn check_label(label: &str) -> Result<(), Error> {
    sfv::KeyRef::from_str(label).map(|_| ()).map_err(|_| {
        Error::new(
            Reason::MalformedHeader,
            format!("{label:?} is not a valid label"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicate_labels_and_params_are_refused() {
        let e = parse_signature_input(br#"a=("@method");created=1, a=("@path")"#).unwrap_err();
        assert_eq!(e.reason(), Reason::DuplicateLabel);
        let e = parse_signature_input(br#"a=("@method");created=1;created=2"#).unwrap_err();
        assert_eq!(e.reason(), Reason::DuplicateParameter);
        let e = parse_signature_input(br#"a=("@method" "@method")"#).unwrap_err();
        assert_eq!(e.reason(), Reason::DuplicateComponent);
        let e = parse_signature(b"a=:AA==:, a=:AA==:").unwrap_err();
        assert_eq!(e.reason(), Reason::DuplicateLabel);
    }

    #[test]
    fn wrong_types_are_malformed() {
        for bad in [
            &br#"a=("@method");created="1""#[..],
            br#"a=("@method");keyid=k"#,
            br#"a="@method""#,
            br#"a=(@method)"#,
            br#"a=("@method");created=1.5"#,
        ] {
            assert!(parse_signature_input(bad).is_err());
        }
        assert!(parse_signature(b"a=\"x\"").is_err());
    }

    #[test]
    fn extreme_integers_do_not_panic() {
        let p = parse_signature_input(br#"a=();created=-1;expires=999999999999999"#).unwrap();
        assert_eq!(p[0].1.created(), Some(-1));
        assert!(parse_signature_input(br#"a=();created=9999999999999999"#).is_err());
    }

    #[test]
    fn params_str_keeps_order() {
        let p = SignatureParams::new(vec![])
            .unwrap()
            .with_params_str(r#"keyid="k";alg="ed25519";created=1"#)
            .unwrap();
        assert_eq!(p.as_str(), r#"();keyid="k";alg="ed25519";created=1"#);
    }
}
