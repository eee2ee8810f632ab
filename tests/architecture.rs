//! The structure `ARCHITECTURE.md` promises, checked by reading `src/`
//! (standard library only, no compiler):
//!
//! * no import cycle between the top-level modules of `src/`, nor between
//!   the submodules of `store` (a submodule counts with its children:
//!   `store::writer::repair` is `writer`);
//! * `src/http/` names nothing of `store` outside [`HTTP_MAY_USE`]: the
//!   store interface, its handle, and the snapshot and error types;
//! * `src/jetstream/` (the NATS JetStream backend) names nothing of
//!   `store` outside [`JETSTREAM_MAY_USE`]: the store interface and the
//!   snapshot and error types (no handle, no submodule), and no top-level
//!   module outside [`JETSTREAM_MODULES`];
//! * `src/client/` and `src/transfer/` name no top-level module outside
//!   [`CLIENT_MAY_USE`] (no store, no server: the HTTP API only);
//! * no `Result<_, String>` in `src/`.
//!
//! What counts as a dependency: every path starting with `crate::`,
//! `super::` or `self::` (in `use` items, `use` groups and expressions),
//! and a bare path through a name a `use` item brought in. `#[cfg(test)]`
//! items are left out; comments and string literals are ignored. Items
//! defined in `store/mod.rs` itself (the store's facade) are not a node of
//! the submodule graph; a name `store/mod.rs` re-exports counts as the
//! submodule it comes from.
//!
//! Run it alone with `cargo test --test architecture`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Names `src/http/` may use from `crate::store` (directly under it: no
/// `crate::store::<submodule>::...` path at all).
const HTTP_MAY_USE: &[&str] = &[
    // The interface, and the file store's handle (built into the router
    // state; its own operations serve `/admin`).
    "Store",
    "BoxFuture",
    "StoreHandle",
    // What the interface takes and returns.
    "Filter",
    "Scope",
    "Matcher",
    "PreparedEvent",
    "Outcome",
    "Original",
    "StoredEvent",
    "EventPage",
    "Consumer",
    "ConsumerStart",
    "QueueSpec",
    "SchemaLimits",
    "SchemaType",
    "SchemaCatalog",
    "SchemaVersion",
    // Snapshots.
    "Status",
    "StatsSnapshot",
    "EventCounts",
    "WriterCounters",
    "BackupSummary",
    "BackupInfo",
    "IntegrityState",
    "RetentionStats",
    "ConsumerStats",
    "Finding",
    "RepairOutcome",
    "OTHER_SERIES",
    // Errors.
    "StoreError",
    "WriteRefusal",
    "ConsumerError",
    "SchemaError",
];

/// Names `src/jetstream/` may use from `crate::store`: the interface it
/// implements, what the interface takes and returns, the snapshots and
/// the errors; not the file store's handle nor any store submodule.
const JETSTREAM_MAY_USE: &[&str] = &[
    "Store",
    "BoxFuture",
    "Filter",
    "Scope",
    "Matcher",
    "PreparedEvent",
    "Outcome",
    "Original",
    "StoredEvent",
    "EventPage",
    "Consumer",
    "ConsumerStart",
    "QueueSpec",
    "QueueDelta",
    "QueueLedger",
    // A queue ledger's dead letters (the NATS backend keeps them in KV).
    "DeadLetter",
    "SchemaLimits",
    "SchemaType",
    "SchemaVersion",
    "SchemaCatalog",
    "Status",
    "StatsSnapshot",
    "EventCounts",
    "WriterCounters",
    "BackupSummary",
    "BackupInfo",
    "IntegrityState",
    "RetentionStats",
    "ConsumerStats",
    "StoreError",
    "WriteRefusal",
    "ConsumerError",
    "SchemaError",
];

/// The top-level modules `src/jetstream/` may name: itself and the store
/// (through [`JETSTREAM_MAY_USE`]); no HTTP, no server, no config.
const JETSTREAM_MODULES: &[&str] = &["jetstream", "store"];

