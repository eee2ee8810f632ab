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
//! bytes unless they hold an escape. The reading is a structural scan of
//! text the envelope's parse already accepted (see [`Doc::read`]), not a
//! second serde_json parse.
//!
//! It is the fast path only. A payload the reading does not take (an object
//! with more than [`MAX_MEMBERS`] members, where a scan per lookup would
//! cost more than a map, or one with a repeated key, where JSON parsers
//! disagree and `Value` keeps the last) goes to the `Value` path, and so
//! does every invalid payload: its violations are listed from a `Value`, so
//! the messages clients see come from one place.

use std::borrow::Cow;

use jsonschema::json::{cmp, Array, Json, Node, NodeIdentity, Object};
use jsonschema::JsonType;
use serde_json::{Number, Value};

/// Most members of one object the reading takes. The validator finds a
/// property by scanning its object's members, which beats hashing for the
/// few members events' objects have; a larger object goes to `Value`.
pub const MAX_MEMBERS: usize = 32;

/// Nesting serde_json refuses (its recursion limit), and so does the
/// reading: containers open at once.
pub const MAX_DEPTH: usize = 128;

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
    ///
    /// A structural scan, not a full parse: `text` is a payload the
    /// envelope's parse already accepted as JSON (`event::raw`: valid
    /// escapes, numbers in range, nesting within the parser's limit), so
    /// the scan finds where each string ends and each number's digits,
    /// unescapes only strings holding a `\`, and converts a number the way
    /// serde_json does (plain integers and short decimals here, any other
    /// form by serde_json itself). Whatever it does not expect (text that
    /// is not JSON after all) it answers `None` for, and the caller reads
    /// a `Value`. Nesting is followed on a vector, not the call stack, so
    /// no text can exhaust the stack; the vectors hold at most one value
    /// per byte of text.
    pub fn read(text: &'t str) -> Option<Doc<'t>> {
        Scanner {
            text,
            bytes: text.as_bytes(),
            at: 0,
            // Sized for typical payloads up front: growing a vector on
            // the way was a tenth of the reading's cost.
            doc: Doc {
                slots: Vec::with_capacity(text.len() / 8 + 1),
                members: Vec::with_capacity(text.len() / 16 + 1),
                items: Vec::with_capacity(text.len() / 64 + 1),
            },
            pending_members: Vec::with_capacity(MAX_MEMBERS),
            pending_items: Vec::with_capacity(16),
            open: Vec::with_capacity(8),
        }
        .run()
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

/// An array or object whose children are being read: where its children
/// start on the pending vector of its kind.
#[derive(Clone, Copy)]
struct Open {
    object: bool,
    mark: u32,
    /// One bit per member name read (see [`name_bit`]): a name whose bit
    /// is not set yet cannot be a repetition, so only the others are
    /// compared with the names before them.
    names: u64,
}

/// Reads a [`Doc`] from text. A container's children wait on a pending
/// vector until it closes, then move to their contiguous place, so nested
/// containers never interleave. An object's member is pending from its
/// name on, its value slot filled in when the value is read (the last
/// pending member is always the open object's: an inner object's members
/// move out when it closes).
struct Scanner<'t> {
    text: &'t str,
    bytes: &'t [u8],
    at: usize,
    doc: Doc<'t>,
    pending_members: Vec<(Cow<'t, str>, u32)>,
    pending_items: Vec<u32>,
    open: Vec<Open>,
}

/// The high bit of each byte of `word` (eight bytes of text, the first
/// lowest) that ends a run of plain string text: a quote, a backslash or a
/// control character. Bits above the lowest may be set wrongly (a borrow
/// from a byte found); the lowest is always right, and is all that is used.
fn stops(word: u64) -> u64 {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    // Bytes below `n`: the classic "has a byte less than n" test.
    let below = |word: u64, n: u8| word.wrapping_sub(ONES * u64::from(n)) & !word & HIGH;
    below(word ^ (ONES * u64::from(b'"')), 1)
        | below(word ^ (ONES * u64::from(b'\\')), 1)
        | below(word, 0x20)
}

/// A member name's bit among 64, from its length and first and last bytes.
fn name_bit(name: &str) -> u64 {
    let b = name.as_bytes();
    let first = u32::from(b.first().copied().unwrap_or(0));
    let last = u32::from(b.last().copied().unwrap_or(0));
    1 << (((b.len() as u32).wrapping_mul(31) ^ first.wrapping_mul(7) ^ last) % 64)
}

/// Exact powers of ten as `f64` (every one up to 1e22 is).
const POW10: [f64; 16] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15,
];

impl<'t> Scanner<'t> {
    fn push(&mut self, slot: Slot<'t>) -> u32 {
        self.doc.slots.push(slot);
        self.doc.slots.len() as u32 - 1
    }

    fn skip_space(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.bytes.get(self.at) {
            self.at += 1;
        }
    }

    /// The next byte that is not white space, consumed.
    fn next_token(&mut self) -> Option<u8> {
        self.skip_space();
        let b = *self.bytes.get(self.at)?;
        self.at += 1;
        Some(b)
    }

    fn run(mut self) -> Option<Doc<'t>> {
        'value: loop {
            // Read one value; a container opens and its first child is
            // read next, or it is empty and closes at once.
            let mut slot = match self.next_token()? {
                b'{' => {
                    self.skip_space();
                    if self.bytes.get(self.at) == Some(&b'}') {
                        self.at += 1;
                        self.close_object(self.pending_members.len())
                    } else {
                        let mark = self.pending_members.len() as u32;
                        self.open_container(Open {
                            object: true,
                            mark,
                            names: 0,
                        })?;
                        self.name()?;
                        continue 'value;
                    }
                }
                b'[' => {
                    self.skip_space();
                    if self.bytes.get(self.at) == Some(&b']') {
                        self.at += 1;
                        self.close_array(self.pending_items.len())
                    } else {
                        let mark = self.pending_items.len() as u32;
                        self.open_container(Open {
                            object: false,
                            mark,
                            names: 0,
                        })?;
                        continue 'value;
                    }
                }
                b'"' => {
                    let s = self.string()?;
                    self.push(Slot::String(s))
                }
                b't' => self.literal(b"rue", Slot::Bool(true))?,
                b'f' => self.literal(b"alse", Slot::Bool(false))?,
                b'n' => self.literal(b"ull", Slot::Null)?,
                b'-' | b'0'..=b'9' => {
                    let n = self.number()?;
                    self.push(Slot::Number(n))
                }
                _ => return None,
            };
            // A value is complete: it belongs to the innermost open
            // container, which goes on to its next child or closes (and is
            // then a complete value of the container around it).
            loop {
                let Some(&Open { object, mark, .. }) = self.open.last() else {
                    self.skip_space();
                    return (self.at == self.bytes.len()).then_some(self.doc);
                };
                let mark = mark as usize;
                if object {
                    self.pending_members.last_mut()?.1 = slot;
                    match self.next_token()? {
                        b',' => {
                            self.skip_space();
                            if self.bytes.get(self.at) != Some(&b'"') {
                                return None;
                            }
                            self.name()?;
                            continue 'value;
                        }
                        b'}' => {
                            self.open.pop();
                            slot = self.close_object(mark);
                        }
                        _ => return None,
                    }
                } else {
                    self.pending_items.push(slot);
                    match self.next_token()? {
                        b',' => continue 'value,
                        b']' => {
                            self.open.pop();
                            slot = self.close_array(mark);
                        }
                        _ => return None,
                    }
                }
            }
        }
    }

    /// Reads a member name and its `:` (at the name's opening quote), and
    /// makes it the open object's pending member. An object with too many
    /// members or a repeated name is not taken.
    fn name(&mut self) -> Option<()> {
        if self.bytes.get(self.at) != Some(&b'"') {
            return None;
        }
        self.at += 1;
        let name = self.string()?;
        let open = self.open.last_mut()?;
        let members = &self.pending_members[open.mark as usize..];
        if members.len() >= MAX_MEMBERS {
            return None;
        }
        let bit = name_bit(&name);
        if open.names & bit != 0 && members.iter().any(|(n, _)| *n == name) {
            return None;
        }
        open.names |= bit;
        if self.next_token()? != b':' {
            return None;
        }
        self.pending_members.push((name, u32::MAX));
        Some(())
    }

    /// Opens a container, unless it is nested deeper than serde_json
    /// reads (which the `Value` path would refuse).
    fn open_container(&mut self, open: Open) -> Option<()> {
        if self.open.len() + 1 >= MAX_DEPTH {
            return None;
        }
        self.open.push(open);
        Some(())
    }

    fn close_object(&mut self, mark: usize) -> u32 {
        let start = self.doc.members.len() as u32;
        self.doc.members.extend(self.pending_members.drain(mark..));
        let len = self.doc.members.len() as u32 - start;
        self.push(Slot::Object { start, len })
    }

    fn close_array(&mut self, mark: usize) -> u32 {
        let start = self.doc.items.len() as u32;
        self.doc.items.extend(self.pending_items.drain(mark..));
        let len = self.doc.items.len() as u32 - start;
        self.push(Slot::Array { start, len })
    }

    fn literal(&mut self, rest: &[u8], slot: Slot<'t>) -> Option<u32> {
        let end = self.at + rest.len();
        if self.bytes.get(self.at..end)? != rest {
            return None;
        }
        self.at = end;
        Some(self.push(slot))
    }

    /// A string's contents (after its opening quote): see [`read_string`].
    fn string(&mut self) -> Option<Cow<'t, str>> {
        read_string(self.text, &mut self.at)
    }

    /// A number (from its first character, already consumed): see
    /// [`read_number`].
    fn number(&mut self) -> Option<Number> {
        read_number(self.text, &mut self.at)
    }
}

