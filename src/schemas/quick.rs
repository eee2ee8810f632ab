//! A validator compiled from the schema itself for the keywords event
//! schemas mostly use, which checks `data`'s text as it scans it: no
//! [`borrowed::Doc`](super::borrowed::Doc) is built and no tree walked.
//!
//! On the batch path the borrowed reading and the `jsonschema` crate's walk
//! of it were two thirds of validation's cost (an order event: 9,900 and
//! 5,100 instructions), per token, not per byte: each value pushed into a
//! vector, moved into place when its container closed, then found again
//! by the crate's dispatch. Here each value is checked where it is read,
//! against a [`Rule`] that holds only what the schema asks of it.
//!
//! The subset: `type`, `properties`, `required`, `additionalProperties`,
//! `enum` and `const` of scalars, `minLength`/`maxLength`,
//! `minimum`/`maximum`/`exclusiveMinimum`/`exclusiveMaximum`, `items` (one
//! schema), `minItems`/`maxItems`, boolean schemas, and annotations.
//! `pattern` and `format` are asked of the crate itself (a validator of
//! just those keywords, compiled with the same options; `format: email`
//! alone calls the check the crate was given for it), so their answers
//! are the crate's by construction. A schema using anything else gets no
//! quick validator ([`Checker::compile`] answers `None`).
//!
//! Every answer is the crate's or none: where this reading cannot be sure
//! (a number too large to compare exactly, text it does not expect) it
//! answers `None` and the caller asks the crate. An invalid payload is
//! answered `Some(false)` at its first violation, and goes on to the
//! crate, whose violations are listed from a `Value`, as before. A
//! property test (`schemas::tests::borrowed_and_tree_validation_agree`)
//! checks the answers against the crate's for random payloads and schemas
//! of every keyword here.

use std::borrow::Cow;
use std::cmp::Ordering;

use jsonschema::json::{cmp, Json};
use jsonschema::{Draft, Validator};
use serde_json::{Number, Value};

use super::borrowed::{number_text, read_number, read_string, string_end, Borrowed};

/// Keywords that assert nothing about an instance.
const ANNOTATIONS: &[&str] = &[
    "$schema",
    "$comment",
    "title",
    "description",
    "default",
    "examples",
    "deprecated",
    "readOnly",
    "writeOnly",
];

/// Most names one object's rule tracks (`properties` and `required`): one
/// bit each.
const MAX_NAMES: usize = 64;

/// The quick validator of one schema version.
pub struct Checker {
    root: Rule,
}

/// Why a check stopped before the end of the text.
enum Stop {
    /// A violation: the payload is invalid.
    Invalid,
    /// This reading cannot answer for the crate: ask it.
    Unsure,
}

type Step = Result<(), Stop>;

/// What one schema (or subschema) asks of a value.
#[derive(Default)]
struct Rule {
    /// `false`: no value passes.
    never: bool,
    /// Nothing is asked of a value ([`Rule::asks_nothing`], answered once
    /// when compiled): it is skipped unread.
    any: bool,
    /// `type`: the allowed types, `None` for any.
    types: Option<Types>,
    /// `enum` (or `const`, as a one-value enum): the scalars allowed.
    allowed: Option<Vec<Value>>,
    object: Option<ObjectRule>,
    items: Option<Box<Rule>>,
    min_items: Option<u64>,
    max_items: Option<u64>,
    min_length: Option<u64>,
    max_length: Option<u64>,
    /// `pattern` and `format`, checked by the crate.
    string_check: Option<Validator<Borrowed>>,
    /// `format: email` alone: the check the crate was given for it
    /// ([`super::is_email`]), called directly.
    email: bool,
    /// Bounds on numbers: each must compare as its `Ordering`s allow.
    bounds: Vec<(Number, &'static [Ordering])>,
}

/// `properties`, `required` and `additionalProperties`.
#[derive(Default)]
struct ObjectRule {
    /// Each name `properties` or `required` names: its rule (`None` for a
    /// name only `required` lists, whose value `additional` checks).
    names: Vec<(String, Option<Rule>)>,
    /// One bit per required entry of `names`.
    required: u64,
    additional: Additional,
}

#[derive(Default)]
enum Additional {
    #[default]
    Any,
    Never,
    Rule(Box<Rule>),
}

/// A set of JSON types, one bit each.
#[derive(Clone, Copy)]
struct Types(u8);

impl Types {
    const NULL: u8 = 1;
    const BOOLEAN: u8 = 2;
    const OBJECT: u8 = 4;
    const ARRAY: u8 = 8;
    const NUMBER: u8 = 16;
    const STRING: u8 = 32;
    const INTEGER: u8 = 64;

