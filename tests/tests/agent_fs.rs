//! File system operations through the real agent binary over a Unix
//! socket, on this host, so that what the agent did is visible in the
//! host's files: every operation, every error code it maps, pagination of
//! a directory of a few thousand entries, a recursive removal that does not
//! follow a link out of its tree, the policy gate, and an agent without the
//! `fs` capability.
#![cfg(test)]

use std::os::unix::fs::{PermissionsExt as _, symlink};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use paddock_agent_client::{
    AgentClient, ClientConfig, ClientError, ErrorCode, FileType, FsErrorKind, PolicyGate,
};
use paddock_policy::{Policy, Rule};
use paddock_proto::{
    FrameDecoder, HelloAck, Message, MessageKind, PROTOCOL_VERSION, decode_message, encode_message,
    read_frame, write_frame,
};
use paddock_tests::{AgentProcess, test_config};

type TestResult = anyhow::Result<()>;

fn text(path: &Path) -> String {
    path.to_str().expect("utf-8 path").to_owned()
}

fn code(result: Result<impl std::fmt::Debug, ClientError>) -> ErrorCode {
    match result {
        Err(err) => err
            .agent_code()
            .unwrap_or_else(|| panic!("not an agent error: {err:?}")),
        Ok(value) => panic!("succeeded: {value:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_operation_does_what_it_says() -> TestResult {
    let agent = AgentProcess::start(&[])?;
    let client = agent.client().await?;
    let session = client.session().await.expect("a session");
    assert!(
        session.capabilities.iter().any(|c| c == "fs"),
        "{session:?}"
    );
    let root = agent.dir().join("work");

    // create_dir, create_dir_all, create_dir_with_mode.
    client.create_dir(&text(&root)).await?;
    assert!(root.is_dir());
    client.create_dir_all(&text(&root.join("a/b/c"))).await?;
    assert!(root.join("a/b/c").is_dir());
    client.create_dir_all(&text(&root.join("a/b/c"))).await?;
    client
        .create_dir_with_mode(&text(&root.join("private")), 0o700)
        .await?;
    assert_eq!(
        std::fs::metadata(root.join("private"))?
            .permissions()
            .mode()
            & 0o7777,
        0o700
    );

    // exists, metadata and symlink_metadata.
    std::fs::write(root.join("file.txt"), b"twelve bytes")?;
    symlink("file.txt", root.join("link"))?;
    symlink("nowhere", root.join("dangling"))?;
    assert!(client.exists(&text(&root.join("file.txt"))).await?);
    assert!(!client.exists(&text(&root.join("missing"))).await?);
    assert!(!client.exists(&text(&root.join("dangling"))).await?);
    assert!(!client.exists(&text(&root.join("file.txt/below"))).await?);
    let file = client.metadata(&text(&root.join("file.txt"))).await?;
    let host = std::fs::metadata(root.join("file.txt"))?;
    assert_eq!(file.file_type, FileType::File);
    assert_eq!(file.size, 12);
    assert_eq!(file.mode, host.permissions().mode() & 0o7777);
    let host_mtime_ms = host
        .modified()?
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis();
    assert_eq!(u128::try_from(file.mtime_ms).ok(), Some(host_mtime_ms));
    let followed = client.metadata(&text(&root.join("link"))).await?;
    assert_eq!((followed.file_type, followed.size), (FileType::File, 12));
    let link = client.symlink_metadata(&text(&root.join("link"))).await?;
    assert_eq!(link.file_type, FileType::Symlink);
    assert_eq!(link.size, "file.txt".len() as u64);
    let dir = client.metadata(&text(&root.join("a"))).await?;
    assert_eq!(dir.file_type, FileType::Dir);

    // read_link.
    assert_eq!(
        client.read_link(&text(&root.join("link"))).await?,
        "file.txt"
    );

    // set_permissions.
    client
        .set_permissions(&text(&root.join("file.txt")), 0o640)
        .await?;
    assert_eq!(
        std::fs::metadata(root.join("file.txt"))?
            .permissions()
            .mode()
            & 0o7777,
        0o640
    );

    // rename.
    client
        .rename(
            &text(&root.join("file.txt")),
            &text(&root.join("renamed.txt")),
        )
        .await?;
    assert!(!root.join("file.txt").exists());
    assert_eq!(std::fs::read(root.join("renamed.txt"))?, b"twelve bytes");

    // read_dir: names sorted, types as lstat sees them.
    let entries = client.read_dir(&text(&root)).await?;
    let listed: Vec<(&str, FileType)> = entries
        .iter()
        .map(|e| (e.name.as_str(), e.metadata.file_type))
        .collect();
    assert_eq!(
        listed,
        [
            ("a", FileType::Dir),
            ("dangling", FileType::Symlink),
            ("link", FileType::Symlink),
            ("private", FileType::Dir),
            ("renamed.txt", FileType::File),
        ]
    );

    // remove: a file, a link (not its target), an empty directory.
    client.remove(&text(&root.join("link"))).await?;
    assert!(root.join("renamed.txt").exists());
    assert!(std::fs::symlink_metadata(root.join("link")).is_err());
    client.remove(&text(&root.join("renamed.txt"))).await?;
    assert!(!root.join("renamed.txt").exists());
    client.remove_dir(&text(&root.join("private"))).await?;
    assert!(!root.join("private").exists());
    std::fs::write(root.join("plain"), b"")?;
    client.remove_file(&text(&root.join("plain"))).await?;
    assert!(!root.join("plain").exists());

    // remove_dir_all: a whole tree.
    std::fs::write(root.join("a/b/c/deep"), b"x")?;
    client.remove_dir_all(&text(&root.join("a"))).await?;
    assert!(!root.join("a").exists());
    Ok(())
}

/// A small tmpfs mounted on the agent's directory for the test, unmounted
/// (lazily, should the agent still hold it) when dropped.
struct TinyMount(PathBuf);

impl TinyMount {
    fn new(at: PathBuf) -> anyhow::Result<Self> {
        std::fs::create_dir_all(&at)?;
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=64k,nr_inodes=8", "paddock-test"])
            .arg(&at)
            .status()?;
        anyhow::ensure!(status.success(), "mount tmpfs: {status}");
        Ok(Self(at))
    }
}

impl Drop for TinyMount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_error_code_is_the_errno_s() -> TestResult {
    let agent = AgentProcess::start(&[])?;
    let client = agent.client().await?;
    let root = agent.dir().join("errors");
    std::fs::create_dir_all(root.join("full/inner"))?;
    std::fs::write(root.join("file"), b"x")?;
    symlink("loop", root.join("loop"))?;

    // not_found (ENOENT).
    assert_eq!(
        code(client.metadata(&text(&root.join("missing"))).await),
        ErrorCode::NotFound
    );
    assert_eq!(
        code(client.create_dir(&text(&root.join("no/parent"))).await),
        ErrorCode::NotFound
    );
    // already_exists (EEXIST).
    assert_eq!(
        code(client.create_dir(&text(&root.join("file"))).await),
        ErrorCode::AlreadyExists
    );
    assert_eq!(
        code(client.create_dir_all(&text(&root.join("file"))).await),
        ErrorCode::AlreadyExists
    );
    // not_a_directory (ENOTDIR).
    assert_eq!(
        code(
            client
                .read_dir_page(&text(&root.join("file")), None, None)
                .await
        ),
        ErrorCode::NotADirectory
    );
    assert_eq!(
        code(client.metadata(&text(&root.join("file/below"))).await),
        ErrorCode::NotADirectory
    );
    // is_a_directory (EISDIR): a file renamed over a directory.
    assert_eq!(
        code(
            client
                .rename(&text(&root.join("file")), &text(&root.join("full")))
                .await
        ),
        ErrorCode::IsADirectory
    );
    // The type a removal asks for: a file is no directory, a directory is
    // no file, and both stay.
    assert_eq!(
        code(client.remove_dir(&text(&root.join("file"))).await),
        ErrorCode::NotADirectory
    );
    assert_eq!(
        code(client.remove_file(&text(&root.join("full/inner"))).await),
        ErrorCode::IsADirectory
    );
    assert!(root.join("file").is_file() && root.join("full/inner").is_dir());
    // directory_not_empty (ENOTEMPTY).
    let err = client
        .remove(&text(&root.join("full")))
        .await
        .expect_err("a full directory");
    assert_eq!(err.fs_kind(), Some(FsErrorKind::DirectoryNotEmpty), "{err}");
    assert!(!err.is_retryable());
    assert!(root.join("full/inner").is_dir());
    // permission_denied (EPERM): /proc files' modes cannot be changed, even
    // by root.
    assert_eq!(
        code(client.set_permissions("/proc/1/status", 0o600).await),
        ErrorCode::PermissionDenied
    );
    // invalid_argument: a relative path, a mode out of range, a link to
    // read that is no link (EINVAL).
    assert_eq!(
        code(client.metadata("relative/path").await),
        ErrorCode::InvalidArgument
    );
    assert_eq!(
        code(
            client
                .set_permissions(&text(&root.join("file")), 0o10000)
                .await
        ),
        ErrorCode::InvalidArgument
    );
    assert_eq!(
        code(client.read_link(&text(&root.join("file"))).await),
        ErrorCode::InvalidArgument
    );
    // io: anything else, here a link that points at itself (ELOOP).
    assert_eq!(
        code(client.metadata(&text(&root.join("loop"))).await),
        ErrorCode::Io
    );
    // no_space (ENOSPC): a tmpfs with a handful of inodes.
    let tiny = TinyMount::new(root.join("tiny"))?;
    let mut made = 0;
    let err = loop {
        match client
            .create_dir(&text(&tiny.0.join(format!("d{made}"))))
            .await
        {
            Ok(()) => made += 1,
            Err(err) => break err,
        }
        anyhow::ensure!(made < 100, "a tmpfs of 8 inodes took 100 directories");
    };
    assert_eq!(err.agent_code(), Some(ErrorCode::NoSpace), "{err}");
    assert_eq!(err.fs_kind(), Some(FsErrorKind::NoSpace));
    drop(tiny);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_of_thousands_is_listed_in_stable_bounded_pages() -> TestResult {
    const COUNT: usize = 3000;
    let agent = AgentProcess::start(&[])?;
    let dir = agent.dir().join("many");
    std::fs::create_dir(&dir)?;
    let mut expected: Vec<String> = (0..COUNT)
        .map(|n| format!("entry-{:05}-{}", (n * 7919) % COUNT, "n".repeat(n % 40)))
        .collect();
    for name in &expected {
        std::fs::write(dir.join(name), b"")?;
    }
    expected.sort();

    // Pages of at most `limit`, in order, each starting after the last.
    let client = agent.client().await?;
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let page = client
            .read_dir_page(&text(&dir), cursor.as_deref(), Some(700))
            .await?;
        assert!(page.entries.len() <= 700);
        assert!(!page.entries.is_empty());
        seen.extend(page.entries.into_iter().map(|e| e.name));
        pages += 1;
        match page.next {
            Some(next) => {
                assert_eq!(Some(&next), seen.last());
                cursor = Some(next);
            }
            None => break,
        }
    }
    assert_eq!(pages, COUNT.div_ceil(700));
    assert_eq!(seen, expected);
    // The walk of every page gives the same.
    let all: Vec<String> = client
        .read_dir(&text(&dir))
        .await?
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert_eq!(all, expected);

    // A host that takes only 4 KiB frames gets smaller pages, all of it.
    let small = AgentClient::connect(
        agent.transport(),
        ClientConfig {
            max_payload: 4096,
            ..test_config()
        },
    )
    .await?;
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let page = small
            .read_dir_page(&text(&dir), cursor.as_deref(), Some(4096))
            .await?;
        assert!(page.entries.len() < 100, "{} entries", page.entries.len());
        seen.extend(page.entries.into_iter().map(|e| e.name));
        pages += 1;
        match page.next {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    assert_eq!(seen, expected);
    assert!(pages > COUNT / 100, "{pages} pages");

    // A limit past the maximum is clamped, not refused.
    let page = client
        .read_dir_page(&text(&dir), None, Some(u32::MAX))
        .await?;
    assert_eq!(
        page.entries.len(),
        COUNT.min(paddock_proto::MAX_READ_DIR_LIMIT as usize)
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recursive_remove_never_follows_a_link_out_of_its_tree() -> TestResult {
    let agent = AgentProcess::start(&[])?;
    let client = agent.client().await?;
    let outside = agent.dir().join("outside");
    std::fs::create_dir_all(outside.join("nested"))?;
    std::fs::write(outside.join("precious"), b"keep me")?;
    std::fs::write(outside.join("nested/also"), b"and me")?;
    let tree = agent.dir().join("tree");
    std::fs::create_dir_all(tree.join("a/b"))?;
    std::fs::write(tree.join("a/b/file"), b"x")?;
    symlink(&outside, tree.join("a/to-outside"))?;
    symlink(&outside, tree.join("a/b/to-outside-too"))?;
    symlink(outside.join("precious"), tree.join("to-file"))?;

    // A non-recursive remove of the tree is refused, and removes nothing.
    assert_eq!(
        code(client.remove(&text(&tree)).await),
        ErrorCode::DirectoryNotEmpty
    );
    client.remove_dir_all(&text(&tree)).await?;
    assert!(!tree.exists());
    assert_eq!(std::fs::read(outside.join("precious"))?, b"keep me");
    assert_eq!(std::fs::read(outside.join("nested/also"))?, b"and me");

    // A link given as the top of the tree is removed as a link.
    let top = agent.dir().join("top-link");
    symlink(&outside, &top)?;
    client.remove_dir_all(&text(&top)).await?;
    assert!(std::fs::symlink_metadata(&top).is_err());
    assert!(outside.join("precious").exists());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gate_denies_fs_operations_outside_the_policy() -> TestResult {
    let agent = AgentProcess::start(&[])?;
    let readable = agent.dir().join("readable");
    let writable = agent.dir().join("writable");
    std::fs::create_dir_all(&readable)?;
    std::fs::create_dir_all(&writable)?;
    let policy = Policy::from_toml(&format!(
        "schema = 1\nname = \"fs-test\"\n[fs]\nread_paths = [\"{}\"]\nwrite_paths = [\"{}\"]\n",
        readable.display(),
        writable.display()
    ))?;
    let client = AgentClient::connect(
        agent.transport(),
        ClientConfig {
            gate: Some(Arc::new(PolicyGate::new(Arc::new(policy)))),
            ..test_config()
        },
    )
    .await?;
    let denied = |result: Result<(), ClientError>| match result {
        Err(ClientError::Denied(denial)) => denial.rule,
        other => panic!("not denied: {other:?}"),
    };

    // Reads where readable, writes where writable.
    client.read_dir(&text(&readable)).await?;
    client.read_dir(&text(&writable)).await?;
    client.create_dir(&text(&writable.join("made"))).await?;
    assert!(writable.join("made").is_dir());

    // Writes under a read-only prefix, anything elsewhere, and a rename
    // out of the writable tree: denied, and nothing happened.
    assert_eq!(
        denied(client.create_dir(&text(&readable.join("x"))).await),
        Rule::FsWritePath
    );
    assert!(!readable.join("x").exists());
    assert_eq!(
        denied(client.metadata(&text(agent.dir())).await.map(drop)),
        Rule::FsReadPath
    );
    assert_eq!(
        denied(
            client
                .rename(
                    &text(&writable.join("made")),
                    &text(&readable.join("moved"))
                )
                .await
        ),
        Rule::FsWritePath
    );
    assert!(writable.join("made").is_dir());
    assert_eq!(
        denied(
            client
                .remove_dir_all(&format!("{}/../readable", writable.display()))
                .await
        ),
        Rule::FsWritePath
    );
    assert!(readable.is_dir());

    // A policy without [fs] denies every operation.
    let none = AgentClient::connect(
        agent.transport(),
        ClientConfig {
            gate: Some(Arc::new(PolicyGate::new(Arc::new(Policy::deny_all())))),
            ..test_config()
        },
    )
    .await?;
    assert_eq!(denied(none.exists("/").await.map(drop)), Rule::Fs);
    assert_eq!(
        denied(none.remove(&text(&writable.join("made"))).await),
        Rule::Fs
    );
    assert!(writable.join("made").is_dir());
    Ok(())
}

/// An agent from before FS_REQUEST: it answers HELLO without the `fs`
/// capability and records the kinds of every other frame it gets.
fn old_agent(socket: &Path) -> anyhow::Result<Arc<Mutex<Vec<MessageKind>>>> {
    let listener = std::os::unix::net::UnixListener::bind(socket)?;
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = Arc::clone(&seen);
    std::thread::spawn(move || {
        let Ok((mut stream, _)) = listener.accept() else {
            return;
        };
        let mut decoder = FrameDecoder::new(paddock_proto::DEFAULT_MAX_PAYLOAD);
        while let Ok(frame) = read_frame(&mut stream, &mut decoder) {
            let id = frame.request_id;
            let answer = match decode_message(frame) {
                Ok(Message::Hello(_)) => Message::HelloAck(HelloAck {
                    version: PROTOCOL_VERSION,
                    agent_version: "0.0.1-before-fs".into(),
                    capabilities: vec!["exec".into(), "files".into(), "status".into()],
                    boot_id: "old".into(),
                    session_seq: 1,
                    previous_token: String::new(),
                    uptime_ms: 1,
                    max_payload: paddock_proto::DEFAULT_MAX_PAYLOAD,
                    initial_window: paddock_proto::DEFAULT_WINDOW,
                    clock_step_ms: 0,
                }),
                Ok(Message::Ping) => Message::Pong,
                Ok(other) => {
                    record
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .push(other.kind());
                    continue;
                }
                Err(_) => continue,
            };
            let mut bytes = Vec::new();
            if encode_message(&mut bytes, id, &answer).is_err()
                || write_frame(&mut stream, &bytes).is_err()
            {
                return;
            }
        }
    });
    Ok(seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_without_the_capability_is_never_sent_a_request() -> TestResult {
    let dir = tempfile::tempdir()?;
    let socket = dir.path().join("old-agent.sock");
    let seen = old_agent(&socket)?;
    let client = AgentClient::connect(
        paddock_agent_client::Transport::Unix { path: socket },
        ClientConfig {
            keepalive_interval: None,
            ..test_config()
        },
    )
    .await?;
    let err = client.read_dir("/").await.expect_err("unsupported");
    assert!(
        matches!(err, ClientError::Unsupported { capability: "fs" }),
        "{err:?}"
    );
    assert!(!err.is_retryable());
    let err = client.remove_dir_all("/").await.expect_err("unsupported");
    assert!(matches!(err, ClientError::Unsupported { .. }), "{err:?}");
    // A PING goes through the same connection after them: had a request
    // been sent, the agent would have seen it first.
    client.ping().await?;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let seen = seen
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    assert!(seen.is_empty(), "the old agent got {seen:?}");
    Ok(())
}
