//! Signing requests as a bot: the Web Bot Auth profile of RFC 9421.

use oba_httpsig::digest::{DigestAlgorithm, DigestField};
use oba_httpsig::jwk::Jwk;
use oba_httpsig::{Component, Derived, HttpMessage, SignatureParams, Signer as _, SigningKey};

use crate::agent::dictionary_member;
use crate::{Error, TAG};

/// The longest validity a signer accepts (the profile recommends short-lived signatures).
pub const MAX_VALIDITY_SECS: u32 = 24 * 60 * 60;

/// Signs requests as a bot: `@authority @method @path @query` (and `content-digest` when
/// there is a body), `created`, `expires`, `keyid` = the key's JWK thumbprint,
/// `tag="web-bot-auth"`, a random nonce, and the `Signature-Agent` member of its own label
/// covered as `"signature-agent";key="<label>"`.
///
/// ```
/// use oba_webbotauth::WebBotAuthSigner;
/// use oba_httpsig::{jwk::Jwk, Algorithm, Message};
/// let signer = WebBotAuthSigner::new(&Jwk::generate(Algorithm::Ed25519)?)?
///     .with_signature_agent("https://bot.example")?;
/// let mut req = Message::request("GET", "/page")?.with_header("Host", "site.example");
/// for (name, value) in signer.sign(&req, b"", 1_700_000_000)? {
///     req.append_header(name, value);
/// }
/// assert!(req.header("signature-agent").is_some());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct WebBotAuthSigner {
    key: SigningKey,
    thumbprint: String,
    label: String,
    signature_agent: Option<String>,
    validity: u32,
    components: Option<Vec<Component>>,
    nonce: bool,
}

impl WebBotAuthSigner {
    /// A signer for a private JWK. HMAC keys are refused: a shared secret cannot
    /// identify a bot to the whole web.
    pub fn new(jwk: &Jwk) -> Result<Self, Error> {
        if jwk.kty == "oct" {
            return Err(Error::Key(
                "Web Bot Auth needs an asymmetric key, not HMAC".into(),
            ));
        }
        let alg = crate::keys::profile_algorithm(jwk);
        let key = jwk
            .signing_key(alg)
            .map_err(|e| Error::Key(e.to_string()))?;
        let thumbprint = jwk.thumbprint().map_err(|e| Error::Key(e.to_string()))?;
        Ok(WebBotAuthSigner {
            key,
            thumbprint,
            label: "sig1".into(),
            signature_agent: None,
            validity: 60,
            components: None,
            nonce: true,
        })
    }

    /// Publishes where the keys are (`https://` origin of a key directory, normally).
    pub fn with_signature_agent(mut self, url: &str) -> Result<Self, Error> {
        let u = url::Url::parse(url).map_err(|e| Error::SignatureAgent(format!("{url:?}: {e}")))?;
        // https, or http to loopback (the same rule verifiers apply in tests).
        crate::agent::check_https(&u, true)?;
        self.signature_agent = Some(url.to_owned());
        Ok(self)
    }

    /// The signature label (default `sig1`), also the `Signature-Agent` member key.
    pub fn with_label(mut self, label: &str) -> Result<Self, Error> {
        sfv::KeyRef::from_str(label).map_err(|_| Error::Key(format!("bad label {label:?}")))?;
        self.label = label.to_owned();
        Ok(self)
    }

    /// Seconds from `created` to `expires` (default 60; at most 24 hours).
    pub fn with_validity(mut self, secs: u32) -> Result<Self, Error> {
        if secs == 0 || secs > MAX_VALIDITY_SECS {
            return Err(Error::Key(format!(
                "validity must be 1..={MAX_VALIDITY_SECS} seconds"
            )));
        }
        self.validity = secs;
        Ok(self)
    }

    /// Covers exactly these components (the `Signature-Agent` member is still added).
    pub fn with_components(mut self, components: Vec<Component>) -> Self {
        self.components = Some(components);
        self
    }

