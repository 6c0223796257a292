//! RFC 9530 Digest Fields: `Content-Digest`, `Repr-Digest` and their
//! `Want-Content-Digest` / `Want-Repr-Digest` preference fields.
//!
//! This module is sans-IO: it hashes bytes it is given and parses and
//! serialises field *values* (the part after `Content-Digest:`). Which bytes
//! are hashed is the caller's decision. For `Content-Digest` they are the
//! message content exactly as sent, after any `Content-Encoding`; for
//! `Repr-Digest` they are the selected representation (RFC 9530 sections 2
//! and 3).
//!
//! * [`DigestAlgorithm`]: the algorithms this crate can compute, `sha-256` and
//!   `sha-512`, the two that the IANA registry marks "Active".
//! * [`Hasher`] and [`MultiHasher`]: incremental hashing for content that
//!   arrives in pieces.
//! * [`DigestField`]: a parsed or computed `Content-Digest` / `Repr-Digest`
//!   value, an RFC 8941 Dictionary of Byte Sequences, and verification of it.
//! * [`WantDigest`]: a `Want-Content-Digest` / `Want-Repr-Digest` value.
//!
//! # Verification rule
//!
//! A field verifies when it has at least one member whose algorithm is
//! supported (and allowed, see [`DigestField::verify_with`]) and **every**
//! such member matches the content. Members with unknown or deprecated
//! algorithms (`md5`, `sha`, `unixsum`, ...) are kept when parsing and
//! serialising but ignored when verifying. Digests are compared in constant
//! time.
//!
//! # Example
//!
//! ```
//! use oba_httpsig::digest::{DigestAlgorithm, DigestError, DigestField};
//!
//! let body = br#"{"hello": "world"}"#;
//!
//! // Sender: compute the field value to put in a Content-Digest header.
//! let field = DigestField::compute(&[DigestAlgorithm::Sha512], body);
//! let value = field.to_header_value();
//! assert_eq!(
//!     value,
//!     "sha-512=:WZDPaVn/7XgHaAy8pmojAkGWoRx2UFChF41A2svX+TaPm+AbwAgBWnrIiYllu7BNNyealdVLvRwEmTHWXvJwew==:"
//! );
//!
//! // Receiver: parse the header value and check it against the content.
//! let received = DigestField::parse(&value)?;
//! assert_eq!(received.verify(body)?, DigestAlgorithm::Sha512);
//!
//! // Changed content is detected.
//! assert_eq!(
//!     received.verify(br#"{"hello": "there"}"#),
//!     Err(DigestError::Mismatch { algorithm: DigestAlgorithm::Sha512 })
//! );
//! # Ok::<(), DigestError>(())
//! ```
//!
//! Content that arrives in pieces can be checked in one pass over all the
//! supported members of a field:
//!
//! ```
//! use oba_httpsig::digest::{DigestAlgorithm, DigestField, MultiHasher};
//!
//! let field = DigestField::parse(
//!     "sha-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=:, \
//!      sha-512=:WZDPaVn/7XgHaAy8pmojAkGWoRx2UFChF41A2svX+TaPm+AbwAgBWnrIiYllu7BNNyealdVLvRwEmTHWXvJwew==:",
//! )?;
//! let mut hasher = MultiHasher::for_field(&field)?;
//! for chunk in [&b"{\"hello\""[..], b": ", b"\"world\"}"] {
//!     hasher.update(chunk);
//! }
//! assert_eq!(field.verify_digests(&hasher.finalize())?, DigestAlgorithm::Sha512);
//! # Ok::<(), oba_httpsig::digest::DigestError>(())
//! ```

use std::fmt;

use base64::Engine as _;
use sha2::Digest as _;
use subtle::ConstantTimeEq;

/// A hash algorithm from the IANA "Hash Algorithms for HTTP Digest Fields"
/// registry that this crate can compute.
///
/// Only the two algorithms with status "Active" are supported. The deprecated
/// ones (`md5`, `sha`, `unixsum`, `unixcksum`, `adler`, `crc32c`) are not:
/// RFC 9530 section 5 says they must not be used for integrity.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DigestAlgorithm {
    /// `sha-256`: SHA-256 (FIPS 180-4), 32-byte output.
    Sha256,
    /// `sha-512`: SHA-512 (FIPS 180-4), 64-byte output.
    Sha512,
}

impl DigestAlgorithm {
    /// Every supported algorithm, weakest first.
    pub const ALL: &'static [DigestAlgorithm] = &[DigestAlgorithm::Sha256, DigestAlgorithm::Sha512];

    /// The registered algorithm key, as used in Digest Fields: `"sha-256"` or
    /// `"sha-512"`.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            DigestAlgorithm::Sha256 => "sha-256",
            DigestAlgorithm::Sha512 => "sha-512",
        }
    }

    /// Looks up an algorithm by its registered key.
    ///
    /// The match is exact and case-sensitive: registry keys are lower case,
    /// and Structured Field dictionary keys cannot contain upper case, so
    /// `"SHA-256"` is not a name. Returns `None` for unknown and deprecated
    /// algorithms.
    #[must_use]
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "sha-256" => Some(DigestAlgorithm::Sha256),
            "sha-512" => Some(DigestAlgorithm::Sha512),
            _ => None,
        }
    }

    /// The length in bytes of this algorithm's output.
    #[must_use]
    pub const fn output_len(self) -> usize {
        match self {
            DigestAlgorithm::Sha256 => 32,
            DigestAlgorithm::Sha512 => 64,
        }
    }

    /// Hashes `data` in one call.
    #[must_use]
    pub fn digest(self, data: &[u8]) -> Vec<u8> {
        match self {
            DigestAlgorithm::Sha256 => sha2::Sha256::digest(data).to_vec(),
            DigestAlgorithm::Sha512 => sha2::Sha512::digest(data).to_vec(),
        }
    }

    /// Relative strength, used to report the strongest verified algorithm.
    const fn strength(self) -> u8 {
        match self {
            DigestAlgorithm::Sha256 => 1,
            DigestAlgorithm::Sha512 => 2,
        }
    }
}

