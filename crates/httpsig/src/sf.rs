//! Order- and duplicate-preserving Structured Field parsing (RFC 8941 / RFC 9651).
//!
//! `sfv`'s own parsed types are maps, so a repeated dictionary key or parameter silently
//! replaces the earlier one. RFC 9421 forbids duplicate labels, duplicate parameters and
//! duplicate covered components, so this module collects the raw sequence through `sfv`'s
//! visitor API (which keeps `sfv`'s strict grammar) and leaves the duplicate checks to
//! the callers, which know which duplicates are errors.

use std::convert::Infallible;

use sfv::visitor::{
    DictionaryVisitor, EntryVisitor, InnerListVisitor, ItemVisitor, ParameterVisitor,
};
use sfv::{BareItem, BareItemFromInput, KeyRef, Parser};

/// Parameters in received order, duplicates kept.
pub(crate) type Params = Vec<(String, BareItem)>;

/// An item with its parameters.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct SfItem {
    pub(crate) bare: BareItem,
    pub(crate) params: Params,
}

/// A dictionary member value: an item or an inner list.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum SfEntry {
    Item(SfItem),
    Inner(Vec<SfItem>, Params),
}

/// Parses a Dictionary, keeping every member (duplicates included) in order.
pub(crate) fn parse_dictionary(input: &[u8]) -> Result<Vec<(String, SfEntry)>, sfv::Error> {
    Parser::new(input).parse_dictionary_with_visitor(DictCollector(Vec::new()))
}

/// Parses an Item, keeping every parameter (duplicates included) in order.
pub(crate) fn parse_item(input: &[u8]) -> Result<SfItem, sfv::Error> {
    Parser::new(input).parse_item_with_visitor(ItemCollector)
}

/// The first key that occurs twice in `keys`, if any. A linear scan for the usual
/// handful of keys; a hash set beyond that, so a header with many members cannot cost
/// quadratic work.
pub(crate) fn first_duplicate<'a>(keys: impl Iterator<Item = &'a str> + Clone) -> Option<&'a str> {
    if keys.clone().nth(16).is_none() {
        let all = keys.clone();
        for (i, k) in keys.enumerate() {
            if all.clone().skip(i + 1).any(|o| o == k) {
                return Some(k);
            }
        }
        return None;
    }
    let mut seen = std::collections::HashSet::new();
    keys.into_iter().find(|&k| !seen.insert(k))
}

struct DictCollector(Vec<(String, SfEntry)>);

impl<'de> DictionaryVisitor<'de> for DictCollector {
    type Out = Vec<(String, SfEntry)>;
    type Error = Infallible;

    fn entry(&mut self, key: &'de KeyRef) -> Result<impl EntryVisitor<'de>, Self::Error> {
        Ok(EntryCollector {
            out: &mut self.0,
            key: key.as_str().to_owned(),
        })
    }

    fn finish(self) -> Result<Self::Out, Self::Error> {
        Ok(self.0)
    }
}

struct EntryCollector<'a> {
    out: &'a mut Vec<(String, SfEntry)>,
    key: String,
}

impl<'de> ItemVisitor<'de> for EntryCollector<'_> {
    type Out = ();
    type Error = Infallible;

    fn bare_item(
        self,
        bare_item: BareItemFromInput<'de>,
    ) -> Result<impl ParameterVisitor<'de, Out = ()>, Self::Error> {
        self.out.push((
            self.key,
            SfEntry::Item(SfItem {
                bare: bare_item.into(),
                params: Vec::new(),
            }),
        ));
        match &mut self.out.last_mut().expect("just pushed").1 {
            SfEntry::Item(item) => Ok(ParamCollector(&mut item.params)),
            SfEntry::Inner(_, params) => Ok(ParamCollector(params)),
        }
    }
}

impl<'de> EntryVisitor<'de> for EntryCollector<'_> {
    type Error = Infallible;

    fn item(self) -> Result<impl ItemVisitor<'de>, Self::Error> {
        Ok(self)
    }

    fn inner_list(self) -> Result<impl InnerListVisitor<'de>, Self::Error> {
        self.out
            .push((self.key, SfEntry::Inner(Vec::new(), Vec::new())));
        let (items, params) = match &mut self.out.last_mut().expect("just pushed").1 {
            SfEntry::Inner(items, params) => (items, params),
            SfEntry::Item(_) => unreachable!("an inner list was just pushed"),
        };
        Ok(InnerCollector { items, params })
    }
}

struct InnerCollector<'a> {
    items: &'a mut Vec<SfItem>,
    params: &'a mut Params,
}

impl<'de> InnerListVisitor<'de> for InnerCollector<'_> {
    type Error = Infallible;

    fn item(&mut self) -> Result<impl ItemVisitor<'de>, Self::Error> {
        Ok(InnerItem(&mut *self.items))
    }

    fn finish(self) -> Result<impl ParameterVisitor<'de>, Self::Error> {
        Ok(ParamCollector(self.params))
    }
}

