//! Directory trees for the tree-transfer tests: a sample with every kind
//! of entry, a listing to compare two trees by, hostile tar streams, and a
//! recorder of progress reports.

use std::collections::BTreeMap;
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _, symlink};
use std::path::{Path, PathBuf};

use paddock_agent_client::TreeProgress;

/// What one entry of a tree is: its kind (`d`, `f`, `l`), permission bits
/// (0 for a link), mtime in seconds, and content or link target.
pub type Entry = (char, u32, i64, Vec<u8>);

/// Every entry under `root` (not `root` itself), by relative path; links
/// are listed as links, never followed.
///
/// # Errors
/// An I/O error.
pub fn listing(root: &Path) -> anyhow::Result<BTreeMap<PathBuf, Entry>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            let metadata = std::fs::symlink_metadata(&path)?;
            let (kind, mode, body) = if metadata.file_type().is_symlink() {
                let target = std::fs::read_link(&path)?;
                ('l', 0, target.as_os_str().as_bytes().to_vec())
            } else if metadata.is_dir() {
                stack.push(path.clone());
                ('d', metadata.permissions().mode() & 0o7777, Vec::new())
            } else {
                let mode = metadata.permissions().mode() & 0o7777;
                ('f', mode, std::fs::read(&path)?)
            };
            let relative = path.strip_prefix(root)?.to_owned();
            out.insert(relative, (kind, mode, metadata.mtime(), body));
        }
    }
    Ok(out)
}

/// Fills `root` with a tree of every kind a transfer carries: nested
/// directories with their own modes and old mtimes, an empty directory, an
/// executable, a name longer than a tar header holds, a larger file, a
/// symlink inside the tree and one pointing out of it. Returns the number
/// of regular files, directories and symlinks.
///
/// # Errors
/// An I/O error.
pub fn sample_tree(root: &Path) -> anyhow::Result<(u64, u64, u64)> {
    let set_mode = |path: &Path, mode: u32| {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
    };
    let deep = root.join("src/nested/deeper");
    std::fs::create_dir_all(&deep)?;
    std::fs::write(deep.join("leaf.txt"), b"a leaf\n")?;
    set_mode(&deep.join("leaf.txt"), 0o640)?;
    std::fs::write(root.join("src/run.sh"), b"#!/bin/sh\necho ran\n")?;
    set_mode(&root.join("src/run.sh"), 0o755)?;
    let long = format!("{}.dat", "long-name-".repeat(15));
    let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(root.join("src").join(long), &data)?;
    std::fs::create_dir(root.join("empty"))?;
    set_mode(&root.join("empty"), 0o750)?;
    std::fs::create_dir(root.join("private"))?;
    std::fs::write(root.join("private/key"), b"secret")?;
    set_mode(&root.join("private/key"), 0o600)?;
    set_mode(&root.join("private"), 0o700)?;
    symlink("src/nested/deeper/leaf.txt", root.join("inside-link"))?;
    symlink("/etc", root.join("outside-link"))?;
    let old = filetime::FileTime::from_unix_time(1_600_000_000, 0);
    filetime::set_file_mtime(deep.join("leaf.txt"), old)?;
    filetime::set_file_mtime(root.join("empty"), old)?;
    filetime::set_file_mtime(&deep, old)?;
    Ok((4, 5, 2))
}

/// One entry of [`raw_tar`]: path, kind, link target, content.
pub type RawEntry<'a> = (&'a [u8], tar::EntryType, &'a [u8], &'a [u8]);

/// A tar stream of `entries` written as they are, unchecked: how a hostile
/// peer writes one.
#[must_use]
pub fn raw_tar(entries: &[RawEntry<'_>]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, kind, link, data) in entries {
        let mut header = tar::Header::new_gnu();
        let name_len = name.len().min(100);
        header.as_old_mut().name[..name_len].copy_from_slice(&name[..name_len]);
        let link_len = link.len().min(100);
        header.as_old_mut().linkname[..link_len].copy_from_slice(&link[..link_len]);
        header.set_entry_type(*kind);
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(1_700_000_000);
        header.set_cksum();
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out.extend_from_slice(&[0u8; 1024]);
    out
}

/// The hostile entries every receiver must refuse with `unsafe_path`, each
/// a whole stream, with what it tries: they aim at `outside` (an absolute
/// directory).
#[must_use]
pub fn unsafe_streams(outside: &Path) -> Vec<(&'static str, Vec<u8>)> {
    use tar::EntryType::{Directory, Regular, Symlink};
    let out = outside.as_os_str().as_bytes();
    let absolute = outside.join("abs");
    vec![
        (
            "an absolute path",
            raw_tar(&[(absolute.as_os_str().as_bytes(), Regular, b"", b"x")]),
        ),
        (
            "a `..` path",
            raw_tar(&[(b"../escape", Regular, b"", b"x")]),
        ),
        (
            "a `..` inside",
            raw_tar(&[(b"a/../../escape", Regular, b"", b"x")]),
        ),
        (
            "a file through a link the stream made",
            raw_tar(&[
                (b"link", Symlink, out, b""),
                (b"link/passwd", Regular, b"", b"root::0:0::/:/bin/sh\n"),
            ]),
        ),
        (
            "a directory through a link the stream made",
            raw_tar(&[
                (b"dlink", Symlink, out, b""),
                (b"dlink/sub", Directory, b"", b""),
            ]),
        ),
    ]
}

/// Records every progress report of `progress` until its sender is gone.
pub fn record_progress(
    mut progress: tokio::sync::watch::Receiver<TreeProgress>,
) -> tokio::task::JoinHandle<Vec<TreeProgress>> {
    tokio::spawn(async move {
        let mut seen = vec![*progress.borrow_and_update()];
        while progress.changed().await.is_ok() {
            seen.push(*progress.borrow_and_update());
        }
        seen
    })
}

/// Checks that `seen` never goes back and ends at `bytes` and `files`.
///
/// # Errors
/// When it does not.
pub fn assert_progress(seen: &[TreeProgress], bytes: u64, files: u64) -> anyhow::Result<()> {
    anyhow::ensure!(seen.len() >= 2, "no progress reported: {seen:?}");
    for pair in seen.windows(2) {
        anyhow::ensure!(
            pair[1].bytes >= pair[0].bytes && pair[1].files >= pair[0].files,
            "progress went back: {pair:?}"
        );
    }
    let last = seen.last().copied().unwrap_or_default();
    anyhow::ensure!((last.bytes, last.files) == (bytes, files), "{seen:?}");
    Ok(())
}

/// Asserts that the trees under `got` and `want` are the same (see
/// [`listing`]), naming the entries that differ rather than printing both.
///
/// # Errors
/// An I/O error, or the trees differ.
pub fn assert_same_tree(got: &Path, want: &Path) -> anyhow::Result<()> {
    let (got, want) = (listing(got)?, listing(want)?);
    let differ: Vec<_> = got
        .keys()
        .chain(want.keys())
        .filter(|path| got.get(*path) != want.get(*path))
        .map(|path| {
            let show = |entry: Option<&Entry>| {
                entry.map(|(kind, mode, mtime, body)| (*kind, *mode, *mtime, body.len()))
            };
            format!(
                "{}: {:?} != {:?}",
                path.display(),
                show(got.get(path)),
                show(want.get(path))
            )
        })
        .collect();
    anyhow::ensure!(differ.is_empty(), "the trees differ: {differ:#?}");
    Ok(())
}
