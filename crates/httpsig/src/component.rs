//! Component identifiers (RFC 9421 section 2): HTTP fields and derived components,
//! with their parameters `sf`, `key`, `bs`, `req`, `tr` and `name`.

use std::fmt;
use std::str::FromStr;

use sfv::BareItem;

use crate::error::{Error, Reason};
use crate::sf::{self, Params, SfItem};

/// The derived components of RFC 9421 section 2.2.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Derived {
    /// `@method` (2.2.1).
    Method,
    /// `@target-uri` (2.2.2).
    TargetUri,
    /// `@authority` (2.2.3).
    Authority,
    /// `@scheme` (2.2.4).
    Scheme,
    /// `@request-target` (2.2.5).
    RequestTarget,
    /// `@path` (2.2.6).
    Path,
    /// `@query` (2.2.7).
    Query,
    /// `@query-param` (2.2.8); needs a `name` parameter.
    QueryParam,
    /// `@status` (2.2.9); responses only.
    Status,
}

impl Derived {
    /// All derived components.
    pub const ALL: [Derived; 9] = [
        Derived::Method,
        Derived::TargetUri,
        Derived::Authority,
        Derived::Scheme,
        Derived::RequestTarget,
        Derived::Path,
        Derived::Query,
        Derived::QueryParam,
        Derived::Status,
    ];

    /// The component name, with its `@`.
    pub const fn name(self) -> &'static str {
        match self {
            Derived::Method => "@method",
            Derived::TargetUri => "@target-uri",
            Derived::Authority => "@authority",
            Derived::Scheme => "@scheme",
            Derived::RequestTarget => "@request-target",
            Derived::Path => "@path",
            Derived::Query => "@query",
            Derived::QueryParam => "@query-param",
            Derived::Status => "@status",
        }
    }

    fn from_name(name: &str) -> Option<Self> {
        Derived::ALL.into_iter().find(|d| d.name() == name)
    }
}

/// What a component identifier refers to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ComponentName {
    /// A derived component.
    Derived(Derived),
    /// An HTTP field, by its lower-case name.
    Field(String),
}

/// A component identifier: a name and its parameters, as covered by a signature.
///
/// The identifier keeps its parameters in the order they were written, and its
/// serialised form (used verbatim in the signature base) is computed once.
///
/// ```
/// use oba_httpsig::Component;
/// let c: Component = r#""@query-param";name="Pet""#.parse()?;
/// assert_eq!(c.to_string(), r#""@query-param";name="Pet""#);
/// let bare: Component = "Content-Type".parse()?;
/// assert_eq!(bare.to_string(), r#""content-type""#);
/// # Ok::<(), oba_httpsig::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct Component {
    name: ComponentName,
    /// The parameters, in the order written (what `with_param` extends).
    params: Params,
    /// The same parameters, decoded for the signature base.
    sf: bool,
    bs: bool,
    req: bool,
    tr: bool,
    key: Option<String>,
    param_name: Option<String>,
    serialized: String,
}

impl Component {
    /// A derived component without parameters. `@query-param` needs [`Component::query_param`].
    pub fn derived(d: Derived) -> Self {
        Self::build(ComponentName::Derived(d), Vec::new())
            .expect("a plain derived component is valid")
    }

    /// `@query-param` with the given (already percent-encoded, RFC 9421 2.2.8) name.
    pub fn query_param(name: &str) -> Result<Self, Error> {
        let s = sfv::String::from_string(name.to_owned()).map_err(|_| {
            Error::new(
                Reason::InvalidComponent,
                "query parameter name is not an sf-string",
            )
        })?;
        Self::build(
            ComponentName::Derived(Derived::QueryParam),
            vec![("name".to_owned(), BareItem::String(s))],
        )
    }

    /// An HTTP field; the name is lower-cased.
    pub fn field(name: &str) -> Result<Self, Error> {
        Self::build(ComponentName::Field(name.to_ascii_lowercase()), Vec::new())
    }

    /// This component with `;sf` added.
    pub fn sf(self) -> Result<Self, Error> {
        self.with_param("sf", BareItem::Boolean(true))
    }

    /// This component with `;bs` added.
    pub fn bs(self) -> Result<Self, Error> {
        self.with_param("bs", BareItem::Boolean(true))
    }

    /// This component with `;req` added (value taken from the related request).
    pub fn req(self) -> Result<Self, Error> {
        self.with_param("req", BareItem::Boolean(true))
    }