    fn named(name: &str) -> Option<u8> {
        Some(match name {
            "null" => Self::NULL,
            "boolean" => Self::BOOLEAN,
            "object" => Self::OBJECT,
            "array" => Self::ARRAY,
            "number" => Self::NUMBER,
            "string" => Self::STRING,
            "integer" => Self::INTEGER,
            _ => return None,
        })
    }
}

/// What compiling a subschema needs: the draft and options the crate's
/// validators of the same document were built with.
struct Compiler<'a> {
    draft: Draft,
    build: &'a dyn Fn(&Value, Draft) -> Option<Validator<Borrowed>>,
}

impl Checker {
    /// The quick validator of `schema` (a document the crate compiled),
    /// or `None` when it uses a keyword outside the subset. `build`
    /// compiles a validator of a subschema's `pattern` and `format` as the
    /// crate's validator of the whole document was compiled.
    pub fn compile(
        schema: &Value,
        draft: Draft,
        build: &dyn Fn(&Value, Draft) -> Option<Validator<Borrowed>>,
    ) -> Option<Checker> {
        let compiler = Compiler { draft, build };
        Some(Checker {
            root: compiler.rule(schema)?,
        })
    }

    /// Whether `data`, one JSON value's text that a JSON parser accepted,
    /// validates: the crate's answer, or `None` when this reading cannot
    /// be sure of it. `Some(false)` is the crate's answer only for a text
    /// that repeats no member name: the check stops at the first
    /// violation, before a repetition that would replace the value (a
    /// caller asks the crate for the violations anyway).
    pub fn check(&self, data: &str) -> Option<bool> {
        let mut scan = Scan { text: data, at: 0 };
        let checked = self.root.check(&mut scan).and_then(|()| {
            scan.skip_space();
            if scan.at == data.len() {
                Ok(())
            } else {
                Err(Stop::Unsure)
            }
        });
        match checked {
            Ok(()) => Some(true),
            Err(Stop::Invalid) => Some(false),
            Err(Stop::Unsure) => None,
        }
    }
}

impl Compiler<'_> {
    fn rule(&self, schema: &Value) -> Option<Rule> {
        let obj = match schema {
            Value::Bool(b) => {
                return Some(Rule {
                    never: !b,
                    any: *b,
                    ..Rule::default()
                })
            }
            Value::Object(obj) => obj,
            _ => return None,
        };
        let mut rule = Rule::default();
        let mut object = ObjectRule::default();
        let mut string_keywords = serde_json::Map::new();
        for (keyword, value) in obj {
            match keyword.as_str() {
                "type" => {
                    let mut types = 0;
                    match value {
                        Value::String(name) => types = Types::named(name)?,
                        Value::Array(names) => {
                            for name in names {
                                types |= Types::named(name.as_str()?)?;
                            }
                        }
                        _ => return None,
                    }
                    rule.types = Some(Types(types));
                }
                "enum" | "const" => {
                    let values = match (keyword.as_str(), value) {
                        ("enum", Value::Array(values)) => values.clone(),
                        ("const", value) => vec![value.clone()],
                        _ => return None,
                    };
                    if values.iter().any(|v| v.is_array() || v.is_object()) {
                        return None;
                    }
                    // Both keywords present: a value must be in each.
                    rule.allowed = Some(match rule.allowed.take() {
                        None => values,
                        Some(before) => before
                            .into_iter()
                            .filter(|b| values.iter().any(|v| same_scalar(b, v)))
                            .collect(),
                    });
                }
                "properties" => {
                    for (name, sub) in value.as_object()? {
                        let sub = self.rule(sub)?;
                        match object.names.iter_mut().find(|(n, _)| n == name) {
                            Some((_, slot)) => *slot = Some(sub),
                            None => object.names.push((name.clone(), Some(sub))),
                        }
                    }
                }
                "required" => {
                    for name in value.as_array()? {
                        let name = name.as_str()?;
                        if !object.names.iter().any(|(n, _)| n == name) {
                            object.names.push((name.to_string(), None));
                        }
                    }
                }
                "additionalProperties" => {
                    object.additional = match value {
                        Value::Bool(true) => Additional::Any,
                        Value::Bool(false) => Additional::Never,
                        sub => Additional::Rule(Box::new(self.rule(sub)?)),
                    };
                }
                "items" => rule.items = Some(Box::new(self.rule(value)?)),
                "minItems" => rule.min_items = Some(value.as_u64()?),
                "maxItems" => rule.max_items = Some(value.as_u64()?),
                "minLength" => rule.min_length = Some(value.as_u64()?),
                "maxLength" => rule.max_length = Some(value.as_u64()?),
                "minimum" => rule.bounds.push((bound(value)?, &GE)),
                "maximum" => rule.bounds.push((bound(value)?, &LE)),
                "exclusiveMinimum" => rule.bounds.push((bound(value)?, &[Ordering::Greater])),
                "exclusiveMaximum" => rule.bounds.push((bound(value)?, &[Ordering::Less])),
                "pattern" | "format" => {
                    string_keywords.insert(keyword.clone(), value.clone());
                }
                k if ANNOTATIONS.contains(&k) => {}
                _ => return None,
            }
        }
        if object.names.len() > MAX_NAMES {
            return None;
        }
        // `required` names are tracked whether or not `properties` came
        // first.
        if let Some(required) = obj.get("required").and_then(Value::as_array) {
            for (i, (name, _)) in object.names.iter().enumerate() {
                if required.iter().any(|r| r.as_str() == Some(name)) {
                    object.required |= 1 << i;
                }
            }
        }
        if !object.names.is_empty() || !matches!(object.additional, Additional::Any) {
            rule.object = Some(object);
        }
        if string_keywords.len() == 1 && string_keywords.get("format") == Some(&"email".into()) {
            rule.email = true;
        } else if !string_keywords.is_empty() {
            rule.string_check = Some((self.build)(&Value::Object(string_keywords), self.draft)?);
        }
        rule.any = rule.asks_nothing();
        Some(rule)
    }
}