/// One source file, its module path and its code with comments, string
/// literals and `#[cfg(test)]` items blanked out (lines kept).
struct Source {
    file: PathBuf,
    module: Vec<String>,
    code: String,
}

/// A path a file names, resolved to an absolute module path.
struct Use {
    path: Vec<String>,
    line: usize,
}

fn src_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rs_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            rs_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

/// `src/store/writer/repair.rs` is `store::writer::repair`; `mod.rs` and
/// `lib.rs` name their directory's module. `main.rs` is the binary (None).
fn module_of(rel: &Path) -> Option<Vec<String>> {
    let mut parts: Vec<String> = rel
        .iter()
        .map(|s| s.to_string_lossy().into_owned())
        .collect();
    let last = parts.pop()?;
    let stem = last.trim_end_matches(".rs");
    match stem {
        "main" if parts.is_empty() => return None,
        "lib" if parts.is_empty() => {}
        "mod" => {}
        _ => parts.push(stem.to_string()),
    }
    Some(parts)
}

/// Blanks comments, string and char literals (newlines kept).
fn strip(text: &str) -> String {
    let c: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let blank = |out: &mut String, ch: char| out.push(if ch == '\n' { '\n' } else { ' ' });
    let mut i = 0;
    while i < c.len() {
        let at = |k: usize| c.get(k).copied().unwrap_or('\0');
        if c[i] == '/' && at(i + 1) == '/' {
            while i < c.len() && c[i] != '\n' {
                i += 1;
                out.push(' ');
            }
        } else if c[i] == '/' && at(i + 1) == '*' {
            let mut depth = 0;
            while i < c.len() {
                if c[i] == '/' && at(i + 1) == '*' {
                    depth += 1;
                    out.push_str("  ");
                    i += 2;
                } else if c[i] == '*' && at(i + 1) == '/' {
                    depth -= 1;
                    out.push_str("  ");
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    blank(&mut out, c[i]);
                    i += 1;
                }
            }
        } else if (c[i] == 'r' || (c[i] == 'b' && at(i + 1) == 'r'))
            && !at(i.wrapping_sub(1)).is_alphanumeric()
            && at(i.wrapping_sub(1)) != '_'
            && {
                let mut k = i + if c[i] == 'b' { 2 } else { 1 };
                while at(k) == '#' {
                    k += 1;
                }
                at(k) == '"'
            }
        {
            // Raw string: r"..", r#".."#, br"..".
            let mut k = i + if c[i] == 'b' { 2 } else { 1 };
            let mut hashes = 0;
            while at(k) == '#' {
                hashes += 1;
                k += 1;
            }
            k += 1;
            loop {
                if k >= c.len() {
                    break;
                }
                if c[k] == '"' && (1..=hashes).all(|h| at(k + h) == '#') {
                    k += 1 + hashes;
                    break;
                }
                k += 1;
            }
            for &ch in &c[i..k.min(c.len())] {
                blank(&mut out, ch);
            }
            i = k;
        } else if c[i] == '"' {
            out.push(' ');
            i += 1;
            while i < c.len() && c[i] != '"' {
                if c[i] == '\\' {
                    blank(&mut out, c[i]);
                    i += 1;
                }
                if i < c.len() {
                    blank(&mut out, c[i]);
                    i += 1;
                }
            }
            out.push(' ');
            i += 1;
        } else if c[i] == '\'' && (at(i + 1) == '\\' || at(i + 2) == '\'') {
            // A char literal (a lifetime has no closing quote).
            let mut k = i + 1;
            if at(k) == '\\' {
                k += 2;
            } else {
                k += 1;
            }
            while k < c.len() && c[k] != '\'' {
                k += 1;
            }
            for _ in i..=k.min(c.len() - 1) {
                out.push(' ');
            }
            i = k + 1;
        } else {
            out.push(c[i]);
            i += 1;
        }
    }
    out
}

