//! Payload validation: the compiled JSON Schemas of every event type with
//! a registered schema, and the one check of events' `data` against them
//! ([`Registry::check`]), which every publish path calls before an event
//! goes to the writer.
//!
//! The documents live in the store (`store::schemas`, `schemas.json`);
//! this registry compiles each version once (with the `jsonschema` crate,
//! draft 2020-12 by default, draft-07 when `$schema` names it) and keeps
//! the validators in memory: an `Arc` map, type -> versions, replaced
//! whole after each change ([`Registry::refresh`]). Validation runs on the
//! request's task (or the bulk lane, with a large body's parse), never on
//! the writer thread.
//!
//! No reference is fetched: the crate is built without its HTTP and file
//! resolvers, so a `$ref` to another document is refused when the schema
//! is registered (422), and only references inside the document work.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use jsonschema::error::{TypeKind, ValidationErrorKind};
use jsonschema::json::Json;
use jsonschema::{Draft, ErrorIterator, ValidationError, Validator};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;

use crate::event::{FieldError, PreparedEvent};
use crate::store::SchemaCatalog;

pub mod borrowed;
mod quick;

/// The `$schema` values accepted, and the draft each selects.
const DRAFTS: &[(&str, Draft)] = &[
    (
        "https://json-schema.org/draft/2020-12/schema",
        Draft::Draft202012,
    ),
    ("http://json-schema.org/draft-07/schema", Draft::Draft7),
    ("https://json-schema.org/draft-07/schema", Draft::Draft7),
];

/// Longest value text quoted in a message ("got the string ...").
const MAX_QUOTED: usize = 60;

/// Why a document is not a usable JSON Schema (the message says so for
/// the client).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidSchema(pub String);

/// Compiles a JSON Schema document, or says why it is not a valid one.
pub fn compile(doc: &Value) -> Result<Compiled, InvalidSchema> {
    let bad = |m: String| Err(InvalidSchema(m));
    let draft = match doc.get("$schema") {
        None => Draft::Draft202012,
        Some(Value::String(s)) => {
            let s = s.trim_end_matches('#');
            match DRAFTS.iter().find(|(uri, _)| *uri == s) {
                Some((_, d)) => *d,
                None => {
                    return bad(format!(
                        "$schema {s:?} is not supported; use draft 2020-12 \
                         (https://json-schema.org/draft/2020-12/schema, the default) or draft-07 \
                         (http://json-schema.org/draft-07/schema#)"
                    ))
                }
            }
        }
        Some(_) => return bad("$schema must be a string (a URI)".into()),
    };
    // Boolean schemas (`true`: anything, `false`: nothing) are valid JSON
    // Schema, but as a type's whole schema they say nothing useful or
    // refuse every event: registering one is refused as a likely mistake.
    if !doc.is_object() {
        return bad(
            "a type's JSON Schema must be an object (true and false are not accepted here)".into(),
        );
    }
    if let Err(e) = jsonschema::meta::validate(doc) {
        let at = e.instance_path().as_str();
        return bad(if at.is_empty() {
            format!("not a valid JSON Schema: {e}")
        } else {
            format!("not a valid JSON Schema: at {at}: {e}")
        });
    }
    let tree = build::<jsonschema::json::SerdeJson>(doc, draft)?;
    let borrowed = build::<borrowed::Borrowed>(doc, draft)?;
    let quick = quick::Checker::compile(doc, draft, &|sub, draft| {
        build::<borrowed::Borrowed>(sub, draft).ok()
    });
    Ok(Compiled {
        tree,
        borrowed,
        quick,
    })
}

/// One representation's validator for `doc`, or why `doc` is no schema.
fn build<F: Json>(doc: &Value, draft: Draft) -> Result<Validator<F>, InvalidSchema> {
    jsonschema::options_for::<F>()
        .with_draft(draft)
        .should_validate_formats(true)
        .with_format("email", is_email)
        .build(doc)
        .map_err(|e| {
            InvalidSchema(match e.kind() {
                ValidationErrorKind::Referencing(r) => format!(
                    "a $ref cannot be resolved ({r}); msgbus fetches no remote or file references: \
                     put every definition in the document ($defs)"
                ),
                _ => format!("not a valid JSON Schema: {e}"),
            })
        })
}

/// The `email` format: the `jsonschema` crate's own check, with a quick
/// answer first for the plain addresses events mostly hold. The crate's
/// check parses the address in full (display names, quoted local parts,
/// domain literals, internationalized labels) and cost almost half of an
/// order event's validation; an address of ASCII letters, digits and
/// `._+-` before one `@` and a plain host name after it is valid by every
/// rule of it, so only other addresses take it (a test checks that the two
/// answer alike).
fn is_email(s: &str) -> bool {
    plain_email(s) || builtin_email(s)
}

/// Whether `s` is `local@host` with a dot-atom local part of
/// `[A-Za-z0-9_+-]` atoms (at most 64 bytes) and a host of two or more
/// labels of `[A-Za-z0-9-]`, each 1 to 63 bytes, starting and ending with
/// a letter or digit, holding no `--` (the crate decodes `xn--` labels),
/// 253 bytes at most. False does not mean invalid, only "ask the crate".
fn plain_email(s: &str) -> bool {
    let Some((local, host)) = s.split_once('@') else {
        return false;
    };
    let atom = |part: &[u8], extra: &[u8]| {
        !part.is_empty()
            && part
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || extra.contains(b))
    };
    let label = |l: &[u8]| {
        l.len() <= 63
            && atom(l, b"-")
            && l[0].is_ascii_alphanumeric()
            && l[l.len() - 1].is_ascii_alphanumeric()
    };
    local.len() <= 64
        && host.len() <= 253
        && local
            .as_bytes()
            .split(|&b| b == b'.')
            .all(|a| atom(a, b"_+-"))
        && host.contains('.')
        && !host.contains("--")
        && host.as_bytes().split(|&b| b == b'.').all(label)
}

/// The `jsonschema` crate's own `email` check.
fn builtin_email(s: &str) -> bool {
    static CHECK: std::sync::OnceLock<Validator> = std::sync::OnceLock::new();
    CHECK
        .get_or_init(|| {
            jsonschema::options()
                .should_validate_formats(true)
                .build(&serde_json::json!({"format": "email"}))
                .expect("the email format schema compiles")
        })
        .is_valid(&Value::String(s.to_owned()))
}

