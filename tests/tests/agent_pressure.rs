//! The real agent under pressure from a raw peer: floods of control frames,
//! many silent connections, and frames pipelined behind requests that end.
#![cfg(test)]

use std::collections::BTreeMap;
use std::io::Write as _;
use std::time::{Duration, Instant};

use paddock_agent_client::ErrorCode;
use paddock_proto::{
    Execute, FileEnd, FilePut, Message, SignalRequest, Stop, StopScope, encode_message,
};
use paddock_tests::{
    AgentProcess, RawPeer, proc_status_kib, processes_running, unique_marker, wait_until,
};

type TestResult = anyhow::Result<()>;

fn rss_kib(agent: &AgentProcess) -> u64 {
    proc_status_kib(agent.pid(), "VmRSS").unwrap_or(u64::MAX)
}

/// Starts `sleep 100.<marker>` as request `id` on `peer` and waits until it
/// runs.
fn start_sleep(peer: &mut RawPeer, id: u64) -> anyhow::Result<String> {
    let marker = unique_marker();
    let argv = ["sleep".to_owned(), format!("100.{marker}")];
    peer.send(id, &Message::Execute(Execute::argv(argv)))?;
    let cmdline = format!("sleep 100.{marker}");
    anyhow::ensure!(
        wait_until(Duration::from_secs(5), || processes_running(&cmdline).len()
            == 1),
        "`{cmdline}` did not start"
    );
    Ok(marker)
}

/// Reads frames until the one `last` accepts; the frames before it.
fn read_until(
    peer: &mut RawPeer,
    mut last: impl FnMut(u64, &Message) -> bool,
) -> anyhow::Result<Vec<(u64, Message)>> {
    let mut frames = Vec::new();
    loop {
        let (id, message) = peer.recv()?;
        let done = last(id, &message);
        frames.push((id, message));
        if done {
            return Ok(frames);
        }
    }
}

#[test]
fn a_signal_flood_is_not_queued_without_bound() -> TestResult {
    let agent = AgentProcess::start(&[])?;
    let mut peer = RawPeer::connect(&agent)?;
    peer.hello()?;
    start_sleep(&mut peer, 7)?;
    let baseline_kib = rss_kib(&agent);

    // SIGWINCH: `sleep` ignores it, so the execution runs on throughout.
    let mut batch = Vec::new();
    let signal = Message::Signal(SignalRequest {
        signal: libc::SIGWINCH,
    });
    for _ in 0..20_000 {
        encode_message(&mut batch, 7, &signal)?;
    }
    // As fast as the socket takes them, for 2 s (at most 2 million frames).
    let started = Instant::now();
    let mut sent = 0u64;
    while started.elapsed() < Duration::from_secs(2) && sent < 2_000_000 {
        peer.stream().write_all(&batch)?;
        sent += 20_000;
    }
    let stop = Message::Stop(Stop {
        scope: StopScope::Execution,
    });
    peer.send(7, &stop)?;
    let frames = read_until(&mut peer, |id, message| {
        id == 7 && matches!(message, Message::ExecResult(_) | Message::Error(_))
    })?;
    assert!(
        matches!(frames.last(), Some((7, Message::ExecResult(result))) if result.stopped),
        "{:?}",
        frames.last()
    );
    let peak_kib = proc_status_kib(agent.pid(), "VmHWM").unwrap_or(u64::MAX);
    eprintln!("{sent} SIGNAL frames: baseline {baseline_kib} KiB, peak {peak_kib} KiB");
    assert!(
        peak_kib < baseline_kib + 16 * 1024,
        "{sent} SIGNAL frames took the agent from {baseline_kib} KiB to {peak_kib} KiB"
    );
    drop(peer);
    // The connection's memory is returned when it closes.
    let mut peer = RawPeer::connect(&agent)?;
    peer.hello()?;
    peer.ping(2)?;
    let after_kib = rss_kib(&agent);
    eprintln!("after the connection closed: {after_kib} KiB");
    assert!(
        after_kib < baseline_kib + 8 * 1024,
        "the agent kept {after_kib} KiB after the flood's connection closed (baseline {baseline_kib} KiB)"
    );
    Ok(())
}