/// Blanks every item carrying `#[cfg(test)]`: through its `;`, or through
/// the brace that closes it.
fn strip_test_items(code: &str) -> String {
    let mut b: Vec<u8> = code.as_bytes().to_vec();
    let pat = b"#[cfg(test)]";
    let mut i = 0;
    while i + pat.len() <= b.len() {
        if &b[i..i + pat.len()] != pat {
            i += 1;
            continue;
        }
        let start = i;
        let mut k = i + pat.len();
        let mut depth = 0i32;
        let mut end = b.len();
        while k < b.len() {
            match b[k] {
                b'(' | b'[' => depth += 1,
                b')' | b']' => depth -= 1,
                b';' if depth == 0 => {
                    end = k + 1;
                    break;
                }
                b'{' if depth == 0 => {
                    let mut braces = 0;
                    while k < b.len() {
                        if b[k] == b'{' {
                            braces += 1;
                        } else if b[k] == b'}' {
                            braces -= 1;
                            if braces == 0 {
                                break;
                            }
                        }
                        k += 1;
                    }
                    end = (k + 1).min(b.len());
                    break;
                }
                _ => {}
            }
            k += 1;
        }
        for x in &mut b[start..end] {
            if *x != b'\n' {
                *x = b' ';
            }
        }
        i = end;
    }
    String::from_utf8(b).expect("blanking keeps UTF-8: it replaces ASCII only")
}

fn load() -> Vec<Source> {
    let root = src_dir();
    let mut files = Vec::new();
    rs_files(&root, &mut files);
    let mut out = Vec::new();
    for file in files {
        let rel = file.strip_prefix(&root).unwrap().to_path_buf();
        let Some(module) = module_of(&rel) else {
            continue;
        };
        let text = std::fs::read_to_string(&file).unwrap();
        out.push(Source {
            file: Path::new("src").join(rel),
            module,
            code: strip_test_items(&strip(&text)),
        });
    }
    // A file whose `mod` item is `#[cfg(test)]` is test code: leave it out.
    let test_mods: BTreeSet<Vec<String>> = out
        .iter()
        .flat_map(|s| {
            let text = strip(
                &std::fs::read_to_string(src_dir().join(s.file.strip_prefix("src").unwrap()))
                    .unwrap(),
            );
            test_mod_decls(&text)
                .into_iter()
                .map(|m| {
                    let mut p = s.module.clone();
                    p.push(m);
                    p
                })
                .collect::<Vec<_>>()
        })
        .collect();
    out.retain(|s| !test_mods.iter().any(|t| s.module.starts_with(t)));
    out
}

/// `#[cfg(test)] mod name;` declarations.
fn test_mod_decls(code: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = code;
    while let Some(p) = rest.find("#[cfg(test)]") {
        rest = &rest[p + "#[cfg(test)]".len()..];
        let t: Vec<&str> = rest
            .split(|c: char| c.is_whitespace())
            .filter(|w| !w.is_empty())
            .take(3)
            .collect();
        let (m, name) = match t.as_slice() {
            ["mod", n, ..] => ("mod", *n),
            ["pub", "mod", n] => ("mod", *n),
            _ => ("", ""),
        };
        if m == "mod" && name.ends_with(';') {
            out.push(name.trim_end_matches(';').to_string());
        }
    }
    out
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Colons,
    Open,
    Close,
    Comma,
    Star,
    Other,
}

