//! The identity stamp: the verified principal as `X-Attach-*` fields, signed by the
//! gateway (RFC 9421, `tag="attach-gateway"`) over `@method @authority @path @query`,
//! `content-digest` when there is a body, and every `X-Attach-*` field, so a model server
//! can trust the stamp without trusting the network. The stamp expires after 60 s and
//! carries the request id as its `nonce`.

use axum::http::Method;
use oba_httpsig::digest::{DigestAlgorithm, DigestField};
use oba_httpsig::jwk::Jwk;
use oba_httpsig::{Component, Derived, Message, SignatureParams, SigningKey};

use crate::identity::Principal;

/// The stamp signature's tag.
pub const TAG: &str = "attach-gateway";
/// The stamp signature's label.
pub const LABEL: &str = "attach";

/// Signs stamps with the gateway's key.
#[derive(Debug)]
pub struct Stamper {
    key: SigningKey,
    public: Jwk,
    thumbprint: String,
}

impl Stamper {
    /// A stamper with a private JWK (asymmetric).
    pub fn new(jwk: &Jwk) -> Result<Self, String> {
        if jwk.kty == "oct" {
            return Err(
                "the stamp key must be asymmetric (upstreams verify it with the public key)".into(),
            );
        }
        let thumbprint = jwk.thumbprint().map_err(|e| e.to_string())?;
        let key = jwk.signing_key(None).map_err(|e| e.to_string())?;
        let mut public = jwk.public().map_err(|e| e.to_string())?;
        public.kid = Some(thumbprint.clone());
        Ok(Stamper {
            key,
            public,
            thumbprint,
        })
    }

    /// The public key, as published at `/.well-known/jwks.json`.
    pub fn public_jwk(&self) -> &Jwk {
        &self.public
    }

    /// The header fields to add to the request forwarded to `target`.
    #[allow(clippy::too_many_arguments)]
    pub fn stamp(
        &self,
        method: &Method,
        target: &str,
        p: &Principal,
        session: Option<&str>,
        request_id: &str,
        body: &[u8],
        now: i64,
    ) -> Result<Vec<(String, String)>, String> {
        let mut fields: Vec<(String, String)> = vec![
            ("x-attach-principal".into(), p.id.clone()),
            ("x-attach-auth-method".into(), p.auth_method.as_str().into()),
        ];
        let mut push = |n: &str, v: Option<&str>| {
            if let Some(v) = v {
                fields.push((n.into(), v.into()));
            }
        };
        push("x-attach-tenant", p.tenant.as_deref());
        push("x-attach-user", p.user.as_deref());
        push("x-attach-agent", p.agent.as_deref());
        let session = session.map(|s| format!("{}/{s}", p.id));
        push("x-attach-session", session.as_deref());
        push("x-attach-request-id", Some(request_id));
        if !body.is_empty() {
            fields.push((
                "content-digest".into(),
                DigestField::compute(&[DigestAlgorithm::Sha256], body).to_header_value(),
            ));
        }
        let mut msg = Message::request_to(method.as_str(), target).map_err(|e| e.to_string())?;
        let mut components = vec![
            Component::derived(Derived::Method),
            Component::derived(Derived::Authority),
            Component::derived(Derived::Path),
            Component::derived(Derived::Query),
        ];
        for (n, v) in &fields {
            msg.append_header(n, v);
            components.push(Component::field(n).map_err(|e| e.to_string())?);
        }
        let params = SignatureParams::new(components)
            .and_then(|p| p.with_created(now))
            .and_then(|p| p.with_expires(now.saturating_add(60)))
            .and_then(|p| p.with_keyid(&self.thumbprint))
            .and_then(|p| p.with_tag(TAG))
            // The request id is random and unique: as the nonce, it lets a model server
            // or sidecar refuse a stamped request replayed inside its minute of validity.
            .and_then(|p| p.with_nonce(request_id))
            .map_err(|e| e.to_string())?;
        let sig =
            oba_httpsig::sign(&msg, None, LABEL, params, &self.key).map_err(|e| e.to_string())?;
        fields.push(("signature-input".into(), sig.signature_input()));
        fields.push(("signature".into(), sig.signature()));
        Ok(fields)
    }
}