/// One schema version, compiled three times: as a quick validator of the
/// payload's text (`quick`: the keywords events' schemas mostly use,
/// checked while the text is scanned; `None` for a schema using others),
/// over [`borrowed::Borrowed`], the reading of a payload's text that valid
/// events take when the quick one cannot answer (no tree built), and over
/// `serde_json::Value`, for payloads that reading leaves alone and for
/// listing violations (see [`borrowed`]'s docs).
pub struct Compiled {
    tree: Validator,
    borrowed: Validator<borrowed::Borrowed>,
    quick: Option<quick::Checker>,
}

impl Compiled {
    /// Whether `data`, a JSON value's text, validates, read without
    /// building a tree: by the quick validator, else the borrowed
    /// reading; `None` when neither takes it (ask [`Compiled::is_valid`]
    /// with a `Value`).
    pub fn accepts(&self, data: &str) -> Option<bool> {
        // Only its "valid" is taken: an invalid payload goes on to the
        // readings whose answers the violations are listed from.
        if self.quick_check(data) == Some(true) {
            return Some(true);
        }
        let doc = borrowed::Doc::read(data)?;
        Some(self.accepts_doc(&doc))
    }

    /// The quick validator's answer alone: `None` when the schema has no
    /// quick validator or it cannot be sure for `data`.
    pub fn quick_check(&self, data: &str) -> Option<bool> {
        self.quick.as_ref()?.check(data)
    }

    /// Whether the schema has a quick validator (uses only its keywords).
    pub fn has_quick_check(&self) -> bool {
        self.quick.is_some()
    }

    /// Whether a payload already read borrowed validates.
    pub fn accepts_doc(&self, doc: &borrowed::Doc<'_>) -> bool {
        self.borrowed.is_valid(doc.root())
    }

    /// Whether `data` validates.
    pub fn is_valid(&self, data: &Value) -> bool {
        self.tree.is_valid(data)
    }

    /// Every violation of `data`.
    pub fn iter_errors<'i>(&'i self, data: &'i Value) -> ErrorIterator<'i> {
        self.tree.iter_errors(data)
    }

    /// The first violation of `data`, if any.
    pub fn first_error<'i>(&'i self, data: &'i Value) -> Option<ValidationError<'i>> {
        self.iter_errors(data).next()
    }
}

impl std::fmt::Debug for Compiled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Compiled")
    }
}

/// One type's compiled versions.
#[derive(Clone)]
pub struct TypeValidators {
    /// False once `DELETE /schemas/{type}` stopped validation.
    pub active: bool,
    /// The newest version.
    pub latest: u32,
    /// The newest version's URL as the member added to events that name
    /// no `dataschema`: `,"dataschema":"..."}` (made once here, not per
    /// event).
    latest_member: Arc<[u8]>,
    /// Every compiled version.
    pub versions: BTreeMap<u32, Arc<Compiled>>,
    /// Validations and rejections since start, kept across refreshes:
    /// counted with atomics, so concurrent publishers share no lock.
    counts: Arc<AtomicCounts>,
}

/// [`TypeCounts`] as the publish path counts them.
#[derive(Debug, Default)]
struct AtomicCounts {
    validations: AtomicU64,
    rejections: AtomicU64,
}

/// Validations and rejections of one type since start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TypeCounts {
    /// Events checked against a schema.
    pub validations: u64,
    /// Events refused by it.
    pub rejections: u64,
}

/// The compiled validators and the validation counters.
#[derive(Default)]
pub struct Registry {
    types: RwLock<Arc<HashMap<String, TypeValidators>>>,
    /// Serializes refreshes, so two never race to publish, and holds the
    /// generation of the catalog last published: an older one (fetched
    /// before a newer one but arriving later) is not published over it.
    refreshing: Mutex<Option<u64>>,
    /// Where `dataschema` URLs point: `--public-url`, or empty for the
    /// relative `/schemas/...` form.
    public_url: String,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry").finish_non_exhaustive()
    }
}

/// What a refused publish lists: one entry per violation, the first
/// `cap`, and how many more were found.
#[derive(Debug, Default)]
pub struct Violations {
    /// The listed violations.
    pub errors: Vec<FieldError>,
    /// How many more were found than listed.
    pub unlisted: usize,
    /// Events that failed.
    pub events: usize,
}

#[derive(Deserialize)]
struct Payload<'a> {
    #[serde(borrow, default)]
    data: Option<&'a RawValue>,
    #[serde(default)]
    data_base64: Option<serde::de::IgnoredAny>,
    #[serde(borrow, default)]
    datacontenttype: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    dataschema: Option<Cow<'a, str>>,
}

/// The payload attributes the check reads, borrowed from the event.
struct PayloadView<'a> {
    /// `data`'s JSON text.
    data: Option<&'a str>,
    data_base64: bool,
    datacontenttype: Option<Cow<'a, str>>,
    dataschema: Option<Cow<'a, str>>,
}

impl<'a> PayloadView<'a> {
    /// Reads them from `bytes`, a whole event.
    fn parse(bytes: &'a [u8]) -> Result<Self, serde_json::Error> {
        let p: Payload<'a> = serde_json::from_slice(bytes)?;
        Ok(PayloadView {
            data: p.data.map(RawValue::get),
            data_base64: p.data_base64.is_some(),
            datacontenttype: p.datacontenttype,
            dataschema: p.dataschema,
        })
    }

    /// Takes them from where the envelope's parse noted them, else reads
    /// the event.
    fn of(ev: &'a PreparedEvent) -> Result<Self, serde_json::Error> {
        let bytes = ev.bytes();
        let noted = ev.payload.as_ref().and_then(|spans| {
            let text = |span: &Option<std::ops::Range<usize>>| match span {
                None => Some(None),
                Some(r) => std::str::from_utf8(bytes.get(r.clone())?).ok().map(Some),
            };
            let string = |span: &Option<std::ops::Range<usize>>| -> Option<Option<Cow<'a, str>>> {
                match text(span)? {
                    None => Some(None),
                    Some(t) => match t.strip_prefix('"').and_then(|t| t.strip_suffix('"')) {
                        Some(inner) if !inner.contains('\\') => Some(Some(Cow::Borrowed(inner))),
                        _ => serde_json::from_str::<String>(t)
                            .ok()
                            .map(|s| Some(Cow::Owned(s))),
                    },
                }
            };
            Some(PayloadView {
                data: text(&spans.data)?,
                data_base64: spans.data_base64,
                datacontenttype: string(&spans.datacontenttype)?,
                dataschema: string(&spans.dataschema)?,
            })
        });
        match noted {
            Some(view) => Ok(view),
            None => Self::parse(bytes),
        }
    }
}

