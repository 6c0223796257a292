//! `Accept-Signature` (RFC 9421 section 5): asking for a signature, and signing as asked.

use sfv::BareItem;

use crate::component::Component;
use crate::error::{Error, Reason};
use crate::key::Signer;
use crate::params::SignatureParams;
use crate::sf::{self, Params, SfEntry};

/// One requested signature: a label, the components to cover and the parameters wanted.
///
/// A parameter given as a bare `true` (`;created`, `;nonce`) asks the signer to choose the
/// value; a parameter with a value (`;keyid="k"`, `;tag="app"`) must be used as given.
///
/// ```
/// use oba_httpsig::accept::{parse_accept_signature, SignatureRequest};
/// let reqs = parse_accept_signature(
///     r#"sig1=("@method" "@target-uri");keyid="k";created;tag="app-123""#)?;
/// assert_eq!(reqs[0].label(), "sig1");
/// let params = reqs[0].params_for(1618884475, None, "k", oba_httpsig::Algorithm::Ed25519)?;
/// assert_eq!(params.to_string(), r#"("@method" "@target-uri");keyid="k";created=1618884475;tag="app-123""#);
/// # Ok::<(), oba_httpsig::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct SignatureRequest {
    label: String,
    components: Vec<Component>,
    params: Params,
}

impl SignatureRequest {
    /// A request for a signature labelled `label` over `components`, with no parameters.
    pub fn new(label: &str, components: Vec<Component>) -> Result<Self, Error> {
        crate::params::check_label(label)?;
        SignatureParams::new(components.clone())?;
        Ok(SignatureRequest {
            label: label.to_owned(),
            components,
            params: Vec::new(),
        })
    }

    /// Asks for a parameter chosen by the signer (`;created`, `;nonce`, ...).
    pub fn with_param(mut self, name: &str) -> Result<Self, Error> {
        self.push(name, BareItem::Boolean(true))
    }

    /// Asks for a parameter with a fixed string value (`;keyid="k"`, `;tag="t"`).
    pub fn with_param_value(self, name: &str, value: &str) -> Result<Self, Error> {
        let v = sfv::String::from_string(value.to_owned())
            .map_err(|_| Error::malformed(format!("{name} must be printable ASCII")))?;
        let mut s = self;
        s.push(name, BareItem::String(v))
    }

    fn push(&mut self, name: &str, v: BareItem) -> Result<Self, Error> {
        sfv::KeyRef::from_str(name)
            .map_err(|_| Error::malformed(format!("{name:?} is not a parameter name")))?;
        if self.params.iter().any(|(k, _)| k == name) {
            return Err(Error::new(Reason::DuplicateParameter, name.to_owned()));
        }
        self.params.push((name.to_owned(), v));
        Ok(self.clone())
    }

    /// The label the signature must use.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// The components to cover, in order.
    pub fn components(&self) -> &[Component] {
        &self.components
    }

    /// The serialised member (`label=(...);params`).
    pub fn to_member(&self) -> String {
        let mut s = format!("{}=(", self.label);
        for (i, c) in self.components.iter().enumerate() {
            if i > 0 {
                s.push(' ');
            }
            s.push_str(c.as_str());
        }
        s.push(')');
        sf::write_params(&mut s, &self.params);
        s
    }

