//! Directory transfers: TREE_PUT, TREE_GET and TREE_DONE, and the rules
//! both sides apply to the entries of the tar stream they carry.
//!
//! The tar bytes travel as FILE_DATA and end with FILE_END, as a file's do.
//! What is pure about a tree lives here, so that the agent (unpacking a
//! put) and the host (unpacking a get) judge an entry's path by one rule:
//! [`entry_components`].

use serde::{Deserialize, Serialize};

use super::nullable::or_default;

/// Starts unpacking a tar stream into a guest directory (host -> agent).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TreePut {
    /// Absolute path of the directory to unpack into; made (with its
    /// missing parents) when it does not exist. It must not be a symlink.
    pub path: String,
    /// The most bytes of tar stream (headers and padding included) the
    /// agent takes; more ends the put with `too_large`.
    pub max_bytes: u64,
    /// Replace files and symlinks that already exist at an entry's path
    /// (never writing through them). Without it, such an entry ends the
    /// put with `invalid_argument`. Existing directories are always merged
    /// into.
    #[serde(default, deserialize_with = "or_default")]
    pub overwrite: bool,
}

/// Starts packing a guest directory as a tar stream (host -> agent).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TreeGet {
    /// Absolute path of the directory to pack. It must not be a symlink.
    pub path: String,
    /// The most bytes of tar stream the agent sends; a tree whose stream
    /// would be larger ends with `too_large` instead of being cut.
    pub max_bytes: u64,
}

/// A put was unpacked whole and its stream verified (agent -> host).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct TreeDone {
    /// Regular files written.
    pub files: u64,
    /// Directories made or merged into (the destination itself not counted).
    pub dirs: u64,
    /// Symbolic links made.
    pub symlinks: u64,
    /// Bytes of file content written.
    pub bytes: u64,
}

/// The longest path (or symlink target) of a tree entry, in bytes, either
/// side accepts: a longer one ends the transfer. It bounds the GNU long
/// name and PAX records a receiver buffers.
pub const MAX_TREE_PATH_LEN: usize = 4096;

/// The deepest a tree entry may be, in path components.
pub const MAX_TREE_DEPTH: usize = 256;

/// The most entries a tree may have; a receiver stops past it, and so does
/// a sender.
pub const MAX_TREE_ENTRIES: u64 = 1_000_000;

/// The largest PAX extended header a receiver reads, in bytes.
pub const MAX_TREE_PAX_LEN: u64 = 65_536;

/// Permission bits a tree entry keeps on either side: no set-user-ID,
/// set-group-ID or sticky bit crosses.
pub const TREE_MODE_MASK: u32 = 0o777;

/// Why a tree entry's path is refused: it would land outside the
/// destination, or cannot be judged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EntryPathError {
    /// It starts with `/`.
    #[error("is absolute")]
    Absolute,
    /// It has a `..` component.
    #[error("has a `..` component")]
    Parent,
    /// It has a NUL byte.
    #[error("has a NUL byte")]
    Nul,
    /// It is longer than [`MAX_TREE_PATH_LEN`].
    #[error("is longer than {MAX_TREE_PATH_LEN} bytes")]
    TooLong,
    /// It is deeper than [`MAX_TREE_DEPTH`].
    #[error("is deeper than {MAX_TREE_DEPTH} components")]
    TooDeep,
}

/// The components of a tar entry's path, relative to the destination,
/// without empty and `.` components: `./a//b/` is `["a", "b"]`, and `.`
/// is the destination itself (no components).
///
/// # Errors
/// [`EntryPathError`] for an absolute path, a `..` component, a NUL byte,
/// or a path too long or too deep.
pub fn entry_components(path: &[u8]) -> Result<Vec<&[u8]>, EntryPathError> {
    if path.len() > MAX_TREE_PATH_LEN {
        return Err(EntryPathError::TooLong);
    }
    if path.first() == Some(&b'/') {
        return Err(EntryPathError::Absolute);
    }
    if path.contains(&0) {
        return Err(EntryPathError::Nul);
    }
    let mut components = Vec::new();
    for component in path.split(|&byte| byte == b'/') {
        match component {
            b"" | b"." => {}
            b".." => return Err(EntryPathError::Parent),
            name => components.push(name),
        }
    }
    if components.len() > MAX_TREE_DEPTH {
        return Err(EntryPathError::TooDeep);
    }
    Ok(components)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_paths_stay_inside_the_destination() {
        assert_eq!(entry_components(b"./a//b/"), Ok(vec![&b"a"[..], &b"b"[..]]));
        assert_eq!(entry_components(b"."), Ok(vec![]));
        assert_eq!(entry_components(b"a/.../b").map(|c| c.len()), Ok(3));
        assert_eq!(
            entry_components(b"/etc/passwd"),
            Err(EntryPathError::Absolute)
        );
        assert_eq!(entry_components(b"a/../../b"), Err(EntryPathError::Parent));
        assert_eq!(entry_components(b".."), Err(EntryPathError::Parent));
        assert_eq!(entry_components(b"a\0b"), Err(EntryPathError::Nul));
        let long = vec![b'a'; MAX_TREE_PATH_LEN + 1];
        assert_eq!(entry_components(&long), Err(EntryPathError::TooLong));
        let deep = "a/".repeat(MAX_TREE_DEPTH + 1);
        assert_eq!(
            entry_components(deep.as_bytes()),
            Err(EntryPathError::TooDeep)
        );
    }
}