impl fmt::Display for DigestAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Errors from parsing or verifying Digest Fields.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DigestError {
    /// The field value is not valid: not an RFC 8941 Dictionary, a
    /// `*-Digest` member that is not a Byte Sequence, a `Want-*-Digest` member
    /// that is not an Integer from 0 to 10, or a name that is not a valid key.
    #[error("malformed digest field: {reason}")]
    Malformed {
        /// What was wrong.
        reason: String,
    },
    /// The field has no member whose algorithm is supported (and allowed by
    /// the caller's policy), so nothing could be checked.
    #[error("digest field has no member with a supported and allowed algorithm")]
    NoSupportedAlgorithm,
    /// A member's digest does not match the content.
    #[error("{algorithm} digest does not match the content")]
    Mismatch {
        /// The algorithm of the first member found not to match.
        algorithm: DigestAlgorithm,
    },
}

impl DigestError {
    fn malformed(reason: impl Into<String>) -> Self {
        DigestError::Malformed {
            reason: reason.into(),
        }
    }
}

/// A computed or received digest: an algorithm and its output bytes.
///
/// Equality (`==`) compares the bytes in constant time.
#[derive(Clone)]
pub struct Digest {
    algorithm: DigestAlgorithm,
    value: Vec<u8>,
}

impl Digest {
    /// Wraps digest bytes computed elsewhere. No length check is made; a
    /// value of the wrong length simply never matches.
    #[must_use]
    pub fn new(algorithm: DigestAlgorithm, value: Vec<u8>) -> Self {
        Digest { algorithm, value }
    }

    /// Hashes `data` in one call.
    #[must_use]
    pub fn compute(algorithm: DigestAlgorithm, data: &[u8]) -> Self {
        Digest::new(algorithm, algorithm.digest(data))
    }

    /// The algorithm.
    #[must_use]
    pub fn algorithm(&self) -> DigestAlgorithm {
        self.algorithm
    }

    /// The digest bytes.
    #[must_use]
    pub fn value(&self) -> &[u8] {
        &self.value
    }

    /// The digest bytes, by value.
    #[must_use]
    pub fn into_value(self) -> Vec<u8> {
        self.value
    }

    /// The digest bytes in standard, padded base64, as they appear between
    /// the colons of a Byte Sequence.
    #[must_use]
    pub fn to_base64(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(&self.value)
    }

    /// Whether `other` equals this digest's bytes, compared in constant time.
    #[must_use]
    pub fn matches(&self, other: &[u8]) -> bool {
        bool::from(self.value.as_slice().ct_eq(other))
    }
}

impl PartialEq for Digest {
    fn eq(&self, other: &Self) -> bool {
        self.algorithm == other.algorithm && self.matches(&other.value)
    }
}

impl Eq for Digest {}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Digest")
            .field("algorithm", &self.algorithm)
            .field("value", &self.to_base64())
            .finish()
    }
}

impl fmt::Display for Digest {
    /// Formats as a single Digest Field member, `sha-256=:...:`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}=:{}:", self.algorithm.name(), self.to_base64())
    }
}

#[derive(Clone)]
enum HasherState {
    Sha256(sha2::Sha256),
    Sha512(sha2::Sha512),
}

/// An incremental hasher for one algorithm, for content that arrives in
/// pieces.
///
/// Feeding the content in any split gives the same result as
/// [`DigestAlgorithm::digest`] over the whole.
#[derive(Clone)]
pub struct Hasher {
    state: HasherState,
}

impl Hasher {
    /// Starts hashing with `algorithm`.
    #[must_use]
    pub fn new(algorithm: DigestAlgorithm) -> Self {
        let state = match algorithm {
            DigestAlgorithm::Sha256 => HasherState::Sha256(sha2::Sha256::new()),
            DigestAlgorithm::Sha512 => HasherState::Sha512(sha2::Sha512::new()),
        };
        Hasher { state }
    }

    /// The algorithm being computed.
    #[must_use]
    pub fn algorithm(&self) -> DigestAlgorithm {
        match self.state {
            HasherState::Sha256(_) => DigestAlgorithm::Sha256,
            HasherState::Sha512(_) => DigestAlgorithm::Sha512,
        }
    }

    /// Feeds the next piece of content.
    pub fn update(&mut self, data: &[u8]) {
        match &mut self.state {
            HasherState::Sha256(h) => h.update(data),
            HasherState::Sha512(h) => h.update(data),
        }
    }

    /// Finishes and returns the digest of everything fed so far.
    #[must_use]
    pub fn finalize(self) -> Digest {
        match self.state {
            HasherState::Sha256(h) => Digest::new(DigestAlgorithm::Sha256, h.finalize().to_vec()),
            HasherState::Sha512(h) => Digest::new(DigestAlgorithm::Sha512, h.finalize().to_vec()),
        }
    }
}

impl fmt::Debug for Hasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hasher")
            .field("algorithm", &self.algorithm())
            .finish_non_exhaustive()
    }
}

/// Incremental hashing with several algorithms at once, so that every
/// supported member of a [`DigestField`] can be checked in a single pass
/// over streamed content.
///
/// ```
/// use oba_httpsig::digest::{DigestAlgorithm, MultiHasher};
///
/// let mut hasher = MultiHasher::new(&[DigestAlgorithm::Sha256, DigestAlgorithm::Sha512]);
/// hasher.update(b"hello ");
/// hasher.update(b"world");
/// let digests = hasher.finalize();
/// assert_eq!(digests.len(), 2);
/// assert_eq!(digests[0].value(), DigestAlgorithm::Sha256.digest(b"hello world"));
/// ```
#[derive(Clone, Debug)]
pub struct MultiHasher {
    hashers: Vec<Hasher>,
}