/// Where the string whose contents start at `at` (after its opening
/// quote) ends: the index of its closing quote, and whether it holds an
/// escape.
pub(super) fn string_end(bytes: &[u8], mut at: usize) -> Option<(usize, bool)> {
    let mut escaped = false;
    loop {
        // Eight bytes at a time to the next byte that is not plain text.
        while let Some(chunk) = bytes.get(at..at + 8) {
            let stops = stops(u64::from_le_bytes(chunk.try_into().ok()?));
            if stops != 0 {
                at += (stops.trailing_zeros() / 8) as usize;
                break;
            }
            at += 8;
        }
        match *bytes.get(at)? {
            b'"' => return Some((at, escaped)),
            b'\\' => {
                escaped = true;
                at += 2;
            }
            // A control character is not allowed raw in a string.
            0..=0x1f => return None,
            _ => at += 1,
        }
    }
}

/// A string's contents, read from `*at` (after its opening quote) to
/// past its closing quote: borrowed when it holds no escape, else
/// unescaped by serde_json (which knows every escape and surrogate pair
/// rule).
pub(super) fn read_string<'t>(text: &'t str, at: &mut usize) -> Option<Cow<'t, str>> {
    let start = *at;
    let (end, escaped) = string_end(text.as_bytes(), start)?;
    *at = end + 1;
    if escaped {
        // The text with its quotes.
        let quoted = text.get(start - 1..end + 1)?;
        serde_json::from_str::<String>(quoted).ok().map(Cow::Owned)
    } else {
        // The quotes and backslash are ASCII, so these are character
        // boundaries.
        text.get(start..end).map(Cow::Borrowed)
    }
}

