//! A borrowed reading of an event's `data`, for the validator.
//!
//! Validating a payload used to cost more in building the tree the
//! validator walks than in the validation itself: a `serde_json::Value`
//! allocates a string per key and per string value and an ordered map per
//! object (4.2 µs of an order event's 7 µs of schema work; see
//! `bench --bin schema-cost`). The `jsonschema` crate validates any
//! representation that implements its `Json` traits, so this module reads
//! `data`'s text once into a flat [`Doc`]: three vectors (values, object
//! members, array items), whose strings and keys borrow the event's own
//! bytes unless they hold an escape.
//!
//! It is the fast path only. A payload the reading does not take (an object
//! with more than [`MAX_MEMBERS`] members, where a scan per lookup would
//! cost more than a map, or one with a repeated key, where JSON parsers
//! disagree and `Value` keeps the last) goes to the `Value` path, and so
//! does every invalid payload: its violations are listed from a `Value`, so
//! the messages clients see come from one place.

use std::borrow::Cow;
use std::fmt;

use jsonschema::json::{cmp, Array, Json, Node, NodeIdentity, Object};
use jsonschema::JsonType;
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Number, Value};

/// Most members of one object the reading takes. The validator finds a
/// property by scanning its object's members, which beats hashing for the
/// few members events' objects have; a larger object goes to `Value`.
pub const MAX_MEMBERS: usize = 32;

/// The representation: nodes are indexes into a [`Doc`].
pub struct Borrowed;

/// `data` read once: every value in a flat vector, children before their
/// parent, the root last.
pub struct Doc<'t> {
    slots: Vec<Slot<'t>>,
    /// Each object's members, contiguous, in the order they were written.
    members: Vec<(Cow<'t, str>, u32)>,
    /// Each array's items, contiguous.
    items: Vec<u32>,
}

enum Slot<'t> {
    Null,
    Bool(bool),
    Number(Number),
    String(Cow<'t, str>),
    Array { start: u32, len: u32 },
    Object { start: u32, len: u32 },
}

impl<'t> Doc<'t> {
    /// Reads `text` (one JSON value), or `None` when the reading does not
    /// take it (see the module docs) or it is not JSON.
    pub fn read(text: &'t str) -> Option<Doc<'t>> {
        let mut b = Builder {
            doc: Doc {
                slots: Vec::with_capacity(text.len() / 8 + 1),
                members: Vec::with_capacity(text.len() / 16 + 1),
                items: Vec::new(),
            },
            pending_members: Vec::new(),
            pending_items: Vec::new(),
        };
        let mut de = serde_json::Deserializer::from_str(text);
        SlotSeed(&mut b).deserialize(&mut de).ok()?;
        de.end().ok()?;
        Some(b.doc)
    }

    /// The root value.
    pub fn root(&self) -> NodeRef<'_> {
        NodeRef {
            doc: self,
            at: self.slots.len() as u32 - 1,
        }
    }
}

/// A value of a [`Doc`]: cheap to copy, as the validator requires.
#[derive(Clone, Copy)]
pub struct NodeRef<'a> {
    doc: &'a Doc<'a>,
    at: u32,
}

impl<'a> NodeRef<'a> {
    fn slot(&self) -> &'a Slot<'a> {
        &self.doc.slots[self.at as usize]
    }

    fn at(&self, at: u32) -> NodeRef<'a> {
        NodeRef { doc: self.doc, at }
    }
}

/// An object of a [`Doc`].
#[derive(Clone, Copy)]
pub struct ObjectRef<'a> {
    node: NodeRef<'a>,
    members: &'a [(Cow<'a, str>, u32)],
}

/// An array of a [`Doc`].
#[derive(Clone, Copy)]
pub struct ArrayRef<'a> {
    node: NodeRef<'a>,
    items: &'a [u32],
}

impl Json for Borrowed {
    type Node<'a> = NodeRef<'a>;
    type PreparedKey = String;
    type StringBuffer = ();

    // A lookup scans at most MAX_MEMBERS members, as `SerdeJson`'s does
    // for small insertion-ordered objects; the same trade-off applies.
    const KEYS_PER_LOOKUP: usize = 2;
    const ACYCLIC: bool = true;

    fn prepare_key(key: &str) -> String {
        key.to_owned()
    }

