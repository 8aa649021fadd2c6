//! Directory transfers (TREE_PUT / TREE_GET) through the real agent binary
//! over a Unix socket, and against a scripted hostile agent.
#![cfg(test)]

use std::io::{Read as _, Write as _};
use std::path::Path;

use paddock_agent_client::{
    AgentClient, ClientError, ErrorCode, Transport, TreeError, TreeOptions, TreeProgress,
};
use paddock_proto::{
    FileEnd, FrameDecoder, Message, MessageKind, TreePut, capability, decode_message, encode_frame,
    encode_message, read_frame,
};
use paddock_tests::tree::{
    assert_progress, assert_same_tree, listing, raw_tar, record_progress, sample_tree,
    unsafe_streams,
};
use paddock_tests::{AgentProcess, RawPeer, fake_hello_ack, test_config};

type TestResult = anyhow::Result<()>;

fn utf8(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tree_round_trips_both_ways_with_links_kept_and_progress_reported() -> TestResult {
    let agent = AgentProcess::start(&[])?;
    let client = agent.client().await?;
    let local = tempfile::tempdir()?;
    let (files, dirs, symlinks) = sample_tree(local.path())?;

    let (progress, watched) = tokio::sync::watch::channel(TreeProgress::default());
    let recorder = record_progress(watched);
    let options = TreeOptions {
        progress: Some(progress),
        ..TreeOptions::default()
    };
    let remote = agent.dir().join("guest/new/tree");
    let put = client
        .put_tree(local.path(), utf8(&remote), &options)
        .await?;
    drop(options);
    assert_eq!(
        (put.done.files, put.done.dirs, put.done.symlinks),
        (files, dirs, symlinks)
    );
    assert_eq!(put.done.bytes, 7 + 19 + 300_000 + 6);
    assert_progress(&recorder.await?, put.stream_bytes, files)?;
    // In the guest: the same tree, links as links.
    assert_same_tree(&remote, local.path())?;
    assert_eq!(
        std::fs::read_link(remote.join("outside-link"))?,
        Path::new("/etc")
    );

    let (progress, watched) = tokio::sync::watch::channel(TreeProgress::default());
    let recorder = record_progress(watched);
    let options = TreeOptions {
        progress: Some(progress),
        ..TreeOptions::default()
    };
    let back = tempfile::tempdir()?;
    let into = back.path().join("made/by/get");
    let got = client.get_tree(utf8(&remote), &into, &options).await?;
    drop(options);
    assert_eq!(got.done, put.done);
    assert_eq!(got.stream_bytes, put.stream_bytes);
    assert_progress(&recorder.await?, got.stream_bytes, files)?;
    assert_same_tree(&into, local.path())?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn existing_entries_are_kept_unless_overwritten_and_links_never_written_through() -> TestResult
{
    let agent = AgentProcess::start(&[])?;
    let client = agent.client().await?;
    let local = tempfile::tempdir()?;
    std::fs::write(local.path().join("config"), b"new")?;
    let victim = agent.dir().join("victim");
    std::fs::write(&victim, b"untouched")?;
    let remote = agent.dir().join("dest");
    std::fs::create_dir(&remote)?;
    std::os::unix::fs::symlink(&victim, remote.join("config"))?;

    let err = client
        .put_tree(local.path(), utf8(&remote), &TreeOptions::default())
        .await
        .expect_err("an existing entry");
    assert_eq!(err.agent_code(), Some(ErrorCode::InvalidArgument), "{err}");
    let options = TreeOptions {
        overwrite: true,
        ..TreeOptions::default()
    };
    client
        .put_tree(local.path(), utf8(&remote), &options)
        .await?;
    assert_eq!(std::fs::read(&victim)?, b"untouched");
    assert_eq!(std::fs::read(remote.join("config"))?, b"new");
    assert!(
        !std::fs::symlink_metadata(remote.join("config"))?
            .file_type()
            .is_symlink()
    );

    // A root that is a symlink is refused either way.
    std::os::unix::fs::symlink(agent.dir(), agent.dir().join("root-link"))?;
    let link = agent.dir().join("root-link");
    let err = client
        .get_tree(utf8(&link), local.path().join("x"), &TreeOptions::default())
        .await
        .expect_err("a symlinked root");
    assert_eq!(err.agent_code(), Some(ErrorCode::InvalidArgument), "{err}");
    let err = client
        .put_tree(local.path(), utf8(&link), &TreeOptions::default())
        .await
        .expect_err("a symlinked root");
    assert_eq!(err.agent_code(), Some(ErrorCode::InvalidArgument), "{err}");
    Ok(())
}

/// Sends `stream` as a put into `dest` on a raw session and returns the
/// agent's last frame.
fn raw_put(
    peer: &mut RawPeer,
    id: u64,
    dest: &Path,
    stream: &[u8],
    max_bytes: u64,
) -> anyhow::Result<Message> {
    let put = TreePut {
        path: utf8(dest).to_owned(),
        max_bytes,
        overwrite: false,
    };
    peer.send(id, &Message::TreePut(put))?;
    // Small streams: within the agent's initial window.
    for chunk in stream.chunks(16_384) {
        peer.send(id, &Message::FileData(chunk.to_vec()))?;
    }
    let end = FileEnd {
        size: stream.len() as u64,
        crc32: crc32fast::hash(stream),
    };
    peer.send(id, &Message::FileEnd(end))?;
    loop {
        match peer.recv()? {
            (got, Message::WindowUpdate(_)) if got == id => {}
            (got, message) if got == id => return Ok(message),
            other => anyhow::bail!("unexpected {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_refuses_every_unsafe_entry_and_an_oversized_stream() -> TestResult {
    let agent = AgentProcess::start(&[])?;
    let outside = agent.dir().join("outside");
    std::fs::create_dir(&outside)?;
    // A link already in the destination that points out.
    let dest = agent.dir().join("dest");
    std::fs::create_dir(&dest)?;
    std::os::unix::fs::symlink(&outside, dest.join("existing"))?;
    let mut streams = unsafe_streams(&outside);
    streams.push((
        "a file through a link already there",
        raw_tar(&[(b"existing/planted", tar::EntryType::Regular, b"", b"x")]),
    ));
    let mut peer = RawPeer::connect(&agent)?;
    peer.hello()?;
    for (id, (what, stream)) in (2u64..).zip(&streams) {
        match raw_put(&mut peer, id, &dest, stream, 1 << 20)? {
            Message::Error(report) => {
                assert_eq!(report.code, ErrorCode::UnsafePath, "{what}: {report:?}");
                assert!(report.message.contains("Entry `"), "{what}: {report:?}");
            }
            other => panic!("{what}: accepted, {other:?}"),
        }
    }
    assert_eq!(
        std::fs::read_dir(&outside)?.count(),
        0,
        "an entry landed outside the destination"
    );

    // Past max_bytes: `too_large`, whatever the stream holds. (Within the
    // agent's window: this peer does not wait for credit.)
    let stream = raw_tar(&[(b"big", tar::EntryType::Regular, b"", &[7u8; 40_000])]);
    let small = 20_000;
    match raw_put(&mut peer, 100, &agent.dir().join("d2"), &stream, small)? {
        Message::Error(report) => assert_eq!(report.code, ErrorCode::TooLarge, "{report:?}"),
        other => panic!("accepted: {other:?}"),
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn size_limits_hold_both_ways() -> TestResult {
    let agent = AgentProcess::start(&[])?;
    let client = agent.client().await?;
    let local = tempfile::tempdir()?;
    sample_tree(local.path())?;
    let small = TreeOptions {
        max_bytes: 100_000,
        ..TreeOptions::default()
    };
    // A put is stopped on the host, as it packs.
    let remote = agent.dir().join("limited");
    let err = client
        .put_tree(local.path(), utf8(&remote), &small)
        .await
        .expect_err("too large");
    assert!(
        matches!(
            err,
            ClientError::Tree(TreeError::TooLarge { max_bytes: 100_000 })
        ),
        "{err:?}"
    );
    // A get is stopped by the agent, which never cuts a tree short. (The
    // put above was not atomic: what reached the agent stays, so this one
    // goes elsewhere.)
    let remote = agent.dir().join("whole");
    let whole = client
        .put_tree(local.path(), utf8(&remote), &TreeOptions::default())
        .await?;
    assert!(whole.stream_bytes > 100_000);
    let err = client
        .get_tree(utf8(&remote), local.path().join("back"), &small)
        .await
        .expect_err("too large");
    assert_eq!(err.agent_code(), Some(ErrorCode::TooLarge), "{err}");
    // The session is still good.
    client.ping().await?;
    Ok(())
}

/// A fake agent: completes HELLO, then answers the first request with
/// `reply(id)` and keeps the socket open.
fn fake_agent(
    dir: &Path,
    reply: impl FnOnce(u64) -> Vec<u8> + Send + 'static,
) -> anyhow::Result<std::path::PathBuf> {
    let path = dir.join("fake.sock");
    let listener = std::os::unix::net::UnixListener::bind(&path)?;
    std::thread::spawn(move || -> anyhow::Result<()> {
        let (mut stream, _) = listener.accept()?;
        let mut decoder = FrameDecoder::default();
        let hello = read_frame(&mut stream, &mut decoder)?;
        let mut ack = fake_hello_ack("fake-boot");
        if let Message::HelloAck(ack) = &mut ack {
            ack.capabilities.push(capability::TREES.to_owned());
        }
        let mut bytes = Vec::new();
        encode_message(&mut bytes, hello.request_id, &ack)?;
        stream.write_all(&bytes)?;
        let request = read_frame(&mut stream, &mut decoder)?;
        stream.write_all(&reply(request.request_id))?;
        let mut sink = [0u8; 1024];
        while stream.read(&mut sink).map(|n| n > 0).unwrap_or(false) {}
        Ok(())
    });
    Ok(path)
}

/// A TREE_GET answered with `stream` as FILE_DATA and a matching FILE_END.
fn answer_with(stream: Vec<u8>) -> impl FnOnce(u64) -> Vec<u8> + Send + 'static {
    move |id| {
        let mut bytes = Vec::new();
        for chunk in stream.chunks(8192) {
            encode_frame(&mut bytes, MessageKind::FileData, id, chunk).expect("frame");
        }
        let end = FileEnd {
            size: stream.len() as u64,
            crc32: crc32fast::hash(&stream),
        };
        encode_message(&mut bytes, id, &Message::FileEnd(end)).expect("frame");
        bytes
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_host_refuses_every_unsafe_entry_a_hostile_agent_sends() -> TestResult {
    let base = tempfile::tempdir()?;
    let outside = base.path().join("outside");
    std::fs::create_dir(&outside)?;
    let dest = base.path().join("dest");
    std::fs::create_dir(&dest)?;
    std::os::unix::fs::symlink(&outside, dest.join("existing"))?;
    let mut streams = unsafe_streams(&outside);
    streams.push((
        "a file through a link already there",
        raw_tar(&[(b"existing/planted", tar::EntryType::Regular, b"", b"x")]),
    ));
    // A GNU long name past the bound, which the host must not buffer.
    let mut long = raw_tar(&[(
        b"././@LongLink",
        tar::EntryType::GNULongName,
        b"",
        &vec![b'a'; 100_000],
    )]);
    long.truncate(long.len() - 1024);
    long.extend(raw_tar(&[(b"short", tar::EntryType::Regular, b"", b"")]));
    streams.push(("a long name past the bound", long));
    for (index, (what, stream)) in streams.into_iter().enumerate() {
        let sockets = base.path().join(format!("agent-{index}"));
        std::fs::create_dir(&sockets)?;
        let path = fake_agent(&sockets, answer_with(stream))?;
        let client = AgentClient::connect(Transport::Unix { path }, test_config()).await?;
        let err = client
            .get_tree("/anything", &dest, &TreeOptions::default())
            .await
            .expect_err(what);
        assert!(
            matches!(err, ClientError::Tree(TreeError::UnsafePath { .. })),
            "{what}: {err:?}"
        );
    }
    assert_eq!(
        std::fs::read_dir(&outside)?.count(),
        0,
        "an entry landed outside the destination"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_host_holds_a_hostile_agent_to_max_bytes() -> TestResult {
    let base = tempfile::tempdir()?;
    let local = tempfile::tempdir()?;
    sample_tree(local.path())?;
    let mut stream = Vec::new();
    {
        let mut builder = tar::Builder::new(&mut stream);
        builder.follow_symlinks(false);
        builder.append_dir_all(".", local.path())?;
        builder.finish()?;
    }
    let path = fake_agent(base.path(), answer_with(stream))?;
    let client = AgentClient::connect(Transport::Unix { path }, test_config()).await?;
    let options = TreeOptions {
        max_bytes: 50_000,
        ..TreeOptions::default()
    };
    let err = client
        .get_tree("/anything", base.path().join("dest"), &options)
        .await
        .expect_err("too large");
    assert!(
        matches!(
            err,
            ClientError::Tree(TreeError::TooLarge { max_bytes: 50_000 })
        ),
        "{err:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_s_tar_stream_goes_in_and_out_as_it_is() -> TestResult {
    let agent = AgentProcess::start(&[])?;
    let client = agent.client().await?;
    let local = tempfile::tempdir()?;
    let (files, _, symlinks) = sample_tree(local.path())?;
    let mut archive = Vec::new();
    {
        let mut builder = tar::Builder::new(&mut archive);
        builder.follow_symlinks(false);
        builder.append_dir_all(".", local.path())?;
        builder.finish()?;
    }
    let remote = agent.dir().join("from-a-stream");
    let put = client
        .put_tree_reader(
            &mut archive.as_slice(),
            utf8(&remote),
            &TreeOptions::default(),
        )
        .await?;
    assert_eq!((put.done.files, put.done.symlinks), (files, symlinks));
    assert_eq!(put.stream_bytes, archive.len() as u64);
    assert_same_tree(&remote, local.path())?;

    let mut stream = Vec::new();
    let got = client
        .get_tree_writer(utf8(&remote), &mut stream, &TreeOptions::default())
        .await?;
    assert_eq!(got.stream_bytes, stream.len() as u64);
    assert_eq!(got.crc32, crc32fast::hash(&stream));
    let unpacked = tempfile::tempdir()?;
    tar::Archive::new(stream.as_slice()).unpack(unpacked.path())?;
    // Another unpacker keeps its own rules for modes and directory times:
    // the entries, their kinds and their content are what must match.
    let content = |root: &Path| -> anyhow::Result<Vec<(std::path::PathBuf, char, Vec<u8>)>> {
        Ok(listing(root)?
            .into_iter()
            .map(|(path, (kind, _, _, body))| (path, kind, body))
            .collect())
    };
    assert!(
        content(unpacked.path())? == content(local.path())?,
        "the stream is not the tree"
    );

    // The agent judges a caller's stream as any other.
    let outside = agent.dir().join("outside");
    std::fs::create_dir(&outside)?;
    for (what, stream) in unsafe_streams(&outside) {
        let err = client
            .put_tree_reader(
                &mut stream.as_slice(),
                utf8(&remote),
                &TreeOptions::default(),
            )
            .await
            .expect_err(what);
        assert_eq!(
            err.agent_code(),
            Some(ErrorCode::UnsafePath),
            "{what}: {err}"
        );
    }
    assert_eq!(std::fs::read_dir(&outside)?.count(), 0);
    Ok(())
}

/// A gate that records what it is asked and denies a tree whose stream
/// passes `limit`.
#[derive(Debug)]
struct RecordingGate {
    limit: u64,
    kinds: std::sync::Mutex<Vec<&'static str>>,
    sent: std::sync::atomic::AtomicU64,
    received: std::sync::atomic::AtomicU64,
}

impl paddock_agent_client::RequestGate for RecordingGate {
    fn admit(
        &self,
        _source: &paddock_events::Source,
        request: &mut paddock_agent_client::GateRequest<'_>,
    ) -> Result<(), paddock_agent_client::Refusal> {
        use paddock_agent_client::{GateRequest, Size};
        self.kinds
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(request.kind());
        match request {
            GateRequest::PutTree {
                size: Size::AtLeast(n),
                ..
            }
            | GateRequest::GetTree {
                size: Size::AtLeast(n),
                ..
            } if *n > self.limit => Err(paddock_agent_client::Refusal::Denied(
                paddock_agent_client::Denial {
                    policy: "recording".into(),
                    rule: paddock_policy::Rule::PutSize,
                    detail: format!("{n} bytes"),
                },
            )),
            _ => Ok(()),
        }
    }

    fn pace(
        &self,
        _source: &paddock_events::Source,
        flow: paddock_agent_client::Flow,
        bytes: u64,
    ) -> Option<(&'static str, std::time::Duration)> {
        let counter = match flow {
            paddock_agent_client::Flow::Sent => &self.sent,
            paddock_agent_client::Flow::Received => &self.received,
        };
        counter.fetch_add(bytes, std::sync::atomic::Ordering::Relaxed);
        None
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trees_pass_the_request_gate_both_ways() -> TestResult {
    use std::sync::atomic::Ordering;
    let agent = AgentProcess::start(&[])?;
    let gate = std::sync::Arc::new(RecordingGate {
        limit: 200_000,
        kinds: std::sync::Mutex::new(Vec::new()),
        sent: 0.into(),
        received: 0.into(),
    });
    let mut config = test_config();
    config.gate = Some(gate.clone());
    // A window of 256 KiB (not the default), so that the file below is
    // more than half of it and credit goes back within the gate's limit.
    config.window = 256 * 1024;
    let client = AgentClient::connect(
        Transport::Unix {
            path: agent.socket().to_owned(),
        },
        config,
    )
    .await?;
    let local = tempfile::tempdir()?;
    std::fs::create_dir(local.path().join("d"))?;
    // More than half the client's window, so that credit goes back.
    std::fs::write(local.path().join("d/f"), vec![1u8; 180_000])?;
    let remote = agent.dir().join("gated");
    let put = client
        .put_tree(local.path(), utf8(&remote), &TreeOptions::default())
        .await?;
    // What the put sent was paced, byte for byte.
    assert_eq!(gate.sent.load(Ordering::Relaxed), put.stream_bytes);
    let back = tempfile::tempdir()?;
    let got = client
        .get_tree(utf8(&remote), back.path(), &TreeOptions::default())
        .await?;
    // What the get received was paced as its credit went back.
    let received = gate.received.load(Ordering::Relaxed);
    assert!(received > 0 && received <= got.stream_bytes, "{received}");
    let kinds = gate.kinds.lock().expect("kinds").clone();
    assert!(
        kinds.contains(&"tree_put") && kinds.contains(&"tree_get"),
        "{kinds:?}"
    );

    // Past the gate's limit: denied as the stream grows, either way.
    std::fs::write(local.path().join("d/g"), vec![2u8; 150_000])?;
    let err = client
        .put_tree(
            local.path(),
            utf8(&agent.dir().join("big")),
            &TreeOptions::default(),
        )
        .await
        .expect_err("denied");
    assert!(matches!(err, ClientError::Denied(_)), "{err:?}");
    client
        .put_tree_reader(
            &mut {
                let mut archive = Vec::new();
                let mut builder = tar::Builder::new(&mut archive);
                builder.append_dir_all(".", local.path())?;
                builder.finish()?;
                drop(builder);
                std::io::Cursor::new(archive)
            },
            utf8(&remote),
            &TreeOptions {
                overwrite: true,
                ..TreeOptions::default()
            },
        )
        .await
        .expect_err("denied");
    Ok(())
}

/// A fake agent that completes HELLO announcing no capability and sends
/// the kind of every frame it gets after that down `kinds`.
fn agent_without_trees(
    dir: &Path,
) -> anyhow::Result<(std::path::PathBuf, std::sync::mpsc::Receiver<MessageKind>)> {
    let path = dir.join("old-agent.sock");
    let listener = std::os::unix::net::UnixListener::bind(&path)?;
    let (kinds, received) = std::sync::mpsc::channel();
    std::thread::spawn(move || -> anyhow::Result<()> {
        let (mut stream, _) = listener.accept()?;
        let mut decoder = FrameDecoder::default();
        let hello = read_frame(&mut stream, &mut decoder)?;
        let mut bytes = Vec::new();
        encode_message(&mut bytes, hello.request_id, &fake_hello_ack("old"))?;
        stream.write_all(&bytes)?;
        while let Ok(frame) = read_frame(&mut stream, &mut decoder) {
            if let Ok(message) = decode_message(frame) {
                let _ = kinds.send(message.kind());
            }
        }
        Ok(())
    });
    Ok((path, received))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_without_trees_is_sent_no_tree_request() -> TestResult {
    let base = tempfile::tempdir()?;
    let local = tempfile::tempdir()?;
    sample_tree(local.path())?;
    let (path, kinds) = agent_without_trees(base.path())?;
    let config = paddock_agent_client::ClientConfig {
        keepalive_interval: None,
        ..test_config()
    };
    let client = AgentClient::connect(Transport::Unix { path }, config).await?;
    let put = client
        .put_tree(local.path(), "/dest", &TreeOptions::default())
        .await
        .expect_err("no trees");
    let get = client
        .get_tree("/src", base.path().join("dest"), &TreeOptions::default())
        .await
        .expect_err("no trees");
    for err in [put, get] {
        assert!(
            matches!(
                err,
                ClientError::Unsupported {
                    capability: "trees"
                }
            ),
            "{err:?}"
        );
        assert!(!err.is_retryable() && !err.should_reconnect(), "{err:?}");
    }
    // A plain execution after them: the first frame the fake gets after
    // HELLO would have been a tree request, had one been sent.
    let _plain = client
        .exec(paddock_agent_client::Execute::argv(["true"]))
        .await?;
    let first = kinds.recv_timeout(std::time::Duration::from_secs(10))?;
    assert_eq!(first, MessageKind::Execute);
    assert!(!base.path().join("dest").exists());
    Ok(())
}
