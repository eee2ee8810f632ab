//! CloudEvents `type` to NATS subject and back.
//!
//! An event of type `com.example.order.created` is stored on the subject
//! `<prefix>.com.example.order.created`: each `.`-separated part of the
//! type is one subject token, so `type` and (on token boundaries)
//! `type_prefix` filters become subject filters the server applies.
//! Characters a subject token cannot hold are escaped reversibly, as `%`
//! and two hex digits per byte: whitespace, control characters, `*`, `>`,
//! and `%` itself; an empty token (`a..b`, a leading or trailing `.`) is a
//! lone `%`, which no escape produces. The type inside the stored event
//! stays the truth; the subject is only an index.

use std::fmt::Write;

/// The subject token of one `.`-separated part of a type.
fn token(part: &str, out: &mut String) {
    if part.is_empty() {
        out.push('%');
        return;
    }
    for c in part.chars() {
        if c.is_whitespace() || c.is_control() || matches!(c, '*' | '>' | '%') {
            let mut buf = [0u8; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                let _ = write!(out, "%{b:02X}");
            }
        } else {
            out.push(c);
        }
    }
}

/// The subject of an event of type `ty` under `prefix`.
pub fn of_type(prefix: &str, ty: &str) -> String {
    let mut out = String::with_capacity(prefix.len() + ty.len() + 8);
    out.push_str(prefix);
    for part in ty.split('.') {
        out.push('.');
        token(part, &mut out);
    }
    out
}

/// The type a subject made by [`of_type`] stands for (`None` for a
/// subject outside `prefix` or one [`of_type`] cannot have made).
pub fn type_of(prefix: &str, subject: &str) -> Option<String> {
    let rest = subject.strip_prefix(prefix)?.strip_prefix('.')?;
    let mut parts = Vec::new();
    for tok in rest.split('.') {
        if tok == "%" {
            parts.push(String::new());
            continue;
        }
        let mut bytes = Vec::with_capacity(tok.len());
        let mut it = tok.bytes();
        while let Some(b) = it.next() {
            if b == b'%' {
                let hi = it.next()?;
                let lo = it.next()?;
                let hex = [hi, lo];
                let hex = std::str::from_utf8(&hex).ok()?;
                bytes.push(u8::from_str_radix(hex, 16).ok()?);
            } else {
                bytes.push(b);
            }
        }
        parts.push(String::from_utf8(bytes).ok()?);
    }
    Some(parts.join("."))
}

/// The narrowest subject filter that holds every event of exact type
/// `ty` (if given) or whose type starts with `type_prefix`: the exact
/// subject, or the prefix's complete tokens followed by `>` (a
/// `type_prefix` that ends inside a token narrows to the tokens before
/// it; msgbus checks the rest of the filter itself).
pub fn filter(prefix: &str, ty: Option<&str>, type_prefix: Option<&str>) -> String {
    if let Some(ty) = ty {
        return of_type(prefix, ty);
    }
    let mut out = prefix.to_string();
    if let Some(p) = type_prefix {
        let mut parts: Vec<&str> = p.split('.').collect();
        // The last part may end inside a token (or be empty after a
        // trailing `.`): only the parts before it are whole tokens.
        parts.pop();
        for part in parts {
            out.push('.');
            token(part, &mut out);
        }
    }
    out.push_str(".>");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_round_trip_through_subjects() {
        for ty in [
            "com.example.order.created",
            "plain",
            "a..b",
            ".lead",
            "trail.",
            ".",
            "with space.tab\there",
            "star*.gt>.pct%.%41",
            "ünï.cødé",
            "ctl\u{1}.x",
        ] {
            let s = of_type("MSGBUS", ty);
            assert!(
                !s.contains(char::is_whitespace) && !s.contains('*') && !s.contains('>'),
                "{s}"
            );
            assert!(
                s.split('.').all(|t| !t.is_empty()),
                "empty token in {s:?} for {ty:?}"
            );
            assert_eq!(type_of("MSGBUS", &s).as_deref(), Some(ty), "{s}");
        }
    }

    #[test]
    fn filters_stop_at_token_boundaries() {
        assert_eq!(filter("P", None, None), "P.>");
        assert_eq!(filter("P", Some("a.b"), None), "P.a.b");
        assert_eq!(filter("P", None, Some("a.b.")), "P.a.b.>");
        assert_eq!(filter("P", None, Some("a.bc")), "P.a.>");
        assert_eq!(filter("P", None, Some("abc")), "P.>");
        assert_eq!(filter("P", None, Some("a b.")), "P.a%20b.>");
    }
}