impl Registry {
    /// An empty registry whose `dataschema` URLs start with `public_url`
    /// (empty: the relative form `/schemas/{type}/versions/{n}`).
    pub fn new(public_url: &str) -> Self {
        Registry {
            public_url: public_url.trim_end_matches('/').to_string(),
            ..Default::default()
        }
    }

    /// The URL of a schema version, as `dataschema` and the API name it.
    pub fn url(&self, ty: &str, version: u32) -> String {
        format!("{}{}", self.public_url, schema_path(ty, version))
    }

    /// Compiles what `catalog` holds that is not compiled yet and
    /// publishes the new map. A stored version that no longer compiles
    /// (it did when it was registered) is logged and left out.
    pub fn refresh(&self, catalog: &SchemaCatalog) {
        let mut applied = self.refreshing.lock().unwrap_or_else(|e| e.into_inner());
        if applied.is_some_and(|g| g > catalog.generation) {
            return;
        }
        *applied = Some(catalog.generation);
        let old = self.snapshot();
        let mut next = HashMap::with_capacity(catalog.types.len());
        for (ty, t) in &catalog.types {
            let mut versions = BTreeMap::new();
            for v in &t.versions {
                let compiled = old
                    .get(ty)
                    .and_then(|o| o.versions.get(&v.version).cloned())
                    .or_else(|| match compile(&v.schema) {
                        Ok(c) => Some(Arc::new(c)),
                        Err(e) => {
                            tracing::error!(r#type = %ty, version = v.version, error = %e, "a stored schema does not compile");
                            None
                        }
                    });
                if let Some(c) = compiled {
                    versions.insert(v.version, c);
                }
            }
            let latest = t.latest().version;
            next.insert(
                ty.clone(),
                TypeValidators {
                    active: t.active(),
                    latest,
                    latest_member: dataschema_member(&self.url(ty, latest)).into(),
                    versions,
                    counts: old.get(ty).map(|o| o.counts.clone()).unwrap_or_default(),
                },
            );
        }
        *self.types.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(next);
    }

    fn snapshot(&self) -> Arc<HashMap<String, TypeValidators>> {
        self.types.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Types whose payloads are validated now.
    pub fn active_types(&self) -> usize {
        self.snapshot().values().filter(|t| t.active).count()
    }

    /// Validations and rejections per type since start.
    pub fn counts(&self) -> HashMap<String, TypeCounts> {
        self.snapshot()
            .iter()
            .map(|(ty, t)| {
                let c = TypeCounts {
                    validations: t.counts.validations.load(Ordering::Relaxed),
                    rejections: t.counts.rejections.load(Ordering::Relaxed),
                };
                (ty.clone(), c)
            })
            .filter(|(_, c)| c.validations > 0)
            .collect()
    }

    /// Checks every event whose type has an active schema: its `data`
    /// must be JSON and validate against the latest version (or the one
    /// its `dataschema` names). An event without `dataschema` gets the
    /// version's URL. Field names are prefixed `[i].` when `batch`. At
    /// most `cap` violations are listed; the rest are counted.
    pub fn check(
        &self,
        events: &mut [PreparedEvent],
        batch: bool,
        cap: usize,
    ) -> Result<(), Violations> {
        let types = self.snapshot();
        if types.is_empty() {
            return Ok(());
        }
        let mut out = Violations::default();
        for (i, ev) in events.iter_mut().enumerate() {
            let Some(t) = types.get(&ev.ty).filter(|t| t.active) else {
                continue;
            };
            let prefix = Prefix(batch.then_some(i));
            let before = out.errors.len() + out.unlisted;
            let set_schema = check_one(self, ev, t, prefix, cap, &mut out);
            let failed = out.errors.len() + out.unlisted > before;
            t.counts.validations.fetch_add(1, Ordering::Relaxed);
            if failed {
                t.counts.rejections.fetch_add(1, Ordering::Relaxed);
                out.events += 1;
            } else if set_schema {
                add_dataschema(ev, &t.latest_member);
            }
        }
        if out.events == 0 {
            Ok(())
        } else {
            Err(out)
        }
    }
}

fn push(out: &mut Violations, cap: usize, field: String, message: String) {
    if out.errors.len() < cap {
        out.errors.push(FieldError { field, message });
    } else {
        out.unlisted += 1;
    }
}

/// What field names of a batch's event start with (`[3].`; nothing for a
/// single event), written only when a violation is reported.
#[derive(Debug, Clone, Copy)]
struct Prefix(Option<usize>);

impl std::fmt::Display for Prefix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(i) => write!(f, "[{i}]."),
            None => Ok(()),
        }
    }
}

/// Records why an event is refused; `check_one` answers with it.
fn refuse(out: &mut Violations, cap: usize, field: String, message: String) -> bool {
    push(out, cap, field, message);
    false
}

/// Checks one event; answers whether to add the latest version's
/// `dataschema` (it named none and passed).
fn check_one(
    reg: &Registry,
    ev: &PreparedEvent,
    t: &TypeValidators,
    prefix: Prefix,
    cap: usize,
    out: &mut Violations,
) -> bool {
    let payload = match PayloadView::of(ev) {
        Ok(p) => p,
        Err(e) => {
            return refuse(
                out,
                cap,
                format!("{prefix}data"),
                format!("cannot be read: {e}"),
            );
        }
    };
    if payload.data_base64 {
        return refuse(
            out,
            cap,
            format!("{prefix}data_base64"),
            format!(
                "type {:?} has a JSON Schema, so its data must be JSON; binary data (data_base64) cannot match it",
                ev.ty
            ),
        );
    }
    if let Some(ct) = payload.datacontenttype.as_deref().filter(|ct| !is_json(ct)) {
        return refuse(
            out,
            cap,
            format!("{prefix}datacontenttype"),
            format!(
                "type {:?} has a JSON Schema, so its data must be JSON (application/json or a +json type), not {ct:?}",
                ev.ty
            ),
        );
    }
    let (version, set) = match payload.dataschema.as_deref() {
        None => (t.latest, true),
        Some(named) => match version_named(named, &ev.ty) {
            Some(n) if t.versions.contains_key(&n) => (n, false),
            _ => {
                return refuse(
                    out,
                    cap,
                    format!("{prefix}dataschema"),
                    format!(
                        "{named:?} is not a schema version of type {:?}; name one as {} (versions 1 to {}), or leave dataschema out to use the latest",
                        ev.ty,
                        reg.url(&ev.ty, t.latest),
                        t.latest
                    ),
                );
            }
        },
    };
    let Some(validator) = t.versions.get(&version) else {
        return refuse(
            out,
            cap,
            format!("{prefix}data"),
            format!("schema version {version} of type {:?} cannot be used (it does not compile); see the server log", ev.ty),
        );
    };
    // The common case first: a valid payload, read borrowed (no tree) and
    // checked with `is_valid`, which stops at nothing and builds no error.
    let text = payload.data.unwrap_or("null");
    let borrowed = validator.accepts(text);
    if borrowed == Some(true) {
        return set;
    }
    let data: Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(e) => {
            return refuse(
                out,
                cap,
                format!("{prefix}data"),
                format!("cannot be read: {e}"),
            );
        }
    };
    // A payload the borrowed reading left alone is checked as a tree;
    // only a failing event walks its errors.
    if borrowed.is_none() && validator.is_valid(&data) {
        return set;
    }
    let mut any = false;
    for e in validator.iter_errors(&data) {
        any = true;
        let (field, message) = describe(&e, &format!("{prefix}data"));
        push(out, cap, field, message);
        if out.errors.len() >= cap && out.unlisted > 10_000 {
            break;
        }
    }
    !any && set
}