impl MultiHasher {
    /// Starts hashing with each of `algorithms`, in order; repeats are
    /// computed once.
    #[must_use]
    pub fn new(algorithms: &[DigestAlgorithm]) -> Self {
        let mut hashers: Vec<Hasher> = Vec::with_capacity(algorithms.len());
        for &alg in algorithms {
            if !hashers.iter().any(|h| h.algorithm() == alg) {
                hashers.push(Hasher::new(alg));
            }
        }
        MultiHasher { hashers }
    }

    /// Starts hashing with every supported algorithm that `field` has a
    /// member for, in the field's order.
    ///
    /// # Errors
    ///
    /// [`DigestError::NoSupportedAlgorithm`] when the field has no such
    /// member.
    pub fn for_field(field: &DigestField) -> Result<Self, DigestError> {
        MultiHasher::for_field_with(field, DigestAlgorithm::ALL)
    }

    /// Like [`MultiHasher::for_field`], considering only algorithms in
    /// `allowed`.
    ///
    /// # Errors
    ///
    /// [`DigestError::NoSupportedAlgorithm`] when the field has no member
    /// with an algorithm in `allowed`.
    pub fn for_field_with(
        field: &DigestField,
        allowed: &[DigestAlgorithm],
    ) -> Result<Self, DigestError> {
        let algs: Vec<DigestAlgorithm> = field
            .algorithms()
            .filter(|alg| allowed.contains(alg))
            .collect();
        if algs.is_empty() {
            return Err(DigestError::NoSupportedAlgorithm);
        }
        Ok(MultiHasher::new(&algs))
    }

    /// The algorithms being computed, in order.
    pub fn algorithms(&self) -> impl Iterator<Item = DigestAlgorithm> + '_ {
        self.hashers.iter().map(Hasher::algorithm)
    }

    /// Feeds the next piece of content to every algorithm.
    pub fn update(&mut self, data: &[u8]) {
        for h in &mut self.hashers {
            h.update(data);
        }
    }

    /// Finishes and returns one digest per algorithm, in order.
    #[must_use]
    pub fn finalize(self) -> Vec<Digest> {
        self.hashers.into_iter().map(Hasher::finalize).collect()
    }
}

/// Checks that `name` is a valid Structured Field key.
fn check_key(name: &str) -> Result<&sfv::KeyRef, DigestError> {
    sfv::KeyRef::from_str(name)
        .map_err(|e| DigestError::malformed(format!("{name:?} is not a valid key: {e}")))
}

/// A `Content-Digest` or `Repr-Digest` field value (RFC 9530 sections 2
/// and 3): an ordered set of members, each an algorithm name and the digest
/// bytes.
///
/// Members with unknown algorithm names are kept (and serialised again) but
/// ignored when verifying. Names are unique: a repeated name replaces the
/// earlier value in the earlier position, as RFC 8941 specifies for
/// Dictionaries.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DigestField {
    members: Vec<(String, Vec<u8>)>,
}

impl DigestField {
    /// An empty field value, to fill with [`DigestField::insert`].
    #[must_use]
    pub fn new() -> Self {
        DigestField::default()
    }

    /// Parses a field value.
    ///
    /// The value must be an RFC 8941 Dictionary whose member values are all
    /// Byte Sequences. Parameters on members are ignored (RFC 9530 defines
    /// none). An empty value gives an empty field, which never verifies.
    ///
    /// # Errors
    ///
    /// [`DigestError::Malformed`] if the value is not a Dictionary or a
    /// member is not a Byte Sequence (for example an Inner List, a Token, a
    /// String or a bare key).
    pub fn parse(value: &str) -> Result<Self, DigestError> {
        let dict: sfv::Dictionary = sfv::Parser::new(value)
            .parse()
            .map_err(|e| DigestError::malformed(format!("not a valid dictionary: {e}")))?;
        let mut members = Vec::with_capacity(dict.len());
        for (key, entry) in dict {
            let bytes = match entry {
                sfv::ListEntry::Item(sfv::Item {
                    bare_item: sfv::BareItem::ByteSequence(bytes),
                    ..
                }) => bytes,
                _ => {
                    return Err(DigestError::malformed(format!(
                        "member {:?} is not a byte sequence",
                        key.as_str()
                    )))
                }
            };
            members.push((String::from(key), bytes));
        }
        Ok(DigestField { members })
    }

    /// Computes a field value over `content` with each of `algorithms`, in
    /// order; repeats are computed once.
    #[must_use]
    pub fn compute(algorithms: &[DigestAlgorithm], content: &[u8]) -> Self {
        let mut field = DigestField::new();
        for &alg in algorithms {
            if field.get_algorithm(alg).is_none() {
                field.insert(Digest::compute(alg, content));
            }
        }
        field
    }

    /// Adds a member for `digest`, replacing any member with the same
    /// algorithm (in its position).
    pub fn insert(&mut self, digest: Digest) {
        let Digest { algorithm, value } = digest;
        self.insert_raw_unchecked(algorithm.name(), value);
    }

    /// Adds a member with any algorithm name, for example an algorithm this
    /// crate does not know. Replaces any member with the same name (in its
    /// position).
    ///
    /// # Errors
    ///
    /// [`DigestError::Malformed`] if `name` is not a valid Structured Field
    /// key (lower case letters, digits, `_`, `-`, `.`, `*`, starting with a
    /// letter or `*`).
    pub fn insert_raw(&mut self, name: &str, value: Vec<u8>) -> Result<(), DigestError> {
        check_key(name)?;
        self.insert_raw_unchecked(name, value);
        Ok(())
    }