#[test]
fn silent_connections_cost_little() -> TestResult {
    const CONNECTIONS: u64 = 1_000;
    let agent = AgentProcess::start(&["--max-connections", "1100"])?;
    let mut first = RawPeer::connect(&agent)?;
    first.hello()?;
    first.ping(1)?;
    let baseline_kib = rss_kib(&agent);
    let mut silent = Vec::new();
    for _ in 0..CONNECTIONS {
        silent.push(std::os::unix::net::UnixStream::connect(agent.socket())?);
    }
    // Connections are accepted in order: once this one is served, every
    // silent one has been accepted and has started reading.
    let mut last = RawPeer::connect(&agent)?;
    last.hello()?;
    last.ping(2)?;
    std::thread::sleep(Duration::from_millis(500));
    let loaded_kib = rss_kib(&agent);
    let per_connection = loaded_kib.saturating_sub(baseline_kib) * 1024 / CONNECTIONS;
    eprintln!(
        "{CONNECTIONS} silent connections: {baseline_kib} KiB -> {loaded_kib} KiB, {per_connection} bytes each"
    );
    assert!(
        per_connection < 32 * 1024,
        "each silent connection costs {per_connection} bytes ({baseline_kib} KiB -> {loaded_kib} KiB)"
    );
    // They are all served.
    let mut probe = RawPeer::connect_to(agent.socket())?;
    probe.hello()?;
    drop(silent);
    Ok(())
}

#[test]
fn connections_past_the_cap_are_refused_with_an_error() -> TestResult {
    let agent = AgentProcess::start(&["--max-connections", "2"])?;
    let mut first = RawPeer::connect(&agent)?;
    first.hello()?;
    let mut second = RawPeer::connect(&agent)?;
    second.hello()?;

    // A host that sends its HELLO at once still reads the refusal.
    let mut third = RawPeer::connect(&agent)?;
    third.send(1, &Message::Hello(paddock_tests::raw_hello()))?;
    assert_eq!(third.expect_error(ErrorCode::TooManyConnections)?, 0);
    assert!(third.try_recv()?.is_none(), "the refused connection closes");

    // A closed connection frees its place.
    drop(first);
    let mut again = None;
    for _ in 0..100 {
        let mut peer = RawPeer::connect(&agent)?;
        peer.send(1, &Message::Hello(paddock_tests::raw_hello()))?;
        match peer.recv()? {
            (1, Message::HelloAck(_)) => {
                again = Some(peer);
                break;
            }
            (0, Message::Error(report)) if report.code == ErrorCode::TooManyConnections => {
                // The agent may not have seen the first one close yet.
                std::thread::sleep(Duration::from_millis(20));
            }
            other => anyhow::bail!("expected HELLO_ACK or a refusal, got {other:?}"),
        }
    }
    let mut again = again.expect("a place became free");
    again.ping(3)?;
    second.ping(4)?;
    Ok(())
}

/// The frames of `frames`, by request id.
fn frames_by_id(frames: &[(u64, Message)]) -> BTreeMap<u64, Vec<&Message>> {
    let mut by_id: BTreeMap<u64, Vec<&Message>> = BTreeMap::new();
    for (id, message) in frames {
        by_id.entry(*id).or_default().push(message);
    }
    by_id
}

/// The requests of `ids` whose answer has frames other than `expected`
/// before the frame `is_last` accepts, and those with any frame after it.
fn misplaced(
    by_id: &BTreeMap<u64, Vec<&Message>>,
    ids: std::ops::Range<u64>,
    is_last: impl Fn(&Message) -> bool,
    expected: impl Fn(&Message) -> bool,
) -> (Vec<u64>, Vec<u64>) {
    let (mut early, mut late) = (Vec::new(), Vec::new());
    for id in ids {
        let answer = by_id.get(&id).map_or(&[][..], Vec::as_slice);
        let last = answer.iter().position(|m| is_last(m));
        let Some(last) = last else {
            early.push(id);
            continue;
        };
        if !answer[..last].iter().all(|m| expected(m)) {
            early.push(id);
        }
        if last + 1 < answer.len() {
            late.push(id);
        }
    }
    (early, late)
}