fn tokens(code: &str) -> Vec<(Tok, usize)> {
    let c: Vec<char> = code.chars().collect();
    let mut out = Vec::new();
    let mut line = 1;
    let mut i = 0;
    while i < c.len() {
        let ch = c[i];
        if ch == '\n' {
            line += 1;
            i += 1;
        } else if ch.is_whitespace() {
            i += 1;
        } else if ch.is_alphabetic() || ch == '_' {
            let s = i;
            while i < c.len() && (c[i].is_alphanumeric() || c[i] == '_') {
                i += 1;
            }
            let word: String = c[s..i].iter().collect();
            let word = word.strip_prefix("r#").map(str::to_string).unwrap_or(word);
            out.push((Tok::Ident(word), line));
        } else if ch == ':' && c.get(i + 1) == Some(&':') {
            out.push((Tok::Colons, line));
            i += 2;
        } else {
            out.push((
                match ch {
                    '{' => Tok::Open,
                    '}' => Tok::Close,
                    ',' => Tok::Comma,
                    '*' => Tok::Star,
                    _ => Tok::Other,
                },
                line,
            ));
            i += 1;
        }
    }
    out
}

/// Parses a path (tree) at `t[i]`: `a::b::{c, d::e as f, *}`. Returns the
/// leaf paths with the name each binds (`as`, else the last segment), and
/// the index after it.
fn parse_tree(
    t: &[(Tok, usize)],
    mut i: usize,
    prefix: Vec<String>,
) -> (Vec<(Vec<String>, String)>, usize) {
    let mut path = prefix;
    let mut out = Vec::new();
    loop {
        match t.get(i).map(|x| &x.0) {
            Some(Tok::Ident(w)) => {
                path.push(w.clone());
                i += 1;
                if t.get(i).map(|x| &x.0) == Some(&Tok::Colons) {
                    i += 1;
                    continue;
                }
                let mut name = w.clone();
                if let (Some(Tok::Ident(a)), Some(Tok::Ident(n))) =
                    (t.get(i).map(|x| &x.0), t.get(i + 1).map(|x| &x.0))
                {
                    if a == "as" {
                        name = n.clone();
                        i += 2;
                    }
                }
                if name == "self" {
                    path.pop();
                    name = path.last().cloned().unwrap_or_default();
                }
                out.push((path, name));
                return (out, i);
            }
            Some(Tok::Star) => {
                out.push((path, String::new()));
                return (out, i + 1);
            }
            Some(Tok::Open) => {
                i += 1;
                loop {
                    match t.get(i).map(|x| &x.0) {
                        Some(Tok::Close) => return (out, i + 1),
                        Some(Tok::Comma) => i += 1,
                        None => return (out, i),
                        _ => {
                            let (mut sub, next) = parse_tree(t, i, path.clone());
                            out.append(&mut sub);
                            if next == i {
                                i += 1;
                            } else {
                                i = next;
                            }
                        }
                    }
                }
            }
            _ => {
                if !path.is_empty() {
                    let name = path.last().cloned().unwrap_or_default();
                    out.push((path, name));
                }
                return (out, i);
            }
        }
    }
}

/// Resolves `crate`/`super`/`self` at the head of `p` against `module`.
fn resolve(module: &[String], p: &[String]) -> Option<Vec<String>> {
    let mut base: Vec<String> = match p.first()?.as_str() {
        "crate" => Vec::new(),
        "self" | "super" => module.to_vec(),
        _ => return None,
    };
    let mut rest = if p[0] == "crate" { &p[1..] } else { p };
    while let Some(h) = rest.first() {
        match h.as_str() {
            "self" => {}
            "super" => {
                base.pop()?;
            }
            _ => break,
        }
        rest = &rest[1..];
    }
    base.extend(rest.iter().cloned());
    Some(base)
}