/// Validates `data` of a stored event's bytes against `validator`, for
/// the backward-compatibility check: `None` when it passes, or the first
/// violation's (field, message).
pub fn check_stored(validator: &Compiled, ty: &str, bytes: &[u8]) -> Option<(String, String)> {
    let payload = match PayloadView::parse(bytes) {
        Ok(p) => p,
        Err(e) => return Some(("data".into(), format!("cannot be read: {e}"))),
    };
    if payload.data_base64 {
        return Some((
            "data_base64".into(),
            "binary data (data_base64) cannot match a JSON Schema".into(),
        ));
    }
    if let Some(ct) = payload.datacontenttype.as_deref().filter(|ct| !is_json(ct)) {
        return Some((
            "datacontenttype".into(),
            format!(
                "data of type {ct:?} is not JSON and cannot match a JSON Schema of type {ty:?}"
            ),
        ));
    }
    let text = payload.data.unwrap_or("null");
    if validator.accepts(text) == Some(true) {
        return None;
    }
    let data: Value = serde_json::from_str(text).unwrap_or(Value::Null);
    let e = validator.first_error(&data)?;
    Some(describe(&e, "data"))
}

/// True for JSON media types: `application/json`, `*/*+json`, `text/json`
/// (any case; compared in place, as it is asked once per event).
fn is_json(ct: &str) -> bool {
    let m = ct.split(';').next().unwrap_or("").trim().as_bytes();
    m.eq_ignore_ascii_case(b"application/json")
        || m.eq_ignore_ascii_case(b"text/json")
        || m.len()
            .checked_sub(5)
            .is_some_and(|at| m[at..].eq_ignore_ascii_case(b"+json"))
}

/// `/schemas/{type}/versions/{n}`, the type percent-encoded.
pub fn schema_path(ty: &str, version: u32) -> String {
    format!("/schemas/{}/versions/{version}", encode_segment(ty))
}

fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The version a `dataschema` names for `ty`: a URL or reference whose
/// path ends in `/schemas/{type}/versions/{n}`.
fn version_named(named: &str, ty: &str) -> Option<u32> {
    let path = named.split(['?', '#']).next().unwrap_or("");
    let (head, n) = path.rsplit_once("/versions/")?;
    let n: u32 = n.parse().ok().filter(|&n| n > 0)?;
    let (_, t) = head.rsplit_once("/schemas/")?;
    (t == ty || t == encode_segment(ty)).then_some(n)
}

/// `,"dataschema":"url"}`: what [`add_dataschema`] puts in place of an
/// event's closing brace.
fn dataschema_member(url: &str) -> Vec<u8> {
    let mut out = b",\"dataschema\":".to_vec();
    serde_json::to_writer(&mut out, url).expect("writing to a Vec cannot fail");
    out.push(b'}');
    out
}

/// Adds `member` (see [`dataschema_member`]) as the stored event's last
/// member.
fn add_dataschema(ev: &mut PreparedEvent, member: &[u8]) {
    if ev.buf.last() != Some(&b'}') {
        return;
    }
    ev.buf.pop();
    ev.payload = None;
    ev.buf.extend_from_slice(member);
}

/// The field (a JSON pointer into the event, `data/items/0/price`) and a
/// message a person or an agent can act on.
fn describe(e: &jsonschema::ValidationError<'_>, base: &str) -> (String, String) {
    let field = format!("{base}{}", e.instance_path().as_str());
    let got = quote(e.instance());
    let msg = match e.kind() {
        ValidationErrorKind::Type { kind } => {
            let want = match kind {
                TypeKind::Single(t) => article(&t.to_string()),
                TypeKind::Multiple(ts) => {
                    let names: Vec<String> = ts.iter().map(|t| article(&t.to_string())).collect();
                    names.join(" or ")
                }
            };
            format!("must be {want}, got {got}")
        }
        ValidationErrorKind::Required { property } => {
            let name = property
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| property.to_string());
            return (
                format!("{field}/{}", name.replace('~', "~0").replace('/', "~1")),
                format!("is required but missing (property {name:?})"),
            );
        }
        ValidationErrorKind::Enum { options } => {
            format!("must be one of {}, got {got}", clip(&options.to_string()))
        }
        ValidationErrorKind::Constant { expected_value } => {
            format!("must be {}, got {got}", clip(&expected_value.to_string()))
        }
        ValidationErrorKind::Format { format } => format!("must be a valid {format}, got {got}"),
        ValidationErrorKind::OneOfNotValid { .. } => {
            format!(
                "must match exactly one of the oneOf alternatives, but matches none (got {got})"
            )
        }
        ValidationErrorKind::OneOfMultipleValid { .. } => {
            format!(
                "must match exactly one of the oneOf alternatives, but matches several (got {got})"
            )
        }
        ValidationErrorKind::AnyOf { .. } => {
            format!("must match at least one of the anyOf alternatives (got {got})")
        }
        ValidationErrorKind::Minimum { limit } => format!("must be >= {limit}, got {got}"),
        ValidationErrorKind::Maximum { limit } => format!("must be <= {limit}, got {got}"),
        ValidationErrorKind::ExclusiveMinimum { limit } => format!("must be > {limit}, got {got}"),
        ValidationErrorKind::ExclusiveMaximum { limit } => format!("must be < {limit}, got {got}"),
        ValidationErrorKind::MinLength { limit } => {
            format!("must be at least {limit} characters long, got {got}")
        }
        ValidationErrorKind::MaxLength { limit } => {
            format!("must be at most {limit} characters long, got {got}")
        }
        ValidationErrorKind::MinItems { limit } => format!("must hold at least {limit} items"),
        ValidationErrorKind::MaxItems { limit } => format!("must hold at most {limit} items"),
        ValidationErrorKind::MinProperties { limit } => {
            format!("must have at least {limit} properties")
        }
        ValidationErrorKind::MaxProperties { limit } => {
            format!("must have at most {limit} properties")
        }
        ValidationErrorKind::Pattern { pattern } => {
            format!("must match the pattern {pattern:?}, got {got}")
        }
        ValidationErrorKind::AdditionalProperties { unexpected } => format!(
            "has properties the schema does not allow: {}",
            clip(&unexpected.join(", "))
        ),
        ValidationErrorKind::UniqueItems => "must hold unique items, but repeats one".into(),
        ValidationErrorKind::FalseSchema => "is not allowed here".into(),
        _ => clip(&e.to_string()),
    };
    (field, msg)
}