    fn insert_raw_unchecked(&mut self, name: &str, value: Vec<u8>) {
        match self.members.iter_mut().find(|(n, _)| n == name) {
            Some(member) => member.1 = value,
            None => self.members.push((name.to_owned(), value)),
        }
    }

    /// The members in order, as (algorithm name, digest bytes), including
    /// those with unknown algorithms.
    pub fn members(&self) -> impl ExactSizeIterator<Item = (&str, &[u8])> + '_ {
        self.members.iter().map(|(n, v)| (n.as_str(), v.as_slice()))
    }

    /// The number of members, including those with unknown algorithms.
    #[must_use]
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Whether the field has no members at all.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// The digest bytes of the member named `name`, known algorithm or not.
    #[must_use]
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        self.members
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_slice())
    }

    /// The digest bytes of the member for `algorithm`.
    #[must_use]
    pub fn get_algorithm(&self, algorithm: DigestAlgorithm) -> Option<&[u8]> {
        self.get(algorithm.name())
    }

    /// The supported algorithms that have a member, in field order.
    pub fn algorithms(&self) -> impl Iterator<Item = DigestAlgorithm> + '_ {
        self.members
            .iter()
            .filter_map(|(n, _)| DigestAlgorithm::from_name(n))
    }

    /// The members with supported algorithms, as [`Digest`]s, in field order.
    pub fn digests(&self) -> impl Iterator<Item = Digest> + '_ {
        self.members.iter().filter_map(|(n, v)| {
            DigestAlgorithm::from_name(n).map(|alg| Digest::new(alg, v.clone()))
        })
    }

    /// Serialises the field value, `sha-256=:...:, sha-512=:...:`.
    ///
    /// An empty field serialises as the empty string (RFC 8941 says an empty
    /// Dictionary is not sent at all).
    #[must_use]
    pub fn to_header_value(&self) -> String {
        let mut ser = sfv::DictSerializer::new();
        for (name, value) in &self.members {
            // Every stored name was validated on the way in.
            if let Ok(key) = sfv::KeyRef::from_str(name) {
                let _ = ser.bare_item(key, value.as_slice());
            }
        }
        ser.finish().unwrap_or_default()
    }

    /// Verifies the field against the complete `content`, accepting any
    /// supported algorithm.
    ///
    /// Succeeds when at least one member has a supported algorithm and every
    /// such member matches. Returns the strongest algorithm verified.
    ///
    /// # Errors
    ///
    /// [`DigestError::NoSupportedAlgorithm`] when no member has a supported
    /// algorithm; [`DigestError::Mismatch`] when a supported member does not
    /// match.
    pub fn verify(&self, content: &[u8]) -> Result<DigestAlgorithm, DigestError> {
        self.verify_with(content, DigestAlgorithm::ALL)
    }

    /// Verifies the field against the complete `content`, considering only
    /// members whose algorithm is in `allowed`.
    ///
    /// Members with algorithms outside `allowed` are ignored just like
    /// unknown ones, so a policy of `&[DigestAlgorithm::Sha512]` refuses a
    /// field that carries only `sha-256`. Succeeds when at least one allowed
    /// member is present and every allowed member matches; returns the
    /// strongest algorithm verified.
    ///
    /// # Errors
    ///
    /// [`DigestError::NoSupportedAlgorithm`] when no member has an allowed
    /// algorithm; [`DigestError::Mismatch`] when an allowed member does not
    /// match.
    pub fn verify_with(
        &self,
        content: &[u8],
        allowed: &[DigestAlgorithm],
    ) -> Result<DigestAlgorithm, DigestError> {
        let mut best: Option<DigestAlgorithm> = None;
        for (name, expected) in &self.members {
            let Some(alg) = DigestAlgorithm::from_name(name) else {
                continue;
            };
            if !allowed.contains(&alg) {
                continue;
            }
            if !Digest::compute(alg, content).matches(expected) {
                return Err(DigestError::Mismatch { algorithm: alg });
            }
            best = Some(stronger(best, alg));
        }
        best.ok_or(DigestError::NoSupportedAlgorithm)
    }

    /// Verifies the field against digests the caller already computed, for
    /// example with a [`MultiHasher`] over streamed content.
    ///
    /// Only members whose algorithm is among `computed` are checked: the set
    /// of computed algorithms acts as the allow-list. Succeeds when at least
    /// one such member is present and every one of them matches; returns the
    /// strongest algorithm verified. Use [`MultiHasher::for_field`] to compute
    /// exactly the digests a field needs.
    ///
    /// # Errors
    ///
    /// [`DigestError::NoSupportedAlgorithm`] when no member has an algorithm
    /// among `computed`; [`DigestError::Mismatch`] when such a member does
    /// not match.
    pub fn verify_digests(&self, computed: &[Digest]) -> Result<DigestAlgorithm, DigestError> {
        let mut best: Option<DigestAlgorithm> = None;
        for (name, expected) in &self.members {
            let Some(alg) = DigestAlgorithm::from_name(name) else {
                continue;
            };
            let Some(digest) = computed.iter().find(|d| d.algorithm == alg) else {
                continue;
            };
            if !digest.matches(expected) {
                return Err(DigestError::Mismatch { algorithm: alg });
            }
            best = Some(stronger(best, alg));
        }
        best.ok_or(DigestError::NoSupportedAlgorithm)
    }
}

fn stronger(best: Option<DigestAlgorithm>, alg: DigestAlgorithm) -> DigestAlgorithm {
    match best {
        Some(b) if b.strength() >= alg.strength() => b,
        _ => alg,
    }
}