/// Every path `src` names, resolved to an absolute module path.
fn uses(src: &Source) -> Vec<Use> {
    let t = tokens(&src.code);
    let mut aliases: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut out = Vec::new();
    let mut i = 0;
    // First pass: every `crate::`/`super::`/`self::` path, collecting the
    // names `use` items bind.
    while i < t.len() {
        let start_of_use = matches!(&t[i].0, Tok::Ident(w) if w == "use");
        let head = matches!(
            (&t[i].0, t.get(i + 1).map(|x| &x.0)),
            (Tok::Ident(w), Some(Tok::Colons)) if w == "crate" || w == "super" || w == "self"
        );
        let prev_colons = i > 0 && t[i - 1].0 == Tok::Colons;
        if start_of_use {
            let (leaves, next) = parse_tree(&t, i + 1, Vec::new());
            for (p, name) in leaves {
                if let Some(abs) = resolve(&src.module, &p) {
                    if !name.is_empty() {
                        aliases.insert(name, abs.clone());
                    }
                    out.push(Use {
                        path: abs,
                        line: t[i].1,
                    });
                }
            }
            i = next.max(i + 1);
        } else if head && !prev_colons {
            let line = t[i].1;
            let (leaves, next) = parse_tree(&t, i, Vec::new());
            for (p, _) in leaves {
                if let Some(abs) = resolve(&src.module, &p) {
                    out.push(Use { path: abs, line });
                }
            }
            i = next.max(i + 1);
        } else {
            i += 1;
        }
    }
    // Second pass: bare paths through an imported name (`store::lock(..)`
    // after `use crate::store;`).
    for k in 0..t.len() {
        if let (Tok::Ident(w), Some(Tok::Colons)) = (&t[k].0, t.get(k + 1).map(|x| &x.0)) {
            let prev_colons = k > 0 && t[k - 1].0 == Tok::Colons;
            if prev_colons {
                continue;
            }
            let Some(base) = aliases.get(w) else { continue };
            let (leaves, _) = parse_tree(&t, k + 2, Vec::new());
            for (p, _) in leaves {
                let mut abs = base.clone();
                abs.extend(p);
                out.push(Use {
                    path: abs,
                    line: t[k].1,
                });
            }
        }
    }
    out
}

/// A dependency graph: node -> node -> evidence (`file:line path`).
type Graph = BTreeMap<String, BTreeMap<String, Vec<String>>>;

fn edge(g: &mut Graph, from: &str, to: &str, why: String) {
    if from != to {
        g.entry(from.into())
            .or_default()
            .entry(to.into())
            .or_default()
            .push(why);
    }
}

/// Names `store/mod.rs` re-exports (`pub use handle::StoreHandle`), mapped
/// to the submodule they come from.
fn reexports(sources: &[Source], parent: &[String]) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for s in sources.iter().filter(|s| s.module == parent) {
        let t = tokens(&s.code);
        for i in 0..t.len().saturating_sub(1) {
            let is_pub_use = matches!((&t[i].0, &t[i + 1].0), (Tok::Ident(a), Tok::Ident(b)) if a == "pub" && b == "use");
            if !is_pub_use {
                continue;
            }
            let (leaves, _) = parse_tree(&t, i + 2, Vec::new());
            for (p, name) in leaves {
                let p = if p.first().is_some_and(|h| h == "self") {
                    p[1..].to_vec()
                } else {
                    p
                };
                if p.len() >= 2 && !name.is_empty() {
                    out.insert(name, p[0].clone());
                }
            }
        }
    }
    out
}

fn graphs(sources: &[Source]) -> (Graph, Graph) {
    let top: BTreeSet<String> = sources
        .iter()
        .filter_map(|s| s.module.first().cloned())
        .collect();
    let store_children: BTreeSet<String> = sources
        .iter()
        .filter(|s| s.module.len() >= 2 && s.module[0] == "store")
        .map(|s| s.module[1].clone())
        .collect();
    let store_reexports = reexports(sources, &["store".to_string()]);
    let mut top_graph = Graph::new();
    let mut store_graph = Graph::new();
    for s in sources {
        let Some(from_top) = s.module.first() else {
            continue;
        };
        for u in uses(s) {
            let why = format!(
                "{}:{} names {}",
                s.file.display(),
                u.line,
                u.path.join("::")
            );
            if let Some(to_top) = u.path.first().filter(|t| top.contains(*t)) {
                edge(&mut top_graph, from_top, to_top, why.clone());
            }
            if s.module.len() >= 2
                && s.module[0] == "store"
                && u.path.len() >= 2
                && u.path[0] == "store"
            {
                let to = if store_children.contains(&u.path[1]) {
                    Some(u.path[1].clone())
                } else {
                    store_reexports.get(&u.path[1]).cloned()
                };
                if let Some(to) = to {
                    edge(&mut store_graph, &s.module[1], &to, why);
                }
            }
        }
    }
    (top_graph, store_graph)
}