    /// The signature parameters that honour this request: same components, same
    /// parameters in the same order. `created` gets `now`; a bare `expires` gets
    /// `now + 300`; a bare `nonce` gets `nonce` or a random one; `keyid` and `alg`
    /// must match the signing key (else [`Reason::KeyIdMismatch`] / [`Reason::AlgorithmMismatch`]).
    pub fn params_for(
        &self,
        now: i64,
        nonce: Option<&str>,
        key_id: &str,
        alg: crate::Algorithm,
    ) -> Result<SignatureParams, Error> {
        let mut out: Params = Vec::with_capacity(self.params.len());
        for (k, v) in &self.params {
            let bare_true = matches!(v, BareItem::Boolean(true));
            let value = match (k.as_str(), v) {
                ("created", _) => BareItem::Integer(int(now)?),
                ("expires", BareItem::Integer(i)) => BareItem::Integer(*i),
                ("expires", _) if bare_true => BareItem::Integer(int(now.saturating_add(300))?),
                ("nonce", BareItem::String(s)) => BareItem::String(s.clone()),
                ("nonce", _) if bare_true => {
                    let n = nonce
                        .map(str::to_owned)
                        .unwrap_or_else(crate::sign::random_nonce);
                    BareItem::String(
                        sfv::String::from_string(n).map_err(|_| Error::malformed("bad nonce"))?,
                    )
                }
                ("keyid", BareItem::String(s)) => {
                    if s.as_str() != key_id {
                        return Err(Error::new(
                            Reason::KeyIdMismatch,
                            format!(
                                "keyid {:?} requested, signing key is {key_id:?}",
                                s.as_str()
                            ),
                        ));
                    }
                    v.clone()
                }
                ("keyid", _) if bare_true => BareItem::String(
                    sfv::String::from_string(key_id.to_owned())
                        .map_err(|_| Error::malformed("bad keyid"))?,
                ),
                ("alg", BareItem::String(s)) => {
                    if s.as_str() != alg.name() {
                        return Err(Error::algorithm_mismatch(s.as_str(), alg));
                    }
                    v.clone()
                }
                ("alg", _) if bare_true => BareItem::String(
                    sfv::String::from_string(alg.name().to_owned())
                        .map_err(|_| Error::malformed("bad alg"))?,
                ),
                ("tag", BareItem::String(_)) => v.clone(),
                ("expires" | "nonce" | "keyid" | "alg" | "tag", _) => {
                    return Err(Error::malformed(format!(
                        "cannot honour requested parameter {k:?}"
                    )))
                }
                _ => v.clone(),
            };
            out.push((k.clone(), value));
        }
        SignatureParams::build(self.components.clone(), out)
    }

    /// Signs `message` as requested, with `key` (whose key id must match any requested
    /// `keyid`), at time `now`.
    pub fn sign<M: crate::HttpMessage + ?Sized>(
        &self,
        message: &M,
        related: Option<&dyn crate::HttpMessage>,
        key: &dyn Signer,
        now: i64,
    ) -> Result<crate::Signature, Error> {
        let params =
            self.params_for(now, None, key.key_id().unwrap_or_default(), key.algorithm())?;
        crate::sign(message, related, &self.label, params, key)
    }
}

fn int(v: i64) -> Result<sfv::Integer, Error> {
    sfv::Integer::try_from(v).map_err(|_| Error::malformed("time out of range"))
}

/// Parses an `Accept-Signature` field value. Duplicate labels are an error.
pub fn parse_accept_signature(value: &str) -> Result<Vec<SignatureRequest>, Error> {
    let dict = sf::parse_dictionary(value.as_bytes())
        .map_err(|e| Error::malformed(format!("Accept-Signature: {e}")))?;
    if let Some(dup) = sf::first_duplicate(dict.iter().map(|(k, _)| k.as_str())) {
        return Err(Error::new(
            Reason::DuplicateLabel,
            format!("label {dup:?} repeated"),
        ));
    }
    dict.into_iter()
        .map(|(label, entry)| {
            let SfEntry::Inner(items, params) = entry else {
                return Err(Error::malformed(
                    "an Accept-Signature member must be an inner list",
                ));
            };
            let components = items
                .into_iter()
                .map(Component::from_sf_item)
                .collect::<Result<Vec<_>, _>>()?;
            if let Some(dup) = sf::first_duplicate(params.iter().map(|(k, _)| k.as_str())) {
                return Err(Error::new(Reason::DuplicateParameter, dup.to_owned()));
            }
            SignatureParams::new(components.clone())?;
            Ok(SignatureRequest {
                label,
                components,
                params,
            })
        })
        .collect()
}

/// Serialises requests as an `Accept-Signature` field value.
pub fn serialize_accept_signature(requests: &[SignatureRequest]) -> String {
    requests
        .iter()
        .map(SignatureRequest::to_member)
        .collect::<Vec<_>>()
        .join(", ")
}