impl fmt::Display for DigestField {
    /// Same as [`DigestField::to_header_value`].
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_header_value())
    }
}

impl std::str::FromStr for DigestField {
    type Err = DigestError;

    /// Same as [`DigestField::parse`].
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        DigestField::parse(s)
    }
}

impl From<Digest> for DigestField {
    fn from(digest: Digest) -> Self {
        let mut field = DigestField::new();
        field.insert(digest);
        field
    }
}

impl FromIterator<Digest> for DigestField {
    fn from_iter<I: IntoIterator<Item = Digest>>(iter: I) -> Self {
        let mut field = DigestField::new();
        for digest in iter {
            field.insert(digest);
        }
        field
    }
}

/// The highest preference weight in `Want-*-Digest` fields.
pub const MAX_WANT_WEIGHT: u8 = 10;

/// A `Want-Content-Digest` or `Want-Repr-Digest` field value (RFC 9530
/// section 4): an ordered Dictionary of algorithm names and Integer weights
/// from 0 to 10, where 0 means "not acceptable" and 10 "most preferred".
///
/// ```
/// use oba_httpsig::digest::{DigestAlgorithm, WantDigest};
///
/// let want = WantDigest::parse("sha-512=3, sha-256=10, unixsum=0")?;
/// assert_eq!(want.preferred(DigestAlgorithm::ALL), Some(DigestAlgorithm::Sha256));
/// assert_eq!(want.preferred(&[DigestAlgorithm::Sha512]), Some(DigestAlgorithm::Sha512));
/// assert_eq!(want.to_string(), "sha-512=3, sha-256=10, unixsum=0");
/// # Ok::<(), oba_httpsig::digest::DigestError>(())
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WantDigest {
    prefs: Vec<(String, u8)>,
}

impl WantDigest {
    /// An empty preference list, to fill with [`WantDigest::insert`].
    #[must_use]
    pub fn new() -> Self {
        WantDigest::default()
    }

    /// Parses a field value.
    ///
    /// # Errors
    ///
    /// [`DigestError::Malformed`] if the value is not an RFC 8941 Dictionary
    /// or a member is not an Integer from 0 to 10 (parameters are ignored).
    pub fn parse(value: &str) -> Result<Self, DigestError> {
        let dict: sfv::Dictionary = sfv::Parser::new(value)
            .parse()
            .map_err(|e| DigestError::malformed(format!("not a valid dictionary: {e}")))?;
        let mut prefs = Vec::with_capacity(dict.len());
        for (key, entry) in dict {
            let weight = match entry {
                sfv::ListEntry::Item(sfv::Item {
                    bare_item: sfv::BareItem::Integer(i),
                    ..
                }) => u8::try_from(i).ok().filter(|w| *w <= MAX_WANT_WEIGHT),
                _ => None,
            };
            let Some(weight) = weight else {
                return Err(DigestError::malformed(format!(
                    "preference {:?} is not an integer from 0 to {MAX_WANT_WEIGHT}",
                    key.as_str()
                )));
            };
            prefs.push((String::from(key), weight));
        }
        Ok(WantDigest { prefs })
    }

    /// Adds or replaces (in its position) the preference for `algorithm`.
    ///
    /// # Errors
    ///
    /// [`DigestError::Malformed`] if `weight` is above 10.
    pub fn insert(&mut self, algorithm: DigestAlgorithm, weight: u8) -> Result<(), DigestError> {
        self.insert_raw(algorithm.name(), weight)
    }

    /// Adds or replaces (in its position) the preference for any algorithm
    /// name.
    ///
    /// # Errors
    ///
    /// [`DigestError::Malformed`] if `name` is not a valid Structured Field
    /// key or `weight` is above 10.
    pub fn insert_raw(&mut self, name: &str, weight: u8) -> Result<(), DigestError> {
        check_key(name)?;
        if weight > MAX_WANT_WEIGHT {
            return Err(DigestError::malformed(format!(
                "preference {name:?} weight {weight} is above {MAX_WANT_WEIGHT}"
            )));
        }
        match self.prefs.iter_mut().find(|(n, _)| n == name) {
            Some(pref) => pref.1 = weight,
            None => self.prefs.push((name.to_owned(), weight)),
        }
        Ok(())
    }

    /// The preferences in order, as (algorithm name, weight), including
    /// unknown algorithms and weight 0.
    pub fn prefs(&self) -> impl ExactSizeIterator<Item = (&str, u8)> + '_ {
        self.prefs.iter().map(|(n, w)| (n.as_str(), *w))
    }

    /// The weight given to the algorithm named `name`, if listed.
    #[must_use]
    pub fn weight(&self, name: &str) -> Option<u8> {
        self.prefs.iter().find(|(n, _)| n == name).map(|(_, w)| *w)
    }

    /// The algorithm to answer with: among `supported`, the listed one with
    /// the highest non-zero weight; on a tie, the one listed first. `None`
    /// when no supported algorithm is listed with a non-zero weight.
    #[must_use]
    pub fn preferred(&self, supported: &[DigestAlgorithm]) -> Option<DigestAlgorithm> {
        let mut best: Option<(DigestAlgorithm, u8)> = None;
        for (name, weight) in &self.prefs {
            if *weight == 0 {
                continue;
            }
            let Some(alg) = DigestAlgorithm::from_name(name) else {
                continue;
            };
            if !supported.contains(&alg) {
                continue;
            }
            match best {
                Some((_, w)) if w >= *weight => {}
                _ => best = Some((alg, *weight)),
            }
        }
        best.map(|(alg, _)| alg)
    }

    /// Serialises the field value, `sha-512=3, sha-256=10`. An empty list
    /// serialises as the empty string.
    #[must_use]
    pub fn to_header_value(&self) -> String {
        let mut ser = sfv::DictSerializer::new();
        for (name, weight) in &self.prefs {
            // Every stored name was validated on the way in.
            if let Ok(key) = sfv::KeyRef::from_str(name) {
                let _ = ser.bare_item(key, sfv::Integer::from(*weight));
            }
        }
        ser.finish().unwrap_or_default()
    }
}