/// The strongly connected components with more than one node (Tarjan).
fn cycles(g: &Graph) -> Vec<Vec<String>> {
    struct T<'a> {
        g: &'a Graph,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on: BTreeSet<&'a str>,
        out: Vec<Vec<String>>,
    }
    fn visit<'a>(t: &mut T<'a>, v: &'a str) {
        let n = t.index.len();
        t.index.insert(v, n);
        t.low.insert(v, n);
        t.stack.push(v);
        t.on.insert(v);
        if let Some(next) = t.g.get(v) {
            for w in next.keys() {
                let w = w.as_str();
                if !t.index.contains_key(w) {
                    visit(t, w);
                    let l = t.low[w].min(t.low[v]);
                    t.low.insert(v, l);
                } else if t.on.contains(w) {
                    let l = t.index[w].min(t.low[v]);
                    t.low.insert(v, l);
                }
            }
        }
        if t.low[v] == t.index[v] {
            let mut comp = Vec::new();
            loop {
                let w = t.stack.pop().unwrap();
                t.on.remove(w);
                comp.push(w.to_string());
                if w == v {
                    break;
                }
            }
            if comp.len() > 1 {
                comp.sort();
                t.out.push(comp);
            }
        }
    }
    let mut t = T {
        g,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on: BTreeSet::new(),
        out: Vec::new(),
    };
    for v in g.keys() {
        if !t.index.contains_key(v.as_str()) {
            visit(&mut t, v);
        }
    }
    t.out
}

/// Describes each cycle: the shortest way round from each component's
/// first node, and the first place each edge on it is made.
fn describe(g: &Graph, comps: &[Vec<String>]) -> String {
    let mut out = String::new();
    for comp in comps {
        let inside: BTreeSet<&str> = comp.iter().map(String::as_str).collect();
        out.push_str(&format!("\n  modules in a cycle: {}\n", comp.join(", ")));
        // Every edge inside the component, with its first evidence.
        for from in comp {
            for (to, why) in g.get(from).into_iter().flatten() {
                if inside.contains(to.as_str()) {
                    out.push_str(&format!(
                        "    {from} -> {to}: {}{}\n",
                        why[0],
                        if why.len() > 1 {
                            format!(" (+{} more)", why.len() - 1)
                        } else {
                            String::new()
                        }
                    ));
                }
            }
        }
        // One concrete cycle through the first node.
        let start = comp[0].as_str();
        let mut prev: BTreeMap<&str, &str> = BTreeMap::new();
        let mut queue = std::collections::VecDeque::from([start]);
        let mut found = None;
        while let Some(v) = queue.pop_front() {
            for to in g.get(v).into_iter().flat_map(|m| m.keys()) {
                let to = to.as_str();
                if !inside.contains(to) {
                    continue;
                }
                if to == start {
                    found = Some(v);
                    break;
                }
                if !prev.contains_key(to) {
                    prev.insert(to, v);
                    queue.push_back(to);
                }
            }
            if found.is_some() {
                break;
            }
        }
        if let Some(mut v) = found {
            let mut path = vec![start];
            let mut back = vec![v];
            while v != start {
                v = prev[v];
                if v != start {
                    back.push(v);
                }
            }
            back.reverse();
            path.extend(back);
            path.push(start);
            out.push_str(&format!("    cycle: {}\n", path.join(" -> ")));
        }
    }
    out
}

#[test]
fn no_cycle_between_top_level_modules() {
    let sources = load();
    let (top, _) = graphs(&sources);
    let found = cycles(&top);
    assert!(
        found.is_empty(),
        "import cycles between the top-level modules of src/ (dependencies must run one way; see ARCHITECTURE.md):{}",
        describe(&top, &found)
    );
}