    fn with_string_node<T>((): &mut (), string: &str, f: impl FnOnce(NodeRef<'_>) -> T) -> T {
        let doc = Doc {
            slots: vec![Slot::String(Cow::Borrowed(string))],
            members: Vec::new(),
            items: Vec::new(),
        };
        f(doc.root())
    }
}

impl<'a> Node<'a, Borrowed> for NodeRef<'a> {
    type Object = ObjectRef<'a>;
    type Array = ArrayRef<'a>;
    type Number = &'a Number;

    fn as_object(&self) -> Option<ObjectRef<'a>> {
        match *self.slot() {
            Slot::Object { start, len } => Some(ObjectRef {
                node: *self,
                members: &self.doc.members[start as usize..(start + len) as usize],
            }),
            _ => None,
        }
    }

    fn as_array(&self) -> Option<ArrayRef<'a>> {
        match *self.slot() {
            Slot::Array { start, len } => Some(ArrayRef {
                node: *self,
                items: &self.doc.items[start as usize..(start + len) as usize],
            }),
            _ => None,
        }
    }

    fn as_string(&self) -> Option<Cow<'a, str>> {
        match self.slot() {
            Slot::String(s) => Some(Cow::Borrowed(s.as_ref())),
            _ => None,
        }
    }

    fn as_number(&self) -> Option<&'a Number> {
        match self.slot() {
            Slot::Number(n) => Some(n),
            _ => None,
        }
    }

    fn as_boolean(&self) -> Option<bool> {
        match self.slot() {
            Slot::Bool(b) => Some(*b),
            _ => None,
        }
    }

    fn is_null(&self) -> bool {
        matches!(self.slot(), Slot::Null)
    }

    fn json_type(&self) -> JsonType {
        match self.slot() {
            Slot::Null => JsonType::Null,
            Slot::Bool(_) => JsonType::Boolean,
            Slot::Number(_) => JsonType::Number,
            Slot::String(_) => JsonType::String,
            Slot::Array { .. } => JsonType::Array,
            Slot::Object { .. } => JsonType::Object,
        }
    }

    /// `enum` and `const` on scalars compare without building a `Value`
    /// string (the default builds one per comparison).
    fn equals_value(&self, expected: &Value) -> bool {
        match (self.slot(), expected) {
            (Slot::String(s), Value::String(e)) => s.as_ref() == e,
            (Slot::String(_), _) | (_, Value::String(_)) => false,
            (Slot::Bool(b), Value::Bool(e)) => b == e,
            (Slot::Null, Value::Null) => true,
            (Slot::Number(n), Value::Number(e)) => cmp::equal_numbers(n, e),
            _ => cmp::equal(&self.to_value(), expected),
        }
    }

    fn to_value(&self) -> Cow<'a, Value> {
        Cow::Owned(match self.slot() {
            Slot::Null => Value::Null,
            Slot::Bool(b) => Value::Bool(*b),
            Slot::Number(n) => Value::Number(n.clone()),
            Slot::String(s) => Value::String(s.to_string()),
            Slot::Array { .. } => Value::Array(
                self.as_array()
                    .map(|a| a.elements().map(|e| e.to_value().into_owned()).collect())
                    .unwrap_or_default(),
            ),
            Slot::Object { .. } => Value::Object(
                self.as_object()
                    .map(|o| {
                        o.members()
                            .map(|(k, v)| (k.to_owned(), v.to_value().into_owned()))
                            .collect()
                    })
                    .unwrap_or_default(),
            ),
        })
    }

    fn identity(&self) -> Option<NodeIdentity> {
        Some(NodeIdentity::new(std::ptr::from_ref(self.slot()) as usize))
    }
}

impl<'a> Object<'a, Borrowed> for ObjectRef<'a> {
    type Node = NodeRef<'a>;
    type MemberName = &'a str;
    type MembersIter = Members<'a>;

    fn len(&self) -> usize {
        self.members.len()
    }

    fn get(&self, key: &String) -> Option<NodeRef<'a>> {
        self.members
            .iter()
            .find(|(name, _)| name.as_ref() == key.as_str())
            .map(|(_, at)| self.node.at(*at))
    }

    fn members(&self) -> Members<'a> {
        Members {
            node: self.node,
            members: self.members.iter(),
        }
    }
}