impl fmt::Display for WantDigest {
    /// Same as [`WantDigest::to_header_value`].
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_header_value())
    }
}

impl std::str::FromStr for WantDigest {
    type Err = DigestError;

    /// Same as [`WantDigest::parse`].
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        WantDigest::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HELLO: &[u8] = b"{\"hello\": \"world\"}";
    const HELLO_256: &str = "X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=";
    const HELLO_512: &str =
        "WZDPaVn/7XgHaAy8pmojAkGWoRx2UFChF41A2svX+TaPm+AbwAgBWnrIiYllu7BNNyealdVLvRwEmTHWXvJwew==";

    fn b64(s: &str) -> Vec<u8> {
        base64::engine::general_purpose::STANDARD.decode(s).unwrap()
    }

    fn is_malformed<T: fmt::Debug>(r: Result<T, DigestError>) -> bool {
        matches!(r, Err(DigestError::Malformed { .. }))
    }

    #[test]
    fn names_round_trip_and_are_case_sensitive() {
        for &alg in DigestAlgorithm::ALL {
            assert_eq!(DigestAlgorithm::from_name(alg.name()), Some(alg));
            assert_eq!(alg.to_string(), alg.name());
            assert_eq!(alg.digest(b"x").len(), alg.output_len());
        }
        assert_eq!(DigestAlgorithm::from_name("SHA-256"), None);
        assert_eq!(DigestAlgorithm::from_name("Sha-512"), None);
        assert_eq!(DigestAlgorithm::from_name("sha256"), None);
        assert_eq!(DigestAlgorithm::from_name("md5"), None);
        assert_eq!(DigestAlgorithm::from_name(""), None);
    }

    #[test]
    fn empty_body() {
        let field = DigestField::compute(DigestAlgorithm::ALL, b"");
        assert_eq!(
            field.get_algorithm(DigestAlgorithm::Sha256),
            Some(&b64("47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=")[..])
        );
        assert_eq!(field.verify(b""), Ok(DigestAlgorithm::Sha512));
        assert_eq!(
            field.verify(b"\0"),
            Err(DigestError::Mismatch {
                algorithm: DigestAlgorithm::Sha256
            })
        );
        // An empty hasher gives the same as the one-shot digest.
        assert_eq!(
            Hasher::new(DigestAlgorithm::Sha512).finalize(),
            Digest::compute(DigestAlgorithm::Sha512, b"")
        );
    }

    #[test]
    fn known_values_and_serialisation() {
        let field =
            DigestField::compute(&[DigestAlgorithm::Sha256, DigestAlgorithm::Sha512], HELLO);
        assert_eq!(
            field.to_header_value(),
            format!("sha-256=:{HELLO_256}:, sha-512=:{HELLO_512}:")
        );
        assert_eq!(field.to_string(), field.to_header_value());
        assert_eq!(DigestField::parse(&field.to_header_value()).unwrap(), field);
        let d = Digest::compute(DigestAlgorithm::Sha256, HELLO);
        assert_eq!(d.to_base64(), HELLO_256);
        assert_eq!(d.to_string(), format!("sha-256=:{HELLO_256}:"));
        assert_eq!(
            DigestField::from(d).to_header_value(),
            format!("sha-256=:{HELLO_256}:")
        );
    }

    #[test]
    fn compute_skips_repeats_and_empty_field_serialises_empty() {
        let field = DigestField::compute(
            &[
                DigestAlgorithm::Sha512,
                DigestAlgorithm::Sha512,
                DigestAlgorithm::Sha256,
            ],
            HELLO,
        );
        let names: Vec<&str> = field.members().map(|(n, _)| n).collect();
        assert_eq!(names, ["sha-512", "sha-256"]);
        assert_eq!(DigestField::compute(&[], HELLO).to_header_value(), "");
        assert_eq!(DigestField::new().to_string(), "");
    }

    #[test]
    fn multiple_members_all_match() {
        let field =
            DigestField::parse(&format!("sha-512=:{HELLO_512}:,sha-256=:{HELLO_256}:")).unwrap();
        assert_eq!(field.len(), 2);
        assert_eq!(field.verify(HELLO), Ok(DigestAlgorithm::Sha512));
        assert_eq!(
            field.verify_with(HELLO, &[DigestAlgorithm::Sha256]),
            Ok(DigestAlgorithm::Sha256)
        );
        let algs: Vec<_> = field.algorithms().collect();
        assert_eq!(algs, [DigestAlgorithm::Sha512, DigestAlgorithm::Sha256]);
    }

    #[test]
    fn one_member_wrong_fails() {
        let wrong_256 = "RK/0qy18MlBSVnWgjwz6lZEWjP/lF5HF9bvEF8FabDg=";
        let field =
            DigestField::parse(&format!("sha-256=:{wrong_256}:, sha-512=:{HELLO_512}:")).unwrap();
        let expected = Err(DigestError::Mismatch {
            algorithm: DigestAlgorithm::Sha256,
        });
        assert_eq!(field.verify(HELLO), expected);
        assert_eq!(
            field.verify_digests(&tap(MultiHasher::new(DigestAlgorithm::ALL), HELLO)),
            expected
        );
        // A policy that only looks at sha-512 does not see the bad member.
        assert_eq!(
            field.verify_with(HELLO, &[DigestAlgorithm::Sha512]),
            Ok(DigestAlgorithm::Sha512)
        );
        // Wrong-length value never matches.
        let short = DigestField::parse("sha-256=:AAAA:").unwrap();
        assert!(matches!(
            short.verify(HELLO),
            Err(DigestError::Mismatch { .. })
        ));
    }