    /// This component with `;tr` added (value taken from the trailers).
    pub fn tr(self) -> Result<Self, Error> {
        self.with_param("tr", BareItem::Boolean(true))
    }

    /// This component with `;key="member"` added (a Dictionary member).
    pub fn key(self, member: &str) -> Result<Self, Error> {
        let s = sfv::String::from_string(member.to_owned()).map_err(|_| {
            Error::new(
                Reason::InvalidComponent,
                "dictionary key is not an sf-string",
            )
        })?;
        self.with_param("key", BareItem::String(s))
    }

    fn with_param(self, k: &str, v: BareItem) -> Result<Self, Error> {
        let mut params = self.params;
        params.push((k.to_owned(), v));
        Self::build(self.name, params)
    }

    /// Builds a component from a parsed sf-item (as found in an inner list).
    pub(crate) fn from_sf_item(item: SfItem) -> Result<Self, Error> {
        let BareItem::String(name) = &item.bare else {
            return Err(Error::new(
                Reason::InvalidComponent,
                "a component identifier must be an sf-string",
            ));
        };
        let name = name.as_str();
        let cname = if name.starts_with('@') {
            ComponentName::Derived(Derived::from_name(name).ok_or_else(|| {
                Error::new(
                    Reason::InvalidComponent,
                    format!("unknown derived component {name:?}"),
                )
            })?)
        } else {
            if name.is_empty() || name.bytes().any(|b| !is_field_name_char(b)) {
                return Err(Error::new(
                    Reason::InvalidComponent,
                    format!("{name:?} is not a lower-case HTTP field name"),
                ));
            }
            ComponentName::Field(name.to_owned())
        };
        Self::build(cname, item.params)
    }

    fn build(name: ComponentName, params: Params) -> Result<Self, Error> {
        let invalid = |m: String| Error::new(Reason::InvalidComponent, m);
        if let Some(dup) = sf::first_duplicate(params.iter().map(|(k, _)| k.as_str())) {
            return Err(invalid(format!("parameter {dup:?} repeated")));
        }
        let mut c = Component {
            name,
            params: Vec::new(),
            sf: false,
            bs: false,
            req: false,
            tr: false,
            key: None,
            param_name: None,
            serialized: String::new(),
        };
        let is_field = matches!(c.name, ComponentName::Field(_));
        for (k, v) in &params {
            match (k.as_str(), v) {
                ("sf", BareItem::Boolean(true)) if is_field => c.sf = true,
                ("bs", BareItem::Boolean(true)) if is_field => c.bs = true,
                ("tr", BareItem::Boolean(true)) if is_field => c.tr = true,
                ("req", BareItem::Boolean(true)) => c.req = true,
                ("key", BareItem::String(s)) if is_field => c.key = Some(s.as_str().to_owned()),
                ("name", BareItem::String(s))
                    if c.name == ComponentName::Derived(Derived::QueryParam) =>
                {
                    c.param_name = Some(s.as_str().to_owned())
                }
                _ => {
                    return Err(invalid(format!(
                        "parameter {k:?} is not valid on this component"
                    )))
                }
            }
        }
        if c.bs && (c.sf || c.key.is_some()) {
            return Err(invalid(
                "bs cannot be combined with sf or key (RFC 9421 2.1.3)".into(),
            ));
        }
        if c.name == ComponentName::Derived(Derived::QueryParam) && c.param_name.is_none() {
            return Err(invalid("@query-param needs a name parameter".into()));
        }
        let mut s = String::with_capacity(24);
        sf::write_string(&mut s, c.name_str());
        sf::write_params(&mut s, &params);
        c.serialized = s;
        c.params = params;
        Ok(c)
    }

    /// What the identifier refers to.
    pub fn name(&self) -> &ComponentName {
        &self.name
    }

    /// The component name as written (`@method`, `content-type`).
    pub fn name_str(&self) -> &str {
        match &self.name {
            ComponentName::Derived(d) => d.name(),
            ComponentName::Field(f) => f,
        }
    }

    /// The derived component, if this is one.
    pub fn as_derived(&self) -> Option<Derived> {
        match self.name {
            ComponentName::Derived(d) => Some(d),
            ComponentName::Field(_) => None,
        }
    }