struct InnerItem<'a>(&'a mut Vec<SfItem>);

impl<'de> ItemVisitor<'de> for InnerItem<'_> {
    type Out = ();
    type Error = Infallible;

    fn bare_item(
        self,
        bare_item: BareItemFromInput<'de>,
    ) -> Result<impl ParameterVisitor<'de, Out = ()>, Self::Error> {
        self.0.push(SfItem {
            bare: bare_item.into(),
            params: Vec::new(),
        });
        Ok(ParamCollector(
            &mut self.0.last_mut().expect("just pushed").params,
        ))
    }
}

struct ParamCollector<'a>(&'a mut Params);

impl<'de> ParameterVisitor<'de> for ParamCollector<'_> {
    type Out = ();
    type Error = Infallible;

    fn parameter(
        &mut self,
        key: &'de KeyRef,
        value: BareItemFromInput<'de>,
    ) -> Result<(), Self::Error> {
        self.0.push((key.as_str().to_owned(), value.into()));
        Ok(())
    }

    fn finish(self) -> Result<(), Self::Error> {
        Ok(())
    }
}

struct ItemCollector;

impl<'de> ItemVisitor<'de> for ItemCollector {
    type Out = SfItem;
    type Error = Infallible;

    fn bare_item(
        self,
        bare_item: BareItemFromInput<'de>,
    ) -> Result<impl ParameterVisitor<'de, Out = SfItem>, Self::Error> {
        Ok(OwnedItem(SfItem {
            bare: bare_item.into(),
            params: Vec::new(),
        }))
    }
}

struct OwnedItem(SfItem);

impl<'de> ParameterVisitor<'de> for OwnedItem {
    type Out = SfItem;
    type Error = Infallible;

    fn parameter(
        &mut self,
        key: &'de KeyRef,
        value: BareItemFromInput<'de>,
    ) -> Result<(), Self::Error> {
        self.0.params.push((key.as_str().to_owned(), value.into()));
        Ok(())
    }

    fn finish(self) -> Result<SfItem, Self::Error> {
        Ok(self.0)
    }
}

/// Serialises a bare item the way RFC 8941 section 4.1 does.
pub(crate) fn write_bare_item(out: &mut String, item: &BareItem) {
    use std::fmt::Write;
    match item {
        BareItem::Integer(i) => {
            let _ = write!(out, "{i}");
        }
        BareItem::Decimal(d) => {
            let _ = write!(out, "{d}");
        }
        BareItem::String(s) => write_string(out, s.as_str()),
        BareItem::Token(t) => out.push_str(t.as_str()),
        BareItem::ByteSequence(b) => {
            use base64::Engine;
            out.push(':');
            base64::engine::general_purpose::STANDARD.encode_string(b, out);
            out.push(':');
        }
        BareItem::Boolean(b) => out.push_str(if *b { "?1" } else { "?0" }),
        BareItem::Date(d) => {
            let _ = write!(out, "@{}", d.unix_seconds());
        }
        BareItem::DisplayString(s) => {
            out.push_str("%\"");
            for b in s.bytes() {
                if b == b'%' || b == b'"' || !(0x20..0x7f).contains(&b) {
                    let _ = write!(out, "%{b:02x}");
                } else {
                    out.push(b as char);
                }
            }
            out.push('"');
        }
    }
}

/// Serialises parameters (`;key` for `true`, `;key=value` otherwise).
pub(crate) fn write_params(out: &mut String, params: &Params) {
    for (k, v) in params {
        out.push(';');
        out.push_str(k);
        if !matches!(v, BareItem::Boolean(true)) {
            out.push('=');
            write_bare_item(out, v);
        }
    }
}

/// Serialises an sf-string (the value must already be a valid sf-string).
pub(crate) fn write_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicates_are_kept_in_order() {
        let d = parse_dictionary(b"a=1, b=(x y);p=1;p=2, a=2").unwrap();
        assert_eq!(d.len(), 3);
        assert_eq!(
            first_duplicate(d.iter().map(|(k, _)| k.as_str())),
            Some("a")
        );
        match &d[1].1 {
            SfEntry::Inner(items, params) => {
                assert_eq!(items.len(), 2);
                assert_eq!(params.len(), 2);
            }
            SfEntry::Item(_) => panic!("expected an inner list"),
        }
    }

    #[test]
    fn bad_syntax_is_an_error() {
        assert!(parse_dictionary(b"a=(").is_err());
        assert!(parse_item(b"\"unterminated").is_err());
    }

    #[test]
    fn serialise_round_trip() {
        let item = parse_item(b"\"a\\\"b\";k=1;t=tok;b;f=?0;bs=:AQI=:").unwrap();
        let mut s = String::new();
        write_bare_item(&mut s, &item.bare);
        write_params(&mut s, &item.params);
        assert_eq!(s, "\"a\\\"b\";k=1;t=tok;b;f=?0;bs=:AQI=:");
    }
}