    fn tap(mut hasher: MultiHasher, data: &[u8]) -> Vec<Digest> {
        hasher.update(data);
        hasher.finalize()
    }

    #[test]
    fn non_byte_sequence_member_is_malformed() {
        for bad in [
            "sha-256=abc",
            "sha-256=\"abc\"",
            "sha-256=1",
            "sha-256=1.5",
            "sha-256",
            "sha-256=?0",
            "sha-256=(:AAAA:)",
            &format!("sha-512=:{HELLO_512}:, sha-256=x"),
            "sha-256=:AAAA",
            "sha-256=:!!!!:",
            "SHA-256=:AAAA:",
            "sha-256=:AAAA:,",
            ":AAAA:",
        ] {
            assert!(is_malformed(DigestField::parse(bad)), "{bad:?} parsed");
        }
        let err = DigestField::parse("sha-256=abc").unwrap_err();
        assert!(err.to_string().contains("sha-256"), "{err}");
    }

    #[test]
    fn parameters_are_ignored_and_duplicates_replace() {
        let field = DigestField::parse(&format!("sha-256=:{HELLO_256}:;foo=1")).unwrap();
        assert_eq!(field.verify(HELLO), Ok(DigestAlgorithm::Sha256));
        assert_eq!(field.to_header_value(), format!("sha-256=:{HELLO_256}:"));
        let dup = DigestField::parse(&format!(
            "sha-256=:AAAA:, sha-512=:AAAA:, sha-256=:{HELLO_256}:"
        ))
        .unwrap();
        assert_eq!(dup.len(), 2);
        assert_eq!(dup.members().next().unwrap().0, "sha-256");
        assert_eq!(dup.get("sha-256"), Some(&b64(HELLO_256)[..]));
    }

    #[test]
    fn unknown_algorithm_only() {
        let field = DigestField::parse("md5=:Sd/dVLAcvNLSq16eXua5uQ==:, unixsum=:GQU=:").unwrap();
        assert_eq!(field.len(), 2);
        assert_eq!(field.algorithms().count(), 0);
        assert_eq!(field.verify(HELLO), Err(DigestError::NoSupportedAlgorithm));
        assert_eq!(
            field.verify_digests(&[]),
            Err(DigestError::NoSupportedAlgorithm)
        );
        assert!(matches!(
            MultiHasher::for_field(&field),
            Err(DigestError::NoSupportedAlgorithm)
        ));
        // Kept and serialised again.
        assert_eq!(
            field.to_header_value(),
            "md5=:Sd/dVLAcvNLSq16eXua5uQ==:, unixsum=:GQU=:"
        );
        // Unknown members alongside a supported one are ignored.
        let mixed = DigestField::parse(&format!("md5=:AAAA:, sha-256=:{HELLO_256}:")).unwrap();
        assert_eq!(mixed.verify(HELLO), Ok(DigestAlgorithm::Sha256));
        assert_eq!(
            DigestField::parse("").unwrap().verify(HELLO),
            Err(DigestError::NoSupportedAlgorithm)
        );
    }

    #[test]
    fn allow_list_policy() {
        let only_256 = DigestField::compute(&[DigestAlgorithm::Sha256], HELLO);
        assert_eq!(
            only_256.verify_with(HELLO, &[DigestAlgorithm::Sha512]),
            Err(DigestError::NoSupportedAlgorithm)
        );
        assert_eq!(
            only_256.verify_with(HELLO, &[]),
            Err(DigestError::NoSupportedAlgorithm)
        );
        assert!(MultiHasher::for_field_with(&only_256, &[DigestAlgorithm::Sha512]).is_err());
        // verify_digests: the computed set is the allow-list.
        let both = DigestField::compute(DigestAlgorithm::ALL, HELLO);
        let only_512 = [Digest::compute(DigestAlgorithm::Sha512, HELLO)];
        assert_eq!(both.verify_digests(&only_512), Ok(DigestAlgorithm::Sha512));
        assert_eq!(
            only_256.verify_digests(&only_512),
            Err(DigestError::NoSupportedAlgorithm)
        );
    }

    #[test]
    fn incremental_equals_one_shot_for_every_split() {
        let data: Vec<u8> = (0u8..=255).cycle().take(300).collect();
        for &alg in DigestAlgorithm::ALL {
            let expected = alg.digest(&data);
            for split in [0, 1, 63, 64, 65, 127, 128, 129, 299, 300] {
                let mut h = Hasher::new(alg);
                assert_eq!(h.algorithm(), alg);
                h.update(&data[..split]);
                h.update(&[]);
                h.update(&data[split..]);
                assert_eq!(
                    h.finalize().value(),
                    expected.as_slice(),
                    "{alg} split {split}"
                );
            }
            let mut h = Hasher::new(alg);
            for b in &data {
                h.update(std::slice::from_ref(b));
            }
            assert_eq!(h.finalize().value(), expected.as_slice());
        }
        let mut m = MultiHasher::new(&[
            DigestAlgorithm::Sha512,
            DigestAlgorithm::Sha256,
            DigestAlgorithm::Sha512,
        ]);
        assert_eq!(m.algorithms().count(), 2);
        for chunk in data.chunks(7) {
            m.update(chunk);
        }
        let out = m.finalize();
        assert_eq!(out[0], Digest::compute(DigestAlgorithm::Sha512, &data));
        assert_eq!(out[1], Digest::compute(DigestAlgorithm::Sha256, &data));
    }