const GE: [Ordering; 2] = [Ordering::Greater, Ordering::Equal];
const LE: [Ordering; 2] = [Ordering::Less, Ordering::Equal];

/// A bound's limit: a number.
fn bound(value: &Value) -> Option<Number> {
    value.as_number().cloned()
}

/// Whether two scalars of `enum`/`const` are equal as the crate compares
/// them (numbers by value: `1` is `1.0`).
fn same_scalar(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(a), Value::Number(b)) => cmp::equal_numbers(a, b),
        _ => a == b,
    }
}

/// Compares a number with a bound exactly, or `None` when one is an
/// integer too large for an `f64` to hold exactly and the other a float.
fn compare(n: &Number, limit: &Number) -> Option<Ordering> {
    let int = |n: &Number| {
        n.as_u64()
            .map(i128::from)
            .or_else(|| n.as_i64().map(i128::from))
    };
    match (int(n), int(limit)) {
        (Some(a), Some(b)) => Some(a.cmp(&b)),
        (Some(a), None) => exact_f64(a)?.partial_cmp(&limit.as_f64()?),
        (None, Some(b)) => n.as_f64()?.partial_cmp(&exact_f64(b)?),
        (None, None) => n.as_f64()?.partial_cmp(&limit.as_f64()?),
    }
}

/// `i` as an `f64`, when that is exact (every integer up to 2^53 is).
fn exact_f64(i: i128) -> Option<f64> {
    (i.unsigned_abs() <= 1 << 53).then_some(i as f64)
}

/// Whether `n` is an integer as drafts 6 and later define it (a float
/// with no fraction is one).
fn is_integer(n: &Number) -> bool {
    n.is_u64() || n.is_i64() || n.as_f64().is_some_and(|f| f.fract() == 0.0)
}

/// A position in the text being checked.
struct Scan<'t> {
    text: &'t str,
    at: usize,
}

impl<'t> Scan<'t> {
    fn skip_space(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.text.as_bytes().get(self.at) {
            self.at += 1;
        }
    }

    /// The next byte that is not white space, consumed.
    fn next_token(&mut self) -> Result<u8, Stop> {
        self.skip_space();
        let b = *self.text.as_bytes().get(self.at).ok_or(Stop::Unsure)?;
        self.at += 1;
        Ok(b)
    }

    fn expect(&mut self, b: u8) -> Step {
        if self.next_token()? == b {
            Ok(())
        } else {
            Err(Stop::Unsure)
        }
    }