/// Moves `*at` from a number's first character (already consumed) past
/// its last; answers the number's text.
pub(super) fn number_text<'t>(text: &'t str, at: &mut usize) -> Option<&'t str> {
    let bytes = text.as_bytes();
    let start = at.checked_sub(1)?;
    while let Some(b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E') = bytes.get(*at) {
        *at += 1;
    }
    text.get(start..*at)
}

/// A number (from its first character, already consumed at `*at - 1`) as
/// serde_json makes it: an integer written without fraction or exponent
/// is a `u64` when it fits, negative an `i64` (`-0` and one below
/// `i64::MIN` are floats); anything else a float.
pub(super) fn read_number(text: &str, at: &mut usize) -> Option<Number> {
    let number = number_text(text, at)?;
    let (negative, digits) = match number.as_bytes().split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, number.as_bytes()),
    };
    let int_len = digits.iter().take_while(|b| b.is_ascii_digit()).count();
    // No digit, or a leading zero before another digit: not JSON.
    if int_len == 0 || (digits[0] == b'0' && int_len > 1) {
        return None;
    }
    let fast = match digits.get(int_len) {
        // An integer of at most 19 digits always fits a u64.
        None if int_len <= 19 => {
            let n = digits
                .iter()
                .fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
            if !negative {
                Some(Number::from(n))
            } else {
                let neg = (n as i64).wrapping_neg();
                if neg >= 0 {
                    Number::from_f64(-(n as f64))
                } else {
                    Some(Number::from(neg))
                }
            }
        }
        // A decimal of at most 15 digits in all: its digits are an
        // exact f64 and the power of ten too, so one division gives the
        // correctly rounded value, as every parser must.
        Some(b'.') => {
            let frac = &digits[int_len + 1..];
            let frac_len = frac.iter().take_while(|b| b.is_ascii_digit()).count();
            if frac_len == 0 || frac_len < frac.len() || int_len + frac_len > 15 {
                None
            } else {
                let n = digits[..int_len]
                    .iter()
                    .chain(frac)
                    .fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
                let f = n as f64 / POW10[frac_len];
                Number::from_f64(if negative { -f } else { f })
            }
        }
        _ => None,
    };
    match fast {
        Some(n) => Some(n),
        // Exponents, long digit strings, big integers: serde_json's own
        // conversion (also when the text is not a number: it refuses).
        None => serde_json::from_str(number).ok(),
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
            r#"{"\u0061\n":"\ud83e\udd80\b\f\r\/","k":[ ],"l":{ },"m":[[[[]]]]}"#,
            "\t[ -0.5 ,0.25e1,123456789012345.6,1.5E+2,-9223372036854775809,99999999999999999999 ]\r\n",
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

    /// Every shape of number becomes the `Number` serde_json makes of it:
    /// the same kind (`u64`, `i64`, float) and, for a float, the same bits.
    #[test]
    fn numbers_convert_as_serde_json_converts_them() {
        let mut texts: Vec<String> = [
            "0",
            "-0",
            "7",
            "-7",
            "0.0",
            "-0.0",
            "19.5",
            "44.0",
            "0.1",
            "-0.3",
            "1e2",
            "1E-3",
            "-2.5e+3",
            "0e0",
            "1.5e308",
            "5e-324",
            "2.2250738585072014e-308",
            "0.30000000000000004",
            "123456789012345.6",
            "12345678901234.56",
            "999999999999999.9",
            "0.000000000000001",
            "9007199254740993",
            "18446744073709551615",
            "18446744073709551616",
            "99999999999999999999",
            "-9223372036854775808",
            "-9223372036854775809",
            "-18446744073709551616",
            "1234567890123456789",
            "-1234567890123456789",
            "100000000000000000000000.5",
        ]
        .iter()
        .map(|t| t.to_string())
        .collect();
        let mut rng = 0x1234_5678_9abc_def1u64;
        let mut next = move |n: u64| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng % n
        };
        for _ in 0..20_000 {
            let digits = |next: &mut dyn FnMut(u64) -> u64, n: u64| -> String {
                (0..n).map(|_| char::from(b'0' + next(10) as u8)).collect()
            };
            let mut t = String::new();
            if next(2) == 0 {
                t.push('-');
            }
            let len = 1 + next(21);
            let int = digits(&mut next, len);
            t.push_str(int.trim_start_matches('0'));
            if t.is_empty() || t == "-" {
                t.push('0');
            }
            if next(2) == 0 {
                t.push('.');
                let len = 1 + next(18);
                t.push_str(&digits(&mut next, len));
            }
            if next(4) == 0 {
                t.push(['e', 'E'][next(2) as usize]);
                t.push_str(["", "+", "-"][next(3) as usize]);
                let len = 1 + next(3);
                t.push_str(&digits(&mut next, len));
            }
            texts.push(t);
        }
        for text in &texts {
            let want: Result<Number, _> = serde_json::from_str(text);
            let got = Doc::read(text).map(|d| d.root().to_value().into_owned());
            match (want, got) {
                (Ok(want), Some(Value::Number(got))) => {
                    assert_eq!(
                        (want.as_u64(), want.as_i64(), want.is_f64()),
                        (got.as_u64(), got.as_i64(), got.is_f64()),
                        "{text}"
                    );
                    assert_eq!(
                        want.as_f64().map(f64::to_bits),
                        got.as_f64().map(f64::to_bits),
                        "{text}"
                    );
                }
                // Out of range (1e999): refused by both.
                (Err(_), None) => {}
                (want, got) => panic!("{text}: serde_json {want:?}, read {got:?}"),
            }
        }
    }

    /// Strings, escaped every way JSON allows, read as serde_json reads
    /// them; a raw control character, a bad escape or a missing quote is
    /// refused.
    #[test]
    fn strings_unescape_as_serde_json_does() {
        for text in [
            r#""""#,
            r#""plain""#,
            r#""\"\\\/\b\f\n\r\t""#,
            r#""\u0041\u00e9\u20ac\uD83E\uDD80""#,
            r#""é🦀 mixed \u00e9""#,
            r#""ends with an escape\\""#,
        ] {
            let want: Value = serde_json::from_str(text).unwrap();
            let doc = Doc::read(text).unwrap_or_else(|| panic!("refused {text}"));
            assert_eq!(doc.root().to_value().into_owned(), want, "{text}");
        }
        for text in [
            "\"a\u{1}b\"",
            "\"tab\tinside\"",
            r#""\x41""#,
            r#""\ud800""#,
            r#""\u12""#,
            r#""unterminated"#,
            r#""ends in a backslash\"#,
            r#"{"a\":1}"#,
        ] {
            assert!(Doc::read(text).is_none(), "{text:?}");
            assert!(serde_json::from_str::<Value>(text).is_err(), "{text:?}");
        }
    }

    /// Nesting is followed on the heap, to serde_json's limit exactly: one
    /// level more is refused as serde_json refuses it, and 100,000 levels
    /// are refused without exhausting the stack.
    #[test]
    fn nesting_is_read_to_serde_jsons_limit_and_no_further() {
        for (open, close) in [("[", "]"), (r#"{"a":"#, "}")] {
            for depth in [1, 64, MAX_DEPTH - 1, MAX_DEPTH, MAX_DEPTH + 1, 100_000] {
                let text = format!("{}1{}", open.repeat(depth), close.repeat(depth));
                let want = serde_json::from_str::<Value>(&text).ok();
                let got = Doc::read(&text).map(|d| d.root().to_value().into_owned());
                assert_eq!(got.is_some(), depth < MAX_DEPTH, "{open} {depth}");
                assert_eq!(got, want, "{open} {depth}");
            }
        }
        // Open brackets alone, never closed.
        assert!(Doc::read(&"[".repeat(1 << 20)).is_none());
    }

    /// A large array takes one slot and one item per element: memory in
    /// proportion to the text.
    #[test]
    fn a_large_array_costs_memory_in_proportion_to_its_text() {
        let text = format!("[{}0]", "0,".repeat(500_000));
        let doc = Doc::read(&text).unwrap();
        assert_eq!(doc.slots.len(), 500_002);
        assert_eq!(doc.items.len(), 500_001);
        assert!(doc.slots.capacity() <= text.len());
        assert!(doc.items.capacity() <= text.len());
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
        // A name repeated in another spelling is still repeated.
        assert!(Doc::read(r#"{"a":1,"\u0061":2}"#).is_none());
        for text in [
            "",
            " ",
            "[1,]",
            "[,1]",
            "{,}",
            r#"{"a":1,}"#,
            r#"{"a" 1}"#,
            r#"{"a":}"#,
            "{1:2}",
            "[1 2]",
            "tru",
            "nul",
            "truex",
            "01",
            "-",
            "1.",
            ".5",
            "1e",
            "+1",
            "[1]]",
            "{}}",
            r#"{"a":1]"#,
            "[}",
            "\u{0}",
        ] {
            assert!(Doc::read(text).is_none(), "{text:?}");
            assert!(serde_json::from_str::<Value>(text).is_err(), "{text:?}");
        }
        let fits: serde_json::Map<String, Value> = (0..MAX_MEMBERS)
            .map(|i| (format!("k{i}"), json!(i)))
            .collect();
        assert!(Doc::read(&Value::Object(fits).to_string()).is_some());
    }
}