    #[test]
    fn multi_hasher_for_field_verifies_streamed_content() {
        let field = DigestField::compute(DigestAlgorithm::ALL, HELLO);
        let mut m = MultiHasher::for_field(&field).unwrap();
        for chunk in HELLO.chunks(5) {
            m.update(chunk);
        }
        assert_eq!(
            field.verify_digests(&m.finalize()),
            Ok(DigestAlgorithm::Sha512)
        );
        let mut m = MultiHasher::for_field(&field).unwrap();
        m.update(b"tampered");
        assert!(matches!(
            field.verify_digests(&m.finalize()),
            Err(DigestError::Mismatch { .. })
        ));
    }

    #[test]
    fn insert_and_insert_raw() {
        let mut field = DigestField::new();
        field.insert(Digest::new(DigestAlgorithm::Sha256, vec![1]));
        field.insert_raw("crc32c", vec![2, 3]).unwrap();
        field.insert(Digest::compute(DigestAlgorithm::Sha256, HELLO));
        assert_eq!(field.len(), 2);
        assert_eq!(field.verify(HELLO), Ok(DigestAlgorithm::Sha256));
        assert!(is_malformed(field.insert_raw("SHA-1", vec![])));
        assert!(is_malformed(field.insert_raw("", vec![])));
        let collected: DigestField = field.digests().collect();
        assert_eq!(collected.len(), 1);
        assert_eq!(
            "sha-256=:AQ==:"
                .parse::<DigestField>()
                .unwrap()
                .get("sha-256"),
            Some(&[1u8][..])
        );
    }

    #[test]
    fn digest_equality_is_by_algorithm_and_bytes() {
        let a = Digest::new(DigestAlgorithm::Sha256, vec![1, 2, 3]);
        assert_eq!(a, Digest::new(DigestAlgorithm::Sha256, vec![1, 2, 3]));
        assert_ne!(a, Digest::new(DigestAlgorithm::Sha512, vec![1, 2, 3]));
        assert_ne!(a, Digest::new(DigestAlgorithm::Sha256, vec![1, 2]));
        assert!(a.matches(&[1, 2, 3]));
        assert!(!a.matches(&[1, 2, 3, 4]));
        assert_eq!(a.clone().into_value(), vec![1, 2, 3]);
    }

    #[test]
    fn want_parsing_and_preference() {
        let want = WantDigest::parse("sha-512=3, sha-256=10, unixsum=0").unwrap();
        assert_eq!(want.prefs().len(), 3);
        assert_eq!(want.weight("unixsum"), Some(0));
        assert_eq!(
            want.preferred(DigestAlgorithm::ALL),
            Some(DigestAlgorithm::Sha256)
        );
        assert_eq!(
            want.preferred(&[DigestAlgorithm::Sha512]),
            Some(DigestAlgorithm::Sha512)
        );
        assert_eq!(want.preferred(&[]), None);
        assert_eq!(want.to_header_value(), "sha-512=3, sha-256=10, unixsum=0");
        // Ties go to the first listed.
        let tie = WantDigest::parse("sha-512=5, sha-256=5").unwrap();
        assert_eq!(
            tie.preferred(DigestAlgorithm::ALL),
            Some(DigestAlgorithm::Sha512)
        );
        let tie = WantDigest::parse("sha-256=5, sha-512=5").unwrap();
        assert_eq!(
            tie.preferred(DigestAlgorithm::ALL),
            Some(DigestAlgorithm::Sha256)
        );
        // 0 means not acceptable.
        let zero = WantDigest::parse("sha-256=0, sha-512=0, md5=9").unwrap();
        assert_eq!(zero.preferred(DigestAlgorithm::ALL), None);
        assert_eq!(
            WantDigest::parse("")
                .unwrap()
                .preferred(DigestAlgorithm::ALL),
            None
        );
    }

    #[test]
    fn want_out_of_range_and_wrong_types_are_malformed() {
        for bad in [
            "sha-256=11",
            "sha-256=-1",
            "sha-256=256",
            "sha-256=999999999999999",
            "sha-256=1.0",
            "sha-256=\"1\"",
            "sha-256=:AQ==:",
            "sha-256",
            "sha-256=?1",
            "sha-256=a",
            "sha-256=(1 2)",
            "sha-256=1, sha-512=11",
            "SHA-256=1",
            "sha-256=1,",
        ] {
            assert!(is_malformed(WantDigest::parse(bad)), "{bad:?} parsed");
        }
        assert!(WantDigest::parse("sha-256=0, sha-512=10").is_ok());
        assert!(WantDigest::parse("sha-256=10;q=1").is_ok());
    }

    #[test]
    fn want_builder() {
        let mut want = WantDigest::new();
        want.insert(DigestAlgorithm::Sha512, 3).unwrap();
        want.insert(DigestAlgorithm::Sha256, 10).unwrap();
        want.insert_raw("unixsum", 0).unwrap();
        want.insert(DigestAlgorithm::Sha512, 4).unwrap();
        assert_eq!(want.to_string(), "sha-512=4, sha-256=10, unixsum=0");
        assert!(is_malformed(want.insert(DigestAlgorithm::Sha256, 11)));
        assert!(is_malformed(want.insert_raw("Bad", 1)));
        assert_eq!(want.to_string().parse::<WantDigest>().unwrap(), want);
        assert_eq!(WantDigest::new().to_header_value(), "");
    }

    #[test]
    fn error_messages() {
        assert_eq!(
            DigestError::Mismatch {
                algorithm: DigestAlgorithm::Sha512
            }
            .to_string(),
            "sha-512 digest does not match the content"
        );
        assert!(DigestError::NoSupportedAlgorithm
            .to_string()
            .contains("supported"));
        assert!(DigestError::malformed("x")
            .to_string()
            .starts_with("malformed digest field"));
    }
}
