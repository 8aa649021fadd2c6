//! Guest paths compared lexically: absolute, no `..`, prefixes that end at a
//! component boundary.

/// Why a guest path cannot be checked against a policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// It does not start with `/`.
    #[error("is not absolute")]
    NotAbsolute,
    /// It has a `..` component, which a lexical check cannot resolve.
    #[error("has a `..` component")]
    ParentComponent,
    /// It has a NUL byte.
    #[error("has a NUL byte")]
    Nul,
}

/// `path` without empty and `.` components: `//a/./b/` is `/a/b`.
///
/// # Errors
/// A relative path, a `..` component or a NUL byte.
pub fn normalize(path: &str) -> Result<String, PathError> {
    if !path.starts_with('/') {
        return Err(PathError::NotAbsolute);
    }
    if path.contains('\0') {
        return Err(PathError::Nul);
    }
    let mut normal = String::with_capacity(path.len());
    for component in path.split('/') {
        match component {
            "" | "." => {}
            ".." => return Err(PathError::ParentComponent),
            name => {
                normal.push('/');
                normal.push_str(name);
            }
        }
    }
    if normal.is_empty() {
        normal.push('/');
    }
    Ok(normal)
}

/// Whether the normalized `path` is `prefix` or inside it (both
/// normalized): `/work` holds `/work` and `/work/a`, not `/workshop`.
#[must_use]
pub(crate) fn is_under(path: &str, prefix: &str) -> bool {
    if prefix == "/" {
        return true;
    }
    path.strip_prefix(prefix)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_lexically() {
        assert_eq!(normalize("/").as_deref(), Ok("/"));
        assert_eq!(normalize("//work/./a//b/").as_deref(), Ok("/work/a/b"));
        assert_eq!(normalize("/work/.").as_deref(), Ok("/work"));
        assert_eq!(normalize("work"), Err(PathError::NotAbsolute));
        assert_eq!(normalize(""), Err(PathError::NotAbsolute));
        assert_eq!(normalize("/work/../etc"), Err(PathError::ParentComponent));
        assert_eq!(normalize("/work/.."), Err(PathError::ParentComponent));
        assert_eq!(normalize("/a\0b"), Err(PathError::Nul));
        // A name that only starts with dots is a name.
        assert_eq!(normalize("/a/..b/...").as_deref(), Ok("/a/..b/..."));
    }

    #[test]
    fn prefixes_end_at_a_component() {
        assert!(is_under("/work", "/work"));
        assert!(is_under("/work/a/b", "/work"));
        assert!(!is_under("/workshop", "/work"));
        assert!(!is_under("/wor", "/work"));
        assert!(is_under("/anything", "/"));
        assert!(is_under("/", "/"));
    }
}
