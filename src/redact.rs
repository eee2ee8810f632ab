//! Keeping the data directory's absolute path out of what clients see
//! (answers, alerts, webhook posts). Used by `alerts` and `http`; depends
//! on neither.

/// Takes the data directory's absolute path out of text served to clients
/// (answers, alerts, webhook posts): `/srv/bus/segments/x.jsonl` becomes
/// `segments/x.jsonl` and the directory itself `.`. Details are built
/// deep in the store with full paths, which operators want in the log;
/// clients get names relative to the data directory.
#[derive(Debug, Clone, Default)]
pub struct HidePaths {
    /// Absolute spellings of the directory (as given, canonical, and
    /// JSON-escaped), longest first.
    dirs: Vec<String>,
}

impl HidePaths {
    /// Hides `data_dir` (when it is absolute, or resolves to an absolute
    /// path other than `/`).
    pub fn new(data_dir: &std::path::Path) -> Self {
        let mut dirs = Vec::new();
        let canonical = std::fs::canonicalize(data_dir).ok();
        for d in [Some(data_dir.to_path_buf()), canonical]
            .into_iter()
            .flatten()
        {
            let s = d.to_string_lossy().trim_end_matches('/').to_string();
            if !d.is_absolute() || s.is_empty() {
                continue;
            }
            let escaped = serde_json::to_string(&s).unwrap_or_default();
            let escaped = escaped.trim_matches('"').to_string();
            for v in [s, escaped] {
                if !dirs.contains(&v) {
                    dirs.push(v);
                }
            }
        }
        dirs.sort_by_key(|d| std::cmp::Reverse(d.len()));
        HidePaths { dirs }
    }

    /// `text` with every path under the data directory made relative to it.
    pub fn apply<'a>(&self, text: &'a str) -> std::borrow::Cow<'a, str> {
        if !self.dirs.iter().any(|d| text.contains(d.as_str())) {
            return std::borrow::Cow::Borrowed(text);
        }
        let mut out = text.to_string();
        for d in &self.dirs {
            out = out.replace(&format!("{d}/"), "").replace(d.as_str(), ".");
        }
        std::borrow::Cow::Owned(out)
    }
}

#[cfg(test)]
mod tests {
    use super::HidePaths;

    #[test]
    fn paths_under_the_data_directory_become_relative() {
        let dir = tempfile::tempdir().unwrap();
        let hide = HidePaths::new(dir.path());
        let d = dir.path().display();
        assert_eq!(
            hide.apply(&format!(
                "rewrite {d}/segments/0001.jsonl: denied; low on {d}"
            )),
            "rewrite segments/0001.jsonl: denied; low on ."
        );
        assert_eq!(hide.apply("nothing to hide"), "nothing to hide");
        // A relative directory is not an absolute path: nothing is hidden
        // (and `data` in other text is left alone).
        let rel = HidePaths::new(std::path::Path::new("no-such-relative-dir"));
        assert_eq!(rel.apply("data"), "data");
    }
}