    /// `;sf`: strict structured-field re-serialisation.
    pub fn is_sf(&self) -> bool {
        self.sf
    }
    /// `;bs`: each field line wrapped as a byte sequence.
    pub fn is_bs(&self) -> bool {
        self.bs
    }
    /// `;req`: taken from the related request.
    pub fn is_req(&self) -> bool {
        self.req
    }
    /// `;tr`: taken from the trailers.
    pub fn is_tr(&self) -> bool {
        self.tr
    }
    /// `;key="..."`: a single Dictionary member.
    pub fn dict_key(&self) -> Option<&str> {
        self.key.as_deref()
    }
    /// `;name="..."` of `@query-param`.
    pub fn query_param_name(&self) -> Option<&str> {
        self.param_name.as_deref()
    }

    /// The identifier exactly as it appears in a signature base and in `Signature-Input`.
    pub fn as_str(&self) -> &str {
        &self.serialized
    }
}

fn is_field_name_char(b: u8) -> bool {
    // RFC 9110 token characters, upper case excluded (component names are lower-cased).
    matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'!' | b'#' | b'$' | b'%' | b'&' | b'\'' | b'*'
        | b'+' | b'-' | b'.' | b'^' | b'_' | b'`' | b'|' | b'~')
}

/// Two identifiers are the same component exactly when they serialise the same way.
impl PartialEq for Component {
    fn eq(&self, other: &Self) -> bool {
        self.serialized == other.serialized
    }
}

impl Eq for Component {}

impl std::hash::Hash for Component {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.serialized.hash(state)
    }
}

impl fmt::Display for Component {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.serialized)
    }
}

impl FromStr for Component {
    type Err = Error;

    /// Parses the wire form (`"@query-param";name="Pet"`, `"content-type";sf`) or a bare
    /// name (`@method`, `Content-Type`, which is lower-cased).
    fn from_str(s: &str) -> Result<Self, Error> {
        let s = s.trim();
        if s.starts_with('"') {
            let item = sf::parse_item(s.as_bytes()).map_err(|e| {
                Error::new(
                    Reason::InvalidComponent,
                    format!("{s:?} is not a component identifier: {e}"),
                )
            })?;
            Component::from_sf_item(item)
        } else if let Some(d) = s.strip_prefix('@').and_then(|_| Derived::from_name(s)) {
            if d == Derived::QueryParam {
                return Err(Error::new(
                    Reason::InvalidComponent,
                    "@query-param needs a name: write it as '\"@query-param\";name=\"...\"'",
                ));
            }
            Ok(Component::derived(d))
        } else if s.starts_with('@') {
            Err(Error::new(
                Reason::InvalidComponent,
                format!("unknown derived component {s:?}"),
            ))
        } else {
            let lower = s.to_ascii_lowercase();
            let item = SfItem {
                bare: BareItem::String(sfv::String::from_string(lower).map_err(|_| {
                    Error::new(
                        Reason::InvalidComponent,
                        format!("{s:?} is not a field name"),
                    )
                })?),
                params: Vec::new(),
            };
            Component::from_sf_item(item)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Result<Component, Error> {
        s.parse()
    }

    #[test]
    fn parses_and_serialises_in_received_order() {
        assert_eq!(
            p(r#""example-dict";req;key="a""#).unwrap().as_str(),
            r#""example-dict";req;key="a""#
        );
        assert_eq!(
            p(r#""example-dict";key="a";req"#).unwrap().as_str(),
            r#""example-dict";key="a";req"#
        );
        assert_eq!(p("@Method").unwrap_err().reason(), Reason::InvalidComponent);
        assert_eq!(p("@method").unwrap().as_derived(), Some(Derived::Method));
    }

    #[test]
    fn rejects_invalid_parameter_combinations() {
        for bad in [
            r#""x";bs;sf"#,
            r#""x";bs;key="a""#,
            r#""@method";sf"#,
            r#""@query-param""#,
            r#""@path";name="a""#,
            r#""x";sf=?0"#,
            r#""x";unknown"#,
            r#""x";sf;sf"#,
            r#""X-Upper""#,
            r#""""#,
            r#""@signature-params""#,
            "@nope",
            "\"x\";key=1",
        ] {
            let got = bad.parse::<Component>();
            assert!(got.is_err(), "{bad} should be rejected");
        }
    }

    #[test]
    fn builders_keep_order() {
        let c = Component::field("Example-Dict")
            .unwrap()
            .key("b")
            .unwrap()
            .req()
            .unwrap();
        assert_eq!(c.as_str(), r#""example-dict";key="b";req"#);
        assert_eq!(
            Component::query_param("Pet").unwrap().as_str(),
            r#""@query-param";name="Pet""#
        );
    }
}