#[test]
fn the_last_frame_of_a_failed_put_is_the_last_with_its_id() -> TestResult {
    const PUTS: u64 = 300;
    let agent = AgentProcess::start(&[])?;
    let mut peer = RawPeer::connect(&agent)?;
    peer.hello()?;
    let target = agent.dir().join("missing-directory/file");
    let mut frames = Vec::new();
    for id in 100..100 + PUTS {
        // FILE_DATA pipelined behind a put that fails at once, each frame
        // written on its own so that the agent reads them one by one while
        // the put ends.
        peer.send(
            id,
            &Message::FilePut(FilePut {
                path: target.display().to_string(),
                mode: 0o644,
                create_parents: false,
            }),
        )?;
        for _ in 0..8 {
            peer.send(id, &Message::FileData(vec![7; 1024]))?;
        }
        let end = Message::FileEnd(FileEnd {
            size: 8 * 1024,
            crc32: 0,
        });
        peer.send(id, &end)?;
        frames.extend(read_until(&mut peer, |got, message| {
            got == id && matches!(message, Message::Error(r) if r.code == ErrorCode::NotFound)
        })?);
    }
    // Whatever the agent still says about those requests arrives before this.
    peer.send(u64::MAX, &Message::Ping)?;
    frames.extend(read_until(&mut peer, |id, message| {
        id == u64::MAX && *message == Message::Pong
    })?);
    let by_id = frames_by_id(&frames);
    let is_last = |m: &Message| matches!(m, Message::Error(r) if r.code == ErrorCode::NotFound);
    let (early, late) = misplaced(&by_id, 100..100 + PUTS, is_last, |_| false);
    assert!(
        early.is_empty() && late.is_empty(),
        "of {PUTS} puts, {} had frames before their not_found ERROR ({:?}), {} after it ({:?})",
        early.len(),
        early.first().map(|id| &by_id[id]),
        late.len(),
        late.first().map(|id| &by_id[id]),
    );
    Ok(())
}

#[test]
fn the_result_of_an_execution_with_stdin_is_the_last_with_its_id() -> TestResult {
    const EXECUTIONS: u64 = 300;
    let agent = AgentProcess::start(&[])?;
    let mut peer = RawPeer::connect(&agent)?;
    peer.hello()?;
    let mut frames = Vec::new();
    for id in 100..100 + EXECUTIONS {
        // `true` exits without reading: the stdin behind it arrives for an
        // execution that is ending or has ended.
        let mut execute = Execute::argv(["true"]);
        execute.stdin = true;
        peer.send(id, &Message::Execute(execute))?;
        for _ in 0..16 {
            peer.send(id, &Message::Stdin(vec![7; 1024]))?;
        }
        peer.send(id, &Message::StdinClose)?;
        frames.extend(read_until(&mut peer, |got, message| {
            got == id && matches!(message, Message::ExecResult(_) | Message::Error(_))
        })?);
    }
    peer.send(u64::MAX, &Message::Ping)?;
    frames.extend(read_until(&mut peer, |id, message| {
        id == u64::MAX && *message == Message::Pong
    })?);
    let by_id = frames_by_id(&frames);
    let is_last = |m: &Message| matches!(m, Message::ExecResult(r) if r.exit_code == Some(0));
    let is_credit = |m: &Message| matches!(m, Message::WindowUpdate(_));
    let (early, late) = misplaced(&by_id, 100..100 + EXECUTIONS, is_last, is_credit);
    assert!(
        early.is_empty() && late.is_empty(),
        "of {EXECUTIONS} executions, {} had other frames before their RESULT ({:?}), {} after it ({:?})",
        early.len(),
        early.first().map(|id| &by_id[id]),
        late.len(),
        late.first().map(|id| &by_id[id]),
    );
    Ok(())
}