/// The members of an [`ObjectRef`], in order.
pub struct Members<'a> {
    node: NodeRef<'a>,
    members: std::slice::Iter<'a, (Cow<'a, str>, u32)>,
}

impl<'a> Iterator for Members<'a> {
    type Item = (&'a str, NodeRef<'a>);

    fn next(&mut self) -> Option<Self::Item> {
        self.members
            .next()
            .map(|(name, at)| (name.as_ref(), self.node.at(*at)))
    }
}

impl<'a> Array<'a, Borrowed> for ArrayRef<'a> {
    type Node = NodeRef<'a>;
    type ElementsIter = Items<'a>;

    fn len(&self) -> usize {
        self.items.len()
    }

    fn elements(&self) -> Items<'a> {
        Items {
            node: self.node,
            items: self.items.iter(),
        }
    }
}

/// The items of an [`ArrayRef`], in order.
pub struct Items<'a> {
    node: NodeRef<'a>,
    items: std::slice::Iter<'a, u32>,
}

impl<'a> Iterator for Items<'a> {
    type Item = NodeRef<'a>;

    fn next(&mut self) -> Option<NodeRef<'a>> {
        self.items.next().map(|at| self.node.at(*at))
    }
}

/// Builds a [`Doc`] as serde_json reads the text. A container's children
/// wait on a pending stack until it closes, then move to their contiguous
/// place, so nested containers never interleave.
struct Builder<'t> {
    doc: Doc<'t>,
    pending_members: Vec<(Cow<'t, str>, u32)>,
    pending_items: Vec<u32>,
}

impl<'t> Builder<'t> {
    fn push(&mut self, slot: Slot<'t>) -> u32 {
        self.doc.slots.push(slot);
        self.doc.slots.len() as u32 - 1
    }
}

/// Reads one value into the builder; answers its slot.
struct SlotSeed<'b, 't>(&'b mut Builder<'t>);