    fn literal(&mut self, rest: &[u8]) -> Step {
        let end = self.at + rest.len();
        if self.text.as_bytes().get(self.at..end) != Some(rest) {
            return Err(Stop::Unsure);
        }
        self.at = end;
        Ok(())
    }

    fn string(&mut self) -> Result<Cow<'t, str>, Stop> {
        read_string(self.text, &mut self.at).ok_or(Stop::Unsure)
    }

    /// Moves past a value no rule looks into (its first byte consumed):
    /// brackets counted, strings skipped whole.
    fn skip_value(&mut self, first: u8) -> Step {
        let bytes = self.text.as_bytes();
        let mut depth = 0usize;
        let mut b = first;
        loop {
            match b {
                b'{' | b'[' => depth += 1,
                b'}' | b']' => depth = depth.checked_sub(1).ok_or(Stop::Unsure)?,
                b'"' => {
                    let (end, _) = string_end(bytes, self.at).ok_or(Stop::Unsure)?;
                    self.at = end + 1;
                }
                _ => {}
            }
            if depth == 0
                && !matches!(
                    bytes.get(self.at),
                    Some(b'0'..=b'9' | b'a'..=b'z' | b'.' | b'+' | b'-' | b'E')
                )
            {
                return Ok(());
            }
            b = *bytes.get(self.at).ok_or(Stop::Unsure)?;
            self.at += 1;
        }
    }
}

impl Rule {
    /// Whether nothing is asked of a value.
    fn asks_nothing(&self) -> bool {
        !self.never
            && self.types.is_none()
            && self.allowed.is_none()
            && self.object.is_none()
            && self.items.is_none()
            && self.min_items.is_none()
            && self.max_items.is_none()
            && self.min_length.is_none()
            && self.max_length.is_none()
            && self.string_check.is_none()
            && !self.email
            && self.bounds.is_empty()
    }

    fn allows(&self, t: u8) -> bool {
        self.types.is_none_or(|Types(set)| set & t != 0)
    }

    /// Checks the value at `scan` and moves past it.
    fn check(&self, scan: &mut Scan<'_>) -> Step {
        if self.never {
            return Err(Stop::Invalid);
        }
        let first = scan.next_token()?;
        if self.any {
            return scan.skip_value(first);
        }
        match first {
            b'{' => {
                self.container(Types::OBJECT)?;
                self.check_object(scan)
            }
            b'[' => {
                self.container(Types::ARRAY)?;
                self.check_array(scan)
            }
            b'"' => {
                if !self.allows(Types::STRING) {
                    return Err(Stop::Invalid);
                }
                let s = scan.string()?;
                self.check_string(&s)
            }
            b't' | b'f' => {
                scan.literal(if first == b't' { b"rue" } else { b"alse" })?;
                if !self.allows(Types::BOOLEAN) {
                    return Err(Stop::Invalid);
                }
                self.check_allowed(|v| v.as_bool() == Some(first == b't'))
            }
            b'n' => {
                scan.literal(b"ull")?;
                if !self.allows(Types::NULL) {
                    return Err(Stop::Invalid);
                }
                self.check_allowed(Value::is_null)
            }
            b'-' | b'0'..=b'9' => self.check_number(scan),
            _ => Err(Stop::Unsure),
        }
    }

    /// A container passes `type` and `enum` (whose values are all
    /// scalars) only if its type is allowed and there is no `enum`.
    fn container(&self, t: u8) -> Step {
        if self.allows(t) && self.allowed.is_none() {
            Ok(())
        } else {
            Err(Stop::Invalid)
        }
    }

    fn check_allowed(&self, equal: impl Fn(&Value) -> bool) -> Step {
        match &self.allowed {
            Some(values) if !values.iter().any(equal) => Err(Stop::Invalid),
            _ => Ok(()),
        }
    }

    fn check_string(&self, s: &str) -> Step {
        // A string has at most as many characters as bytes and at least a
        // quarter as many: counting them is needed only between the two.
        let bytes = s.len() as u64;
        let clear_min = self.min_length.is_none_or(|min| bytes / 4 >= min);
        let clear_max = self.max_length.is_none_or(|max| bytes <= max);
        if !(clear_min && clear_max) {
            let len = s.chars().count() as u64;
            if self.min_length.is_some_and(|min| len < min)
                || self.max_length.is_some_and(|max| len > max)
            {
                return Err(Stop::Invalid);
            }
        }
        self.check_allowed(|v| v.as_str() == Some(s))?;
        if self.email && !super::is_email(s) {
            return Err(Stop::Invalid);
        }
        if let Some(check) = &self.string_check {
            if !Borrowed::with_string_node(&mut (), s, |node| check.is_valid(node)) {
                return Err(Stop::Invalid);
            }
        }
        Ok(())
    }