#[test]
fn no_cycle_between_store_submodules() {
    let sources = load();
    let (_, store) = graphs(&sources);
    let found = cycles(&store);
    assert!(
        found.is_empty(),
        "import cycles between the submodules of store (dependencies must run one way; see ARCHITECTURE.md):{}",
        describe(&store, &found)
    );
}

#[test]
fn http_uses_only_the_store_interface() {
    let sources = load();
    let mut bad = Vec::new();
    for s in sources
        .iter()
        .filter(|s| s.module.first().is_some_and(|m| m == "http"))
    {
        for u in uses(s) {
            if u.path.first().is_none_or(|h| h != "store") {
                continue;
            }
            let ok = match u.path.len() {
                // `use crate::store;`: every `store::X` through it is checked too.
                1 => true,
                2 => HTTP_MAY_USE.contains(&u.path[1].as_str()),
                // `store::Type::Variant` or an associated item of an allowed type.
                _ => {
                    HTTP_MAY_USE.contains(&u.path[1].as_str())
                        && u.path[1].starts_with(char::is_uppercase)
                }
            };
            if !ok {
                bad.push(format!(
                    "  {}:{} names {}",
                    s.file.display(),
                    u.line,
                    u.path.join("::")
                ));
            }
        }
    }
    bad.dedup();
    assert!(
        bad.is_empty(),
        "src/http/ may use from the store only its interface, handle, snapshot and error types \
         (HTTP_MAY_USE in tests/architecture.rs), never a store submodule:\n{}",
        bad.join("\n")
    );
}

#[test]
fn jetstream_uses_only_the_store_interface() {
    let sources = load();
    let mut bad = Vec::new();
    for s in sources
        .iter()
        .filter(|s| s.module.first().is_some_and(|m| m == "jetstream"))
    {
        for u in uses(s) {
            let Some(first) = u.path.first() else {
                continue;
            };
            let top_level = sources
                .iter()
                .any(|o| o.module.len() == 1 && &o.module[0] == first);
            let ok = if first == "store" {
                match u.path.len() {
                    1 => true,
                    2 => JETSTREAM_MAY_USE.contains(&u.path[1].as_str()),
                    _ => {
                        JETSTREAM_MAY_USE.contains(&u.path[1].as_str())
                            && u.path[1].starts_with(char::is_uppercase)
                    }
                }
            } else {
                !top_level || JETSTREAM_MODULES.contains(&first.as_str())
            };
            if !ok {
                bad.push(format!(
                    "  {}:{} names {}",
                    s.file.display(),
                    u.line,
                    u.path.join("::")
                ));
            }
        }
    }
    bad.dedup();
    assert!(
        !sources
            .iter()
            .all(|s| s.module.first().is_none_or(|m| m != "jetstream")),
        "src/jetstream/ not found: the checker would pass on nothing"
    );
    assert!(
        bad.is_empty(),
        "src/jetstream/ may use from the store only its interface, snapshot and error types \
         (JETSTREAM_MAY_USE in tests/architecture.rs), never the file store's handle or a \
         store submodule, and no other top-level module (JETSTREAM_MODULES):\n{}",
        bad.join("\n")
    );
}

/// The client side: top-level modules that speak the HTTP API and must not
/// reach around it. Each may use only the modules listed with it.
const CLIENT_MAY_USE: &[(&str, &[&str])] = &[
    // Files in and out, through a Transport: the event checks, nothing else.
    ("transfer", &["transfer", "event", "progress"]),
    // The HTTP client: the transfer shapes (Transport, Reply), the API only.
    ("client", &["client", "transfer"]),
];