impl<'de, 'b> DeserializeSeed<'de> for SlotSeed<'b, 'de> {
    type Value = u32;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<u32, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de, 'b> Visitor<'de> for SlotSeed<'b, 'de> {
    type Value = u32;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_unit<E>(self) -> Result<u32, E> {
        Ok(self.0.push(Slot::Null))
    }

    fn visit_bool<E>(self, v: bool) -> Result<u32, E> {
        Ok(self.0.push(Slot::Bool(v)))
    }

    fn visit_u64<E>(self, v: u64) -> Result<u32, E> {
        Ok(self.0.push(Slot::Number(v.into())))
    }

    fn visit_i64<E>(self, v: i64) -> Result<u32, E> {
        Ok(self.0.push(Slot::Number(v.into())))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<u32, E> {
        let n = Number::from_f64(v).ok_or_else(|| E::custom("not a finite number"))?;
        Ok(self.0.push(Slot::Number(n)))
    }

    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<u32, E> {
        Ok(self.0.push(Slot::String(Cow::Borrowed(v))))
    }

    fn visit_str<E>(self, v: &str) -> Result<u32, E> {
        Ok(self.0.push(Slot::String(Cow::Owned(v.to_owned()))))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<u32, A::Error> {
        let b = self.0;
        let mark = b.pending_items.len();
        while let Some(at) = seq.next_element_seed(SlotSeed(b))? {
            b.pending_items.push(at);
        }
        let start = b.doc.items.len() as u32;
        b.doc.items.extend(b.pending_items.drain(mark..));
        let len = b.doc.items.len() as u32 - start;
        Ok(b.push(Slot::Array { start, len }))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<u32, A::Error> {
        let b = self.0;
        let mark = b.pending_members.len();
        while let Some(name) = map.next_key_seed(NameSeed)? {
            let members = &b.pending_members[mark..];
            if members.len() >= MAX_MEMBERS {
                return Err(de::Error::custom("an object too large to scan"));
            }
            if members.iter().any(|(n, _)| *n == name) {
                return Err(de::Error::custom("a repeated member name"));
            }
            let at = map.next_value_seed(SlotSeed(b))?;
            b.pending_members.push((name, at));
        }
        let start = b.doc.members.len() as u32;
        b.doc.members.extend(b.pending_members.drain(mark..));
        let len = b.doc.members.len() as u32 - start;
        Ok(b.push(Slot::Object { start, len }))
    }
}

/// Reads a member name, borrowed when it holds no escape.
struct NameSeed;

impl<'de> DeserializeSeed<'de> for NameSeed {
    type Value = Cow<'de, str>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Cow<'de, str>, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for NameSeed {
    type Value = Cow<'de, str>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a member name")
    }

    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Cow<'de, str>, E> {
        Ok(Cow::Borrowed(v))
    }

    fn visit_str<E>(self, v: &str) -> Result<Cow<'de, str>, E> {
        Ok(Cow::Owned(v.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reads_back_what_it_was_given() {
        for v in [
            json!(null),
            json!(true),
            json!(-3),
            json!(18446744073709551615u64),
            json!(2.5),
            json!("a\"b\\u00e9\u{1F980}"),
            json!([]),
            json!({}),
            json!({"a": [1, {"b": [[], {}], "c": "x"}], "d\n": null, "e": [true, false]}),
        ] {
            let text = v.to_string();
            let doc = Doc::read(&text).expect("read");
            assert_eq!(doc.root().to_value().into_owned(), v, "{text}");
        }
    }

    /// Texts as clients write them (spaces, escapes, every number form)
    /// read as serde_json reads them; any text at all, damaged at random,
    /// is either read exactly as a `Value` would be or refused, never
    /// misread and never a panic.
    #[test]
    fn reads_text_exactly_as_serde_json_does_or_refuses_it() {
        let texts = [
            r#" { "a" : [ 1 , -2 , 3.5e2 , -0 , 0 , -0.0 , 1E-3 , 18446744073709551615 , 18446744073709551616 , -9223372036854775808 , 123456789012345678 ] , "b" : "x\ty\u00e9\ud83e\udd80\"" , "c":{}, "d":[] , "e" : true , "f" : false , "g" : null } "#,
            r#"[["a"],[{"\u0041":"\/"}],"é🦀",1e308]"#,
            r#""just a string""#,
            "42",
            "-7",
        ];
        for text in texts {
            let want: Value = serde_json::from_str(text).unwrap();
            let doc = Doc::read(text).unwrap_or_else(|| panic!("refused {text}"));
            assert_eq!(doc.root().to_value().into_owned(), want, "{text}");
        }
        let mut rng = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move |n: usize| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            (rng % n as u64) as usize
        };
        let alphabet = b" \t\"\\{}[]:,-+.eE0123456789tfnulrsx\x01";
        for _ in 0..50_000 {
            let mut bytes = texts[next(texts.len())].as_bytes().to_vec();
            for _ in 0..1 + next(3) {
                if bytes.is_empty() {
                    break;
                }
                let at = next(bytes.len());
                match next(3) {
                    0 => bytes[at] = alphabet[next(alphabet.len())],
                    1 => {
                        bytes.remove(at);
                    }
                    _ => bytes.insert(at, alphabet[next(alphabet.len())]),
                }
            }
            let Ok(text) = std::str::from_utf8(&bytes) else {
                continue;
            };
            if let Some(doc) = Doc::read(text) {
                let want: Value = serde_json::from_str(text)
                    .unwrap_or_else(|e| panic!("read {text:?}, which is not JSON: {e}"));
                assert_eq!(doc.root().to_value().into_owned(), want, "{text:?}");
            }
        }
    }

    #[test]
    fn leaves_large_objects_repeated_names_and_bad_text_to_value() {
        let large: serde_json::Map<String, Value> = (0..=MAX_MEMBERS)
            .map(|i| (format!("k{i}"), json!(i)))
            .collect();
        assert!(Doc::read(&Value::Object(large).to_string()).is_none());
        assert!(Doc::read(r#"{"a":1,"b":{"c":1,"c":2}}"#).is_none());
        assert!(Doc::read(r#"{"a":1"#).is_none());
        assert!(Doc::read(r#"{"a":1} x"#).is_none());
        let fits: serde_json::Map<String, Value> = (0..MAX_MEMBERS)
            .map(|i| (format!("k{i}"), json!(i)))
            .collect();
        assert!(Doc::read(&Value::Object(fits).to_string()).is_some());
    }
}