    fn check_number(&self, scan: &mut Scan<'_>) -> Step {
        let integer_only = self
            .types
            .is_some_and(|Types(set)| set & Types::NUMBER == 0 && set & Types::INTEGER != 0);
        if !self.allows(Types::NUMBER | Types::INTEGER) {
            number_text(scan.text, &mut scan.at).ok_or(Stop::Unsure)?;
            return Err(Stop::Invalid);
        }
        if !integer_only && self.allowed.is_none() && self.bounds.is_empty() {
            number_text(scan.text, &mut scan.at).ok_or(Stop::Unsure)?;
            return Ok(());
        }
        let n = read_number(scan.text, &mut scan.at).ok_or(Stop::Unsure)?;
        if integer_only && !is_integer(&n) {
            return Err(Stop::Invalid);
        }
        for (limit, passing) in &self.bounds {
            if !passing.contains(&compare(&n, limit).ok_or(Stop::Unsure)?) {
                return Err(Stop::Invalid);
            }
        }
        self.check_allowed(|v| v.as_number().is_some_and(|e| cmp::equal_numbers(&n, e)))
    }

    fn check_array(&self, scan: &mut Scan<'_>) -> Step {
        let mut count = 0u64;
        scan.skip_space();
        if scan.text.as_bytes().get(scan.at) == Some(&b']') {
            scan.at += 1;
        } else {
            loop {
                match &self.items {
                    Some(items) => items.check(scan)?,
                    None => {
                        let first = scan.next_token()?;
                        scan.skip_value(first)?;
                    }
                }
                count += 1;
                match scan.next_token()? {
                    b',' => {}
                    b']' => break,
                    _ => return Err(Stop::Unsure),
                }
            }
        }
        if self.min_items.is_some_and(|min| count < min)
            || self.max_items.is_some_and(|max| count > max)
        {
            return Err(Stop::Invalid);
        }
        Ok(())
    }

    fn check_object(&self, scan: &mut Scan<'_>) -> Step {
        let Some(object) = &self.object else {
            return scan.skip_value(b'{');
        };
        // A repeated member name needs no care: every value is checked
        // against its name's rule, so when all pass, the one a parser
        // keeps passes too.
        let mut seen = 0u64;
        let mut next_name = 0;
        scan.skip_space();
        if scan.text.as_bytes().get(scan.at) == Some(&b'}') {
            scan.at += 1;
        } else {
            loop {
                scan.expect(b'"')?;
                let name = scan.string()?;
                scan.expect(b':')?;
                // Members mostly come in the order `properties` lists
                // them: the name after the last one found is tried first.
                let named = match object.names.get(next_name) {
                    Some((n, _)) if *n == name => Some(next_name),
                    _ => object.names.iter().position(|(n, _)| *n == name),
                };
                next_name = named.map_or(next_name, |i| i + 1);
                if let Some(i) = named {
                    seen |= 1 << i;
                }
                let rule = match named.and_then(|i| object.names[i].1.as_ref()) {
                    Some(rule) => Some(rule),
                    None => match &object.additional {
                        Additional::Rule(rule) => Some(&**rule),
                        Additional::Never => return Err(Stop::Invalid),
                        Additional::Any => None,
                    },
                };
                match rule {
                    Some(rule) => rule.check(scan)?,
                    None => {
                        let first = scan.next_token()?;
                        scan.skip_value(first)?;
                    }
                }
                match scan.next_token()? {
                    b',' => {}
                    b'}' => break,
                    _ => return Err(Stop::Unsure),
                }
            }
        }
        if seen & object.required != object.required {
            return Err(Stop::Invalid);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skips_values_it_does_not_look_into() {
        for text in [
            r#"{"a":1,"b":[1,{"c":"}]"},-2.5e3],"c":"x\"y","d":true}"#,
            r#" { "a" : [ ] , "b" : { } , "c" : null , "d":false } "#,
        ] {
            let checker = Checker::compile(
                &serde_json::json!({"required": ["d"]}),
                Draft::Draft202012,
                &|_, _| None,
            )
            .unwrap();
            assert_eq!(checker.check(text), Some(true), "{text}");
        }
    }
}