    /// Leaves out the nonce (default: a random one per request).
    pub fn without_nonce(mut self) -> Self {
        self.nonce = false;
        self
    }

    /// The key's thumbprint, which is the `keyid`.
    pub fn keyid(&self) -> &str {
        &self.thumbprint
    }

    /// The header fields to add to `request` (whose content is `body`), in order:
    /// `Content-Digest` (when there is a body and none is present), `Signature-Agent`,
    /// `Signature-Input`, `Signature`.
    pub fn sign<M: HttpMessage + ?Sized>(
        &self,
        request: &M,
        body: &[u8],
        now: i64,
    ) -> Result<Vec<(&'static str, String)>, Error> {
        let mut added: Vec<(&'static str, String)> = Vec::new();
        let mut has_digest = false;
        request.field_lines("content-digest", &mut |_| has_digest = true);
        if !body.is_empty() && !has_digest {
            added.push((
                "Content-Digest",
                DigestField::compute(&[DigestAlgorithm::Sha256], body).to_header_value(),
            ));
            has_digest = true;
        }
        let mut components = match &self.components {
            Some(c) => c.clone(),
            None => {
                let mut c = vec![
                    Component::derived(Derived::Authority),
                    Component::derived(Derived::Method),
                    Component::derived(Derived::Path),
                    Component::derived(Derived::Query),
                ];
                if has_digest && !body.is_empty() {
                    c.push(Component::field("content-digest")?);
                }
                c
            }
        };
        if let Some(sa) = &self.signature_agent {
            let mut existing = false;
            request.field_lines("signature-agent", &mut |_| existing = true);
            if existing {
                return Err(Error::SignatureAgent(
                    "the request already has a Signature-Agent field".into(),
                ));
            }
            added.push(("Signature-Agent", dictionary_member(&self.label, sa)?));
            components.push(Component::field("signature-agent")?.key(&self.label)?);
        }
        let mut params = SignatureParams::new(components)?
            .with_created(now)?
            .with_expires(now.saturating_add(i64::from(self.validity)))?
            .with_keyid(&self.thumbprint)?
            .with_alg(self.key.algorithm())?;
        if self.nonce {
            params = params.with_nonce(&oba_httpsig::random_nonce())?;
        }
        params = params.with_tag(TAG)?;
        let overlay = WithFields {
            inner: request,
            extra: &added,
        };
        let sig = oba_httpsig::sign(&overlay, None, &self.label, params, &self.key)?;
        added.push(("Signature-Input", sig.signature_input()));
        added.push(("Signature", sig.signature()));
        Ok(added)
    }
}

/// A message with extra header fields appended (the ones the signer is about to add).
struct WithFields<'a, M: ?Sized> {
    inner: &'a M,
    extra: &'a [(&'static str, String)],
}

impl<M: HttpMessage + ?Sized> HttpMessage for WithFields<'_, M> {
    fn method(&self) -> Option<&str> {
        self.inner.method()
    }
    fn scheme(&self) -> Option<&str> {
        self.inner.scheme()
    }
    fn authority(&self) -> Option<&str> {
        self.inner.authority()
    }
    fn path(&self) -> Option<&str> {
        self.inner.path()
    }
    fn query(&self) -> Option<&str> {
        self.inner.query()
    }
    fn request_target(&self) -> Option<&str> {
        self.inner.request_target()
    }
    fn status(&self) -> Option<u16> {
        self.inner.status()
    }
    fn field_lines(&self, name: &str, f: &mut dyn FnMut(&[u8])) {
        self.inner.field_lines(name, f);
        for (n, v) in self.extra {
            if n.eq_ignore_ascii_case(name) {
                f(v.as_bytes());
            }
        }
    }
    fn trailer_lines(&self, name: &str, f: &mut dyn FnMut(&[u8])) {
        self.inner.trailer_lines(name, f)
    }
}
