//! Sets of glob patterns (`globset`): `*` and `?` never cross a `/`, `**`
//! does, `[abc]` is a class, `\` escapes.

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};

/// Compiled patterns, kept with their sources for messages.
#[derive(Debug, Clone)]
pub(crate) struct Patterns {
    set: GlobSet,
    sources: Vec<String>,
}

impl Patterns {
    /// Compiles `patterns`; the index and error of the first bad one
    /// otherwise.
    pub(crate) fn new(patterns: &[String]) -> Result<Self, (usize, String)> {
        let mut builder = GlobSetBuilder::new();
        for (index, pattern) in patterns.iter().enumerate() {
            let glob = GlobBuilder::new(pattern)
                .literal_separator(true)
                .backslash_escape(true)
                .build()
                .map_err(|err| (index, err.kind().to_string()))?;
            builder.add(glob);
        }
        let set = builder.build().map_err(|err| (0, err.to_string()))?;
        Ok(Self {
            set,
            sources: patterns.to_vec(),
        })
    }

    /// Whether any pattern matches `candidate` whole.
    pub(crate) fn is_match(&self, candidate: &str) -> bool {
        self.set.is_match(candidate)
    }

    /// The patterns, as written.
    pub(crate) fn sources(&self) -> &[String] {
        &self.sources
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn patterns(list: &[&str]) -> Patterns {
        let owned: Vec<String> = list.iter().map(|p| (*p).to_owned()).collect();
        match Patterns::new(&owned) {
            Ok(patterns) => patterns,
            Err((index, err)) => panic!("pattern {index}: {err}"),
        }
    }

    #[test]
    fn a_star_stays_in_its_directory() {
        let set = patterns(&["/usr/bin/*", "/opt/**", "LC_*"]);
        assert!(set.is_match("/usr/bin/python3"));
        assert!(!set.is_match("/usr/bin/x/y"));
        assert!(!set.is_match("/usr/bin"));
        assert!(set.is_match("/opt/a/b/c"));
        assert!(set.is_match("LC_ALL"));
        assert!(!set.is_match("XLC_ALL"));
        assert!(!patterns(&[]).is_match(""));
    }

    #[test]
    fn a_bad_pattern_is_named_by_its_index() {
        let bad = vec!["/ok/*".to_owned(), "/usr/[".to_owned()];
        assert!(matches!(Patterns::new(&bad), Err((1, _))));
    }
}
