//! Reading an event's JSON text member by member, each value kept as the
//! text it was sent as (see [`super::from_json`]).

use std::borrow::Cow;

use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;

use super::{KNOWN, MAX_EXTENSIONS};

/// The members of a JSON object with their values' JSON text, if `text` is
/// an object that can be stored member by member (see [`from_json`]).
pub(super) fn raw_members(text: &[u8]) -> Option<Vec<(Cow<'_, str>, &RawValue)>> {
    let RawMembers(members) = serde_json::from_slice(text).ok()?;
    // More members than an event may have: the Value path reports it (and a
    // quadratic duplicate check never runs on a huge object).
    if members.len() > KNOWN.len() + MAX_EXTENSIONS {
        return None;
    }
    for (i, (name, value)) in members.iter().enumerate() {
        if members[..i].iter().any(|(n, _)| n == name) {
            return None;
        }
        match classify(value.get()) {
            Text::AsSent => {}
            Text::CheckFirst if is_strict_json(value.get()) => {}
            Text::CheckFirst | Text::HasLineBreak => return None,
        }
    }
    Some(members)
}

/// What storing a value's JSON text as sent needs.
enum Text {
    /// Nothing: store it.
    AsSent,
    /// A full parse first (see [`classify`]).
    CheckFirst,
    /// A line break (whitespace inside an array or object): a JSON Lines
    /// record cannot hold it, so the Value path re-serializes the event.
    HasLineBreak,
}

/// Scans a value's text once. A value may hold something only a full parse
/// rejects: an escape (a lone UTF-16 surrogate such as `\ud800`), a number
/// out of range (`1e999`; one needs an exponent or over 300 digits) or
/// nesting deeper than a full parse allows. Reading a value as raw text
/// skips it without those checks; the `Value` path refuses them as
/// malformed JSON, and so must this one: many JSON parsers cannot read such
/// an event back. Nesting is counted exactly: brackets inside strings are
/// text (a string ends at a `"` no backslash escapes), so `["]",` repeated
/// 5,000 times is 5,000 levels, and a string full of brackets is none. (A
/// digit before an `e` inside a string also asks for the check; that only
/// costs the check.)
fn classify(text: &str) -> Text {
    let (mut digits, mut depth, mut check) = (0usize, 0usize, false);
    let (mut in_string, mut escaped) = (false, false);
    for b in text.bytes() {
        if in_string {
            match b {
                b'\n' | b'\r' => return Text::HasLineBreak,
                _ if escaped => escaped = false,
                b'\\' => {
                    escaped = true;
                    check = true;
                }
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'\n' | b'\r' => return Text::HasLineBreak,
            b'"' => in_string = true,
            b'e' | b'E' if digits > 0 => check = true,
            b'0'..=b'9' => {
                digits += 1;
                check |= digits > 300;
                continue;
            }
            // A full parse refuses over 128 levels.
            b'[' | b'{' => {
                depth += 1;
                check |= depth > 64;
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
        digits = 0;
    }
    if check {
        Text::CheckFirst
    } else {
        Text::AsSent
    }
}

/// True when `text` parses as JSON the way a `Value` parse would accept it,
/// without building anything.
fn is_strict_json(text: &str) -> bool {
    serde_json::from_str::<Strict>(text).is_ok()
}

/// Parses any JSON value completely (every string unescaped, every number
/// converted) and keeps nothing.
struct Strict;

impl<'de> Deserialize<'de> for Strict {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(StrictVisitor)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Strict;
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<Strict, E> {
        Ok(Strict)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Strict, E> {
        Ok(Strict)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Strict, E> {
        Ok(Strict)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Strict, E> {
        Ok(Strict)
    }
    fn visit_str<E>(self, _: &str) -> Result<Strict, E> {
        Ok(Strict)
    }
    fn visit_unit<E>(self) -> Result<Strict, E> {
        Ok(Strict)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Strict, A::Error> {
        while seq.next_element::<Strict>()?.is_some() {}
        Ok(Strict)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Strict, A::Error> {
        while map.next_entry::<Strict, Strict>()?.is_some() {}
        Ok(Strict)
    }
}

/// An object's members with each value kept as its JSON text. Member names
/// without escapes borrow from the input.
struct RawMembers<'a>(Vec<(Cow<'a, str>, &'a RawValue)>);

impl<'de> Deserialize<'de> for RawMembers<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Members;
        impl<'de> Visitor<'de> for Members {
            type Value = RawMembers<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut out = Vec::with_capacity(map.size_hint().unwrap_or(12));
                while let Some(CowStr(name)) = map.next_key()? {
                    out.push((name, map.next_value()?));
                }
                Ok(RawMembers(out))
            }
        }
        d.deserialize_map(Members)
    }
}

/// A JSON string, borrowed when it has no escapes.
pub(super) struct CowStr<'a>(pub(super) Cow<'a, str>);

impl<'de> Deserialize<'de> for CowStr<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Str;
        impl<'de> Visitor<'de> for Str {
            type Value = CowStr<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: serde::de::Error>(
                self,
                v: &'de str,
            ) -> Result<Self::Value, E> {
                Ok(CowStr(Cow::Borrowed(v)))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(CowStr(Cow::Owned(v.to_string())))
            }
            fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(CowStr(Cow::Owned(v)))
            }
        }
        d.deserialize_str(Str)
    }
}