/// `object` -> `an object`.
fn article(t: &str) -> String {
    match t.chars().next() {
        Some('a' | 'e' | 'i' | 'o' | 'u') => format!("an {t}"),
        _ => format!("a {t}"),
    }
}

/// What a value is, for a message: `the string "five"`, `the number 5`.
fn quote(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => format!("the boolean {b}"),
        Value::Number(n) => format!("the number {n}"),
        Value::String(s) => format!("the string {}", clip(&Value::String(s.clone()).to_string())),
        Value::Array(a) => format!("an array of {} items", a.len()),
        Value::Object(o) => format!("an object with {} properties", o.len()),
    }
}

fn clip(s: &str) -> String {
    if s.chars().count() <= MAX_QUOTED {
        return s.to_string();
    }
    let cut: String = s.chars().take(MAX_QUOTED).collect();
    format!("{cut}...")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn messages_name_the_pointer_and_what_was_sent() {
        let v = compile(&json!({
            "type": "object",
            "required": ["points", "owner"],
            "properties": {
                "points": {"type": "number"},
                "items": {"type": "array", "items": {"type": "object", "properties": {"price": {"type": "number"}}}}
            }
        }))
        .unwrap();
        let data = json!({"points": "five", "items": [{"price": "x"}]});
        let mut got: Vec<(String, String)> =
            v.iter_errors(&data).map(|e| describe(&e, "data")).collect();
        got.sort();
        let want: Vec<(String, String)> = vec![
            (
                "data/items/0/price".into(),
                "must be a number, got the string \"x\"".into(),
            ),
            (
                "data/owner".into(),
                "is required but missing (property \"owner\")".into(),
            ),
            (
                "data/points".into(),
                "must be a number, got the string \"five\"".into(),
            ),
        ];
        assert_eq!(got, want);
    }

    /// The borrowed reading and the `Value` tree answer the same for every
    /// payload: random values (from small alphabets, so that schemas match
    /// some and refuse others) against schemas that use the keywords whose
    /// code paths differ between representations (lookups, member and item
    /// iteration, string lengths, formats, `enum`/`const` comparisons,
    /// uniqueness, property names, references, unevaluated members).
    #[test]
    fn borrowed_and_tree_validation_agree() {
        let schemas = [
            json!({"type": "object", "required": ["a", "b"], "properties": {
                "a": {"type": "integer", "minimum": 0, "multipleOf": 2},
                "b": {"type": "string", "minLength": 2, "maxLength": 3, "pattern": "^[aé]"},
                "c": {"enum": ["x", 1, 1.5, null, true, [1, "x"], {"a": 1}]},
                "d": {"const": {"a": [1, 2.0]}}
            }, "additionalProperties": {"type": ["array", "boolean", "null"]}}),
            json!({"type": "array", "prefixItems": [{"type": "number"}, {"type": "string", "format": "email"}],
                   "items": {"type": ["object", "string"]}, "uniqueItems": true,
                   "contains": {"type": "string"}, "minContains": 1, "maxItems": 4}),
            json!({"$defs": {"node": {"type": "object", "properties": {
                       "a": {"$ref": "#/$defs/node"}, "b": {"type": "array", "items": {"$ref": "#/$defs/node"}}},
                       "propertyNames": {"maxLength": 1}}},
                   "oneOf": [{"$ref": "#/$defs/node"}, {"type": "string", "format": "date-time"}]}),
            json!({"type": "object", "patternProperties": {"^[ab]$": {"type": "number"}},
                   "dependentRequired": {"a": ["b"]}, "minProperties": 1,
                   "if": {"required": ["c"]}, "then": {"properties": {"c": {"not": {"type": "string"}}}},
                   "else": {"properties": {"d": {"anyOf": [{"type": "integer"}, {"const": "x"}]}}},
                   "unevaluatedProperties": false}),
            // Numbers of every kind against integer and float bounds.
            json!({"type": "object", "additionalProperties": {"anyOf": [
                       {"type": "integer", "multipleOf": 2, "minimum": -9223372036854775808i64},
                       {"type": "number", "exclusiveMinimum": 1, "maximum": 1e300},
                       {"enum": [1.5, 18446744073709551616.0, "x", -0.5]},
                       {"type": ["array", "object"], "items": {"type": "number", "maximum": 2}}]}}),
            // The quick validator's keywords (see `quick`), in every
            // combination the values below reach.
            json!({"type": "object", "required": ["a"], "additionalProperties": false, "properties": {
                "a": {"type": "integer", "minimum": 0, "maximum": 2},
                "b": {"type": "string", "pattern": "^[aé]", "minLength": 2, "maxLength": 3},
                "c": {"enum": ["x", 1, 1.5, null, true]},
                "d": {"type": ["array", "null"], "items": {"type": "number", "exclusiveMaximum": 2},
                      "minItems": 1, "maxItems": 3},
                "é": {"const": "ab"},
                "ab": {"type": "string", "format": "email"}}}),
            json!({"type": "array", "maxItems": 3, "items": {
                "type": ["object", "string", "boolean"], "minLength": 2, "required": ["b"],
                "properties": {"a": {"type": "number", "exclusiveMinimum": 1.5}},
                "additionalProperties": {"type": ["string", "null"], "format": "date-time", "maxLength": 20}}}),
            json!({"$schema": "http://json-schema.org/draft-07/schema#", "title": "t",
                   "type": ["object", "array", "integer"], "minimum": 1,
                   "properties": {"a": {"const": 1}, "b": true, "c": false},
                   "additionalProperties": {"type": "integer", "minimum": -2, "maximum": 18446744073709551615u64},
                   "items": {"enum": [1, "x", null, true, 1.5]}}),
            json!({"type": ["object", "string", "number"], "required": ["a", "b"],
                   "properties": {"a": {"type": ["integer", "null"], "exclusiveMinimum": -1,
                                        "exclusiveMaximum": 1e300, "enum": [0, 2, 3, null, 1.5]}},
                   "maxLength": 2, "minimum": -0.5, "maximum": 1e300, "const": "x",
                   "additionalProperties": {"items": {"type": "object", "additionalProperties": false}}}),
        ];
        // The quick validator takes exactly the schemas of its keywords.
        let quick: Vec<bool> = schemas
            .iter()
            .map(|s| compile(s).unwrap().has_quick_check())
            .collect();
        assert_eq!(
            quick,
            [false, false, false, false, false, true, true, true, true]
        );
        let validators: Vec<Compiled> = schemas.iter().map(|s| compile(s).unwrap()).collect();
        let mut rng = 0x2545_f491_4f6c_dd1du64;
        let mut next = move |n: u64| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng % n
        };
        fn value(next: &mut impl FnMut(u64) -> u64, depth: u32) -> Value {
            let strings = [
                "x",
                "ab",
                "abc",
                "e\u{301}é",
                "a@b.c",
                "2026-11-30T12:00:00Z",
                "\"q\"",
                "🦀🦀",
            ];
            let keys = ["a", "b", "c", "d", "ab", "é"];
            // Half the time one of the values the schemas name, so that
            // objects and arrays pass often enough to tell a wrong answer.
            let named = [
                json!(0),
                json!(2),
                json!(3),
                json!("ab"),
                json!("é1"),
                json!("x"),
                json!(1),
                json!(1.5),
                json!(1.0),
                json!(null),
                json!(true),
                json!([1, "x"]),
                json!([1.0, "x"]),
                json!({"a": 1}),
                json!({"a": [1, 2.0]}),
                json!({"a": [1, 2]}),
                json!("abcd"),
            ];
            if depth > 0 && next(2) == 0 {
                return named[next(named.len() as u64) as usize].clone();
            }
            let kind = match depth {
                0 => 6 + next(2),
                1 | 2 => next(8),
                _ => next(6),
            };
            match kind {
                0 => Value::Null,
                1 => Value::Bool(next(2) == 0),
                2 => json!(next(7) as i64 - 2),
                3 => json!([1.5, 2.0, -0.5, 1e300, 4.0, 1.0][next(6) as usize]),
                4 | 5 => json!(strings[next(strings.len() as u64) as usize]),
                6 => Value::Array((0..next(5)).map(|_| value(next, depth + 1)).collect()),
                _ => Value::Object(
                    (0..next(5))
                        .map(|_| {
                            (
                                keys[next(keys.len() as u64) as usize].to_string(),
                                value(next, depth + 1),
                            )
                        })
                        .collect(),
                ),
            }
        }
        // Edge cases the generator reaches rarely: numbers equal across
        // written forms, escapes, code points against byte lengths.
        for (schema, instance, want) in [
            (json!({"enum": [1, "x"]}), "1.0", true),
            (json!({"const": 2}), "2.0", true),
            (json!({"const": {"a": [1]}}), r#"{"a":[1.0]}"#, true),
            (json!({"enum": ["é", 3]}), r#""\u00e9""#, true),
            (json!({"maxLength": 2}), r#""🦀🦀""#, true),
            (json!({"minLength": 3}), r#""🦀🦀""#, false),
            (
                json!({"properties": {"é": false}}),
                r#"{"\u00e9": 1}"#,
                false,
            ),
            (json!({"uniqueItems": true}), "[1, 1.0]", false),
        ] {
            let c = compile(&schema).unwrap();
            assert_eq!(c.accepts(instance), Some(want), "{schema} on {instance}");
            let tree: Value = serde_json::from_str(instance).unwrap();
            assert_eq!(c.is_valid(&tree), want, "{schema} on {instance}");
        }
        // How often the quick validator answered, valid and invalid.
        let mut quick = [0usize; 2];
        // Its "valid" is always the crate's; its "invalid" too unless a
        // member name repeats (it stops at the first violation, before a
        // repetition that would replace the value).
        let mut record_quick =
            |c: &Compiled, text: &str, want: bool, schema: &Value, repeated: bool| match c
                .quick_check(text)
            {
                Some(got) if !repeated || got => {
                    assert_eq!(got, want, "quick: {schema} on {text}");
                    quick[usize::from(want)] += 1;
                }
                _ => {}
            };
        let (mut valid, mut invalid) = (0, 0);
        for _ in 0..20_000 {
            let v = value(&mut next, 0);
            let text = v.to_string();
            for (schema, c) in schemas.iter().zip(&validators) {
                let tree = c.is_valid(&v);
                assert_eq!(c.accepts(&text), Some(tree), "{schema} on {text}");
                record_quick(c, &text, tree, schema, false);
                if tree {
                    valid += 1
                } else {
                    invalid += 1
                }
            }
        }
        assert!(
            valid > 1_000 && invalid > 1_000,
            "{valid} valid, {invalid} invalid"
        );
        // The same from texts spelled every way JSON allows (white space,
        // escapes, number forms, deep nesting), which serializing a
        // `Value` never writes: the reading of each is serde_json's, and
        // both validators answer alike. A text with a repeated member name
        // is left to the `Value` path.
        let (mut valid, mut invalid, mut deep) = (0, 0, 0);
        for _ in 0..20_000 {
            let mut text = String::new();
            let mut repeated = false;
            let depth = if next(200) == 0 {
                deep += 1;
                100 + next(27) as u32
            } else {
                0
            };
            spelled(&mut next, depth, depth, &mut text, &mut repeated);
            let tree: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
            match borrowed::Doc::read(&text) {
                None => assert!(repeated, "refused {text}"),
                Some(doc) => {
                    assert!(!repeated, "read a repeated name in {text}");
                    use jsonschema::json::Node;
                    assert_eq!(doc.root().to_value().into_owned(), tree, "{text}");
                }
            }
            for (schema, c) in schemas.iter().zip(&validators) {
                let want = c.is_valid(&tree);
                let got = c.accepts(&text);
                record_quick(c, &text, want, schema, repeated);
                if repeated {
                    // Only the quick validator may answer, and only where
                    // the repetition cannot change the answer.
                    assert!(got.is_none_or(|got| got == want), "{schema} on {text}");
                } else {
                    assert_eq!(got, Some(want), "{schema} on {text}");
                }
                if want {
                    valid += 1
                } else {
                    invalid += 1
                }
            }
        }
        assert!(
            valid > 1_000 && invalid > 1_000 && deep > 50,
            "{valid} valid, {invalid} invalid, {deep} deep"
        );
        // Of 4 x 40,000 checks by schemas with a quick validator.
        assert!(
            quick[0] > 20_000 && quick[1] > 10_000,
            "the quick validator answered {} invalid, {} valid",
            quick[0],
            quick[1]
        );
    }

    /// Writes a random JSON value's text, spelled in any of the ways JSON
    /// allows: white space between tokens, characters escaped or not,
    /// numbers in every form. `nest` wraps it first in that many arrays
    /// and objects. Sets `repeated` when an object repeats a member name.
    fn spelled(
        next: &mut impl FnMut(u64) -> u64,
        nest: u32,
        depth: u32,
        out: &mut String,
        repeated: &mut bool,
    ) {
        let space = |next: &mut dyn FnMut(u64) -> u64, out: &mut String| {
            out.push_str(["", "", "", " ", "\t", "\n  ", " \r\n"][next(7) as usize]);
        };
        space(next, out);
        if nest > 0 {
            if next(2) == 0 {
                out.push('[');
                spelled(next, nest - 1, depth, out, repeated);
                out.push(']');
            } else {
                out.push_str(r#"{"a":"#);
                spelled(next, nest - 1, depth, out, repeated);
                out.push('}');
            }
            space(next, out);
            return;
        }
        let strings = [
            "x",
            "ab",
            "é1",
            "a@b.c",
            "2026-11-30T12:00:00Z",
            "\"q\" \\ /",
            "🦀🦀",
            "line\nbreak\ttab\u{8}\u{c}\u{1f}",
            "",
        ];
        let keys = ["a", "b", "c", "d", "é", "🦀", "q\"", ""];
        let numbers = [
            "0",
            "-0",
            "2",
            "-2",
            "3",
            "1.0",
            "2.0",
            "1.5",
            "-0.5",
            "0.5e1",
            "15e-1",
            "-1.5E+0",
            "1e300",
            "1E0",
            "2e0",
            "18446744073709551615",
            "18446744073709551616",
            "-9223372036854775808",
            "-9223372036854775809",
            "123456789012345.6",
            "0.30000000000000004",
            "1e-7",
            "100000000000000000000",
            "4",
            "-0.0",
        ];
        let kind = match depth {
            0 => 7 + next(2),
            1 | 2 => next(9),
            _ => next(7),
        };
        match kind {
            0 => out.push_str("null"),
            1 => out.push_str(["true", "false"][next(2) as usize]),
            2 | 3 => out.push_str(numbers[next(numbers.len() as u64) as usize]),
            4..=6 => {
                let s = strings[next(strings.len() as u64) as usize];
                escaped(next, s, out)
            }
            7 => {
                out.push('[');
                for i in 0..next(5) {
                    if i > 0 {
                        out.push(',');
                    }
                    spelled(next, 0, depth + 1, out, repeated);
                }
                space(next, out);
                out.push(']');
            }
            _ => {
                out.push('{');
                let mut names = Vec::new();
                for _ in 0..next(5) {
                    let name = keys[next(keys.len() as u64) as usize];
                    if names.contains(&name) {
                        // Mostly another name; now and then a repetition.
                        if next(20) > 0 {
                            continue;
                        }
                        *repeated = true;
                    }
                    if !names.is_empty() {
                        out.push(',');
                    }
                    names.push(name);
                    space(next, out);
                    escaped(next, name, out);
                    space(next, out);
                    out.push(':');
                    spelled(next, 0, depth + 1, out, repeated);
                }
                space(next, out);
                out.push('}');
            }
        }
        space(next, out);
    }

    /// Writes `s` as a JSON string, each character as itself, a short
    /// escape or a `\u` escape (a surrogate pair beyond the BMP), at random.
    fn escaped(next: &mut impl FnMut(u64) -> u64, s: &str, out: &mut String) {
        use std::fmt::Write;
        out.push('"');
        for c in s.chars() {
            let short = match c {
                '"' => Some("\\\""),
                '\\' => Some("\\\\"),
                '/' => Some("\\/"),
                '\n' => Some("\\n"),
                '\t' => Some("\\t"),
                '\u{8}' => Some("\\b"),
                '\u{c}' => Some("\\f"),
                '\r' => Some("\\r"),
                _ => None,
            };
            match (next(3), short) {
                (0, _) => {
                    for unit in c.encode_utf16(&mut [0; 2]) {
                        if next(2) == 0 {
                            write!(out, "\\u{unit:04x}").unwrap();
                        } else {
                            write!(out, "\\u{unit:04X}").unwrap();
                        }
                    }
                }
                (_, Some(short)) if c != '/' || next(2) == 0 => out.push_str(short),
                _ if (c as u32) < 0x20 || c == '"' || c == '\\' => {
                    write!(out, "\\u{:04x}", c as u32).unwrap();
                }
                _ => out.push(c),
            }
        }
        out.push('"');
    }

    /// The quick `email` answer is only ever given for addresses the
    /// crate's own check accepts: addresses built at random from the
    /// characters and shapes both look at.
    #[test]
    fn plain_emails_are_emails_by_the_crates_check() {
        let mut rng = 0x5851_f42d_4c95_7f2du64;
        let mut next = move |n: u64| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng % n
        };
        let atoms = ["a", "Z0", "c3", "first", "_", "+", "-x", "a-", ""];
        let labels = [
            "example", "com", "c3", "a-b", "-a", "a-", "xn--a", "ab--c", "x", "0", "",
        ];
        let odd = [
            ".", "..", "-", "_", "+", "@", "é", " ", "\"", "<", ">", "[", "]", "!", "\\", "(",
        ];
        let (mut plain, mut agreed) = (0, 0);
        for i in 0..40_000 {
            let mut pick = |from: &[&str], n: u64, sep: &str| {
                let n = 1 + next(n);
                (0..n)
                    .map(|_| from[next(from.len() as u64) as usize])
                    .collect::<Vec<_>>()
                    .join(sep)
            };
            let mut s = format!("{}@{}", pick(&atoms, 3, "."), pick(&labels, 4, "."));
            // Now and then something odd anywhere.
            if next(3) == 0 {
                let at = next(s.len() as u64 + 1) as usize;
                if s.is_char_boundary(at) {
                    s.insert_str(at, odd[next(odd.len() as u64) as usize]);
                }
            }
            // Now and then a long part, around the length limits.
            if i % 50 == 0 {
                let long = "a".repeat(55 + next(20) as usize);
                s = match next(3) {
                    0 => format!("{long}@{s}"),
                    1 => format!("{s}.{long}"),
                    _ => format!("{s}{}", format!(".{long}").repeat(1 + next(5) as usize)),
                };
            }
            let builtin = builtin_email(&s);
            if plain_email(&s) {
                plain += 1;
                assert!(builtin, "{s:?} passed the quick check, not the crate's");
            }
            assert_eq!(is_email(&s), builtin, "{s:?}");
            agreed += usize::from(builtin);
        }
        for s in [
            "c1@example.com",
            "first.last+tag@sub-domain.example.co",
            "a_b-c@x1.y2",
        ] {
            assert!(plain_email(s) && builtin_email(s), "{s}");
        }
        assert!(
            plain > 500 && agreed > plain,
            "{plain} plain, {agreed} valid"
        );
    }

    /// The payload attributes noted by the envelope's parse are the ones
    /// a full read of the stored bytes finds.
    #[test]
    fn noted_payload_attributes_match_the_stored_bytes() {
        let limits = crate::event::Limits {
            max_event_bytes: 1 << 20,
        };
        for text in [
            r#"{"specversion":"1.0","id":"1","source":"/s","type":"t","data":{"a":[1,"x"]}}"#,
            r#"{"type":"t","source":"/s","data":null,"datacontenttype":"application/json","dataschema":"/schemas/t/versions/1"}"#,
            r#"{"type":"t","source":"/s","datacontenttype":"text/pla\u0069n","data":"x\"y"}"#,
            r#"{"type":"t","source":"/s","data_base64":"AAEC","dataschema":"/sch\u00e9mas"}"#,
            r#"{"type":"t","source":"/s"}"#,
        ] {
            let ev = crate::event::from_json(text.as_bytes(), "", limits).unwrap();
            assert!(ev.payload.is_some(), "{text}");
            let noted = PayloadView::of(&ev).unwrap();
            let read = PayloadView::parse(ev.bytes()).unwrap();
            assert_eq!(
                noted.data.unwrap_or("null"),
                read.data.unwrap_or("null"),
                "{text}"
            );
            assert_eq!(noted.data_base64, read.data_base64, "{text}");
            assert_eq!(noted.datacontenttype, read.datacontenttype, "{text}");
            assert_eq!(noted.dataschema, read.dataschema, "{text}");
        }
    }

    #[test]
    fn invalid_schemas_and_remote_refs_are_refused() {
        assert!(compile(&json!({"type": "nonsense"})).is_err());
        assert!(compile(&json!({"minimum": "ten"})).is_err());
        assert!(compile(&json!({"$ref": "https://example.com/s.json"})).is_err());
        assert!(compile(&json!({"$schema": "http://json-schema.org/draft-04/schema#"})).is_err());
        assert!(compile(
            &json!({"$schema": "http://json-schema.org/draft-07/schema#", "type": "object"})
        )
        .is_ok());
        assert!(compile(&json!({"$defs": {"a": {"type": "string"}}, "$ref": "#/$defs/a"})).is_ok());
    }

    #[test]
    fn an_older_catalog_never_replaces_a_newer_one() {
        use crate::store::{SchemaType, SchemaVersion};
        let catalog = |generation: u64, deleted: bool| {
            let mut c = SchemaCatalog {
                generation,
                ..Default::default()
            };
            c.types.insert(
                "t".into(),
                SchemaType {
                    ty: "t".into(),
                    versions: vec![SchemaVersion {
                        version: 1,
                        schema: Arc::new(json!({"type": "object"})),
                        created_at: "2026-01-01T00:00:00Z".into(),
                    }],
                    deleted_at: deleted.then(|| "2026-01-02T00:00:00Z".into()),
                },
            );
            c
        };
        let r = Registry::new("");
        r.refresh(&catalog(2, true));
        r.refresh(&catalog(1, false));
        assert_eq!(
            r.active_types(),
            0,
            "generation 1 arrived late and is ignored"
        );
        r.refresh(&catalog(3, false));
        assert_eq!(r.active_types(), 1);
    }

    #[test]
    fn json_media_types_are_told_apart_in_any_case() {
        for ct in [
            "application/json",
            "Application/JSON; charset=utf-8",
            " text/json ",
            "application/cloudevents+json",
            "APPLICATION/VND.A+JSON;x=1",
        ] {
            assert!(is_json(ct), "{ct}");
        }
        for ct in [
            "",
            "json",
            "+jso",
            "text/plain",
            "application/jsonx",
            "é+json5",
            "é",
        ] {
            assert!(!is_json(ct), "{ct}");
        }
    }

    #[test]
    fn dataschema_is_added_as_the_last_member() {
        let limits = crate::event::Limits {
            max_event_bytes: 1 << 20,
        };
        let text = r#"{"type":"t","source":"/s","data":{"a":1}}"#;
        let mut ev = crate::event::from_json(text.as_bytes(), "", limits).unwrap();
        add_dataschema(&mut ev, &dataschema_member("/schemas/t/versions/2"));
        let v: Value = serde_json::from_slice(ev.bytes()).unwrap();
        assert_eq!(v["dataschema"], "/schemas/t/versions/2");
        assert_eq!(v["data"], serde_json::json!({"a": 1}));
        assert!(ev.payload.is_none());
    }

    #[test]
    fn dataschema_names_are_parsed() {
        assert_eq!(version_named("/schemas/a.b/versions/3", "a.b"), Some(3));
        assert_eq!(
            version_named("https://bus.example/schemas/a.b/versions/12", "a.b"),
            Some(12)
        );
        assert_eq!(version_named("/schemas/other/versions/3", "a.b"), None);
        assert_eq!(version_named("/schemas/a.b/versions/0", "a.b"), None);
        assert_eq!(version_named("https://example.com/order.json", "a.b"), None);
        assert_eq!(version_named("/schemas/a%2Fb/versions/1", "a/b"), Some(1));
    }
}