#[test]
fn client_modules_use_only_the_api() {
    let sources = load();
    let mut bad = Vec::new();
    for (module, allowed) in CLIENT_MAY_USE {
        for s in sources
            .iter()
            .filter(|s| s.module.first().is_some_and(|m| m == module))
        {
            for u in uses(s) {
                let Some(first) = u.path.first() else {
                    continue;
                };
                let top_level = sources
                    .iter()
                    .any(|o| o.module.len() == 1 && &o.module[0] == first);
                if top_level && !allowed.contains(&first.as_str()) {
                    bad.push(format!(
                        "  {}:{} names {}",
                        s.file.display(),
                        u.line,
                        u.path.join("::")
                    ));
                }
            }
        }
    }
    bad.dedup();
    assert!(
        bad.is_empty(),
        "src/client/ and src/transfer/ reach a store only through the HTTP API (a \
         Transport): they may not name the store, the server or each other's callers \
         (CLIENT_MAY_USE in tests/architecture.rs):\n{}",
        bad.join("\n")
    );
}

/// True when the `Result<...>` generic list starting at `s` (just after
/// the `<`) has `String` as its second argument.
fn second_arg_is_string(s: &str) -> bool {
    let mut depth = 0;
    let mut comma = None;
    for (k, ch) in s.char_indices() {
        match ch {
            '<' | '(' | '[' => depth += 1,
            '>' | ')' | ']' if depth == 0 => {
                return comma.is_some_and(|c: usize| s[c + 1..k].trim() == "String");
            }
            '>' | ')' | ']' => depth -= 1,
            ',' if depth == 0 => {
                if comma.is_some() {
                    return false;
                }
                comma = Some(k);
            }
            _ => {}
        }
    }
    false
}

#[test]
fn no_result_with_string_errors() {
    let root = src_dir();
    let mut files = Vec::new();
    rs_files(&root, &mut files);
    let mut bad = Vec::new();
    for file in files {
        let code = strip(&std::fs::read_to_string(&file).unwrap());
        for (n, line) in code.lines().enumerate() {
            let mut rest = line;
            while let Some(p) = rest.find("Result<") {
                let before = &rest[..p];
                let word_start = !before.ends_with(|c: char| c.is_alphanumeric() || c == '_');
                rest = &rest[p + "Result<".len()..];
                if word_start && second_arg_is_string(rest) {
                    bad.push(format!(
                        "  {}:{}: {}",
                        file.strip_prefix(root.parent().unwrap()).unwrap().display(),
                        n + 1,
                        line.trim()
                    ));
                }
            }
        }
    }
    assert!(
        bad.is_empty(),
        "Result<_, String> in src/ (errors are typed: carry the path and the io::Error, match by kind):\n{}",
        bad.join("\n")
    );
}

#[test]
fn the_checker_sees_what_it_should() {
    // Guards against a parser that silently finds nothing.
    let module = vec![
        "store".to_string(),
        "writer".to_string(),
        "repair".to_string(),
    ];
    let src = Source {
        file: PathBuf::from("x.rs"),
        module: module.clone(),
        code: strip_test_items(&strip(
            "use super::super::{index::{self, Hit}, lock as l};\n\
             // use crate::http::Nope;\n\
             fn f() { let s = \"crate::alerts::Nope\"; crate::event::now(); l::x(); index::y(); }\n\
             #[cfg(test)]\nmod tests { use crate::http::Test; }\n",
        )),
    };
    let got: Vec<String> = uses(&src).iter().map(|u| u.path.join("::")).collect();
    for want in [
        "store::index",
        "store::index::Hit",
        "store::lock",
        "event::now",
        "store::lock::x",
        "store::index::y",
    ] {
        assert!(got.contains(&want.to_string()), "missing {want} in {got:?}");
    }
    assert!(
        !got.iter()
            .any(|p| p.starts_with("http") || p.starts_with("alerts")),
        "{got:?}"
    );
    assert!(second_arg_is_string("(), String>"));
    assert!(second_arg_is_string("Vec<u8>, String>"));
    assert!(!second_arg_is_string("T>"));
    assert!(!second_arg_is_string("T, StoreError>"));
    assert!(!load().is_empty());
}
