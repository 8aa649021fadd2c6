//! Executions through the real agent binary over a Unix socket.
#![cfg(test)]

use std::time::Duration;

use paddock_agent_client::{ClientError, ErrorCode, Execute};
use paddock_tests::{
    AgentProcess, all_gone, proc_status_kib, processes_matching, processes_running,
    start_marked_sleep, unique_marker, wait_until_async,
};

type TestResult = anyhow::Result<()>;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_codes_signals_env_and_cwd() -> TestResult {
    let agent = AgentProcess::start(&[])?;
    let client = agent.client().await?;

    let out = client
        .exec_collect(Execute::shell("echo out; echo err >&2; exit 3"))
        .await?;
    assert_eq!(out.result.exit_code, Some(3));
    assert_eq!(out.result.signal, None);
    assert_eq!(out.stdout, b"out\n");
    assert_eq!(out.stderr, b"err\n");
    assert_eq!((out.result.stdout_bytes, out.result.stderr_bytes), (4, 4));

    let out = client.exec_collect(Execute::argv(["true"])).await?;
    assert_eq!(out.result.exit_code, Some(0));

    let out = client.exec_collect(Execute::shell("kill -KILL $$")).await?;
    assert_eq!((out.result.exit_code, out.result.signal), (None, Some(9)));

    let mut request = Execute::shell("printf '%s:%s' \"$GREETING\" \"$(pwd)\"");
    request.env.insert("GREETING".into(), "hi there".into());
    request.cwd = Some(agent.dir().to_string_lossy().into_owned());
    let out = client.exec_collect(request).await?;
    let expected = format!("hi there:{}", agent.dir().canonicalize()?.display());
    assert_eq!(String::from_utf8_lossy(&out.stdout), expected);

    let mut request = Execute::argv(["/usr/bin/env"]);
    request.clear_env = true;
    request.env.insert("ONLY".into(), "this".into());
    let out = client.exec_collect(request).await?;
    assert_eq!(out.stdout, b"ONLY=this\n");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spawn_failures_are_typed() -> TestResult {
    let agent = AgentProcess::start(&[])?;
    let client = agent.client().await?;
    let err = client
        .exec_collect(Execute::argv(["/nonexistent/paddock-no-such-binary"]))
        .await
        .expect_err("must not spawn");
    assert!(
        matches!(
            err.agent_code(),
            Some(ErrorCode::NotFound | ErrorCode::SpawnFailed)
        ),
        "unexpected error {err:?}"
    );
    assert!(!err.should_reconnect());

    let mut request = Execute::argv(["true"]);
    request.cwd = Some("/nonexistent/paddock-dir".into());
    let err = client.exec_collect(request).await.expect_err("bad cwd");
    assert!(err.agent_code().is_some(), "unexpected error {err:?}");

    let err = client
        .exec(Execute::argv(Vec::<String>::new()))
        .await
        .expect_err("empty argv");
    assert!(matches!(err, ClientError::InvalidRequest(_)));
    // The session is still fine after refused requests.
    client.ping().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_kills_the_whole_process_tree() -> TestResult {
    let agent = AgentProcess::start(&["--kill-grace-ms", "500"])?;
    let client = agent.client().await?;
    let marker = unique_marker();
    let mut request = Execute::shell(format!("sleep 100.{marker} & sleep 100.{marker}"));
    request.timeout_ms = Some(700);
    let mut execution = client.exec(request).await?;
    let mut stdout = execution.take_stdout().expect("stdout");
    assert!(
        wait_until_async(Duration::from_secs(5), || {
            processes_running(&format!("sleep 100.{marker}")).len() == 2
        })
        .await,
        "both sleeps should be running"
    );
    let result = execution.wait().await?;
    assert!(result.timed_out, "{result:?}");
    assert!(result.signal.is_some(), "{result:?}");
    assert_eq!(stdout.read_to_vec().await?, b"");
    assert!(
        all_gone(&marker).await,
        "processes left behind: {:?}",
        processes_matching(&marker)
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leftovers_of_a_finished_execution_are_killed() -> TestResult {
    let agent = AgentProcess::start(&[])?;
    let client = agent.client().await?;
    let marker = unique_marker();
    // The leader exits at once; its background child must not outlive RESULT.
    let out = client
        .exec_collect(Execute::shell(format!(
            "sleep 100.{marker} >/dev/null 2>&1 & echo started"
        )))
        .await?;
    assert_eq!(out.stdout, b"started\n");
    assert_eq!(out.result.exit_code, Some(0));
    assert!(
        all_gone(&marker).await,
        "background process outlived its execution"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signal_and_stop_reach_the_process() -> TestResult {
    let agent = AgentProcess::start(&["--kill-grace-ms", "300"])?;
    let client = agent.client().await?;

    let (execution, _marker) = start_marked_sleep(&client).await?;
    execution.signal(15)?;
    let result = execution.wait().await?;
    assert_eq!(result.signal, Some(15), "{result:?}");
    assert!(!result.stopped && !result.timed_out);

    let marker = unique_marker();
    let execution = client
        .exec(Execute::shell(format!("trap '' TERM; sleep 100.{marker}")))
        .await?;
    assert!(
        wait_until_async(Duration::from_secs(5), || {
            processes_running(&format!("sleep 100.{marker}")).len() == 1
        })
        .await
    );
    execution.stop()?;
    let result = execution.wait().await?;
    assert!(result.stopped, "{result:?}");
    assert!(result.signal.is_some(), "{result:?}");
    assert!(all_gone(&marker).await);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caps_truncate_and_say_so() -> TestResult {
    let agent = AgentProcess::start(&[])?;
    let client = agent.client().await?;
    let mut request = Execute::shell("head -c 100000 /dev/zero; head -c 5000 /dev/zero >&2");
    request.stdout_cap = Some(1000);
    request.stderr_cap = Some(5000);
    let out = client.exec_collect(request).await?;
    assert_eq!(out.stdout.len(), 1000);
    assert!(out.result.stdout_truncated);
    assert_eq!(out.result.stdout_bytes, 100_000);
    assert_eq!(out.stderr.len(), 5000);
    assert!(
        !out.result.stderr_truncated,
        "exactly at the cap is not truncated"
    );
    assert_eq!(out.result.exit_code, Some(0));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stdin_round_trip() -> TestResult {
    let agent = AgentProcess::start(&[])?;
    let client = agent.client().await?;
    let mut request = Execute::argv(["cat"]);
    request.stdin = true;
    let mut execution = client.exec(request).await?;
    let mut stdin = execution.take_stdin().expect("stdin requested");
    let mut stdout = execution.take_stdout().expect("stdout");
    let input: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    let reader = tokio::spawn(async move { stdout.read_to_vec().await });
    stdin.write_all(&input).await?;
    stdin.close()?;
    let echoed = reader.await??;
    let result = execution.wait().await?;
    assert_eq!(result.exit_code, Some(0));
    assert_eq!(echoed.len(), input.len());
    assert!(echoed == input, "stdin came back altered");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_two_concurrent_executions() -> TestResult {
    let agent = AgentProcess::start(&[])?;
    let client = agent.client().await?;
    let mut tasks = Vec::new();
    for i in 0..32u32 {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let request = Execute::shell(format!(
                "sleep 0.3; echo {i}; head -c {} /dev/zero >&2",
                i * 1000
            ));
            client.exec_collect(request).await
        }));
    }
    for (i, task) in tasks.into_iter().enumerate() {
        let out = task.await??;
        assert_eq!(out.stdout, format!("{i}\n").into_bytes());
        assert_eq!(out.stderr.len(), i * 1000);
        assert_eq!(out.result.exit_code, Some(0));
    }
    assert_eq!(client.status().await?.running_executions, 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_mib_of_output_streams_with_bounded_memory() -> TestResult {
    const TOTAL: u64 = 50 * 1024 * 1024;
    let agent = AgentProcess::start(&[])?;
    let client = agent.client().await?;
    let baseline_kib = proc_status_kib(agent.pid(), "VmRSS").unwrap_or(0);
    let mut execution = client
        .exec(Execute::shell(format!("head -c {TOTAL} /dev/zero")))
        .await?;
    let mut stdout = execution.take_stdout().expect("stdout");
    // Nobody reads for a while: without flow control the agent or the client
    // would now buffer the whole 50 MiB.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let window = u64::from(client.config().window);
    assert!(
        client.buffered_bytes() <= window,
        "client buffered {} bytes with a window of {window}",
        client.buffered_bytes()
    );
    let stalled_kib = proc_status_kib(agent.pid(), "VmRSS").unwrap_or(u64::MAX);
    let mut received = 0u64;
    while let Some(chunk) = stdout.chunk().await? {
        assert!(chunk.iter().all(|&b| b == 0));
        received += chunk.len() as u64;
        assert!(client.buffered_bytes() <= window);
    }
    let result = execution.wait().await?;
    assert_eq!(received, TOTAL);
    assert_eq!(result.stdout_bytes, TOTAL);
    assert!(!result.stdout_truncated);
    let peak_kib = proc_status_kib(agent.pid(), "VmHWM").unwrap_or(u64::MAX);
    assert!(
        stalled_kib < baseline_kib + 8 * 1024,
        "agent grew from {baseline_kib} KiB to {stalled_kib} KiB while output was not read"
    );
    assert!(
        peak_kib < baseline_kib + 16 * 1024,
        "agent peak {peak_kib} KiB, baseline {baseline_kib} KiB"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ending_a_session_ends_its_executions() -> TestResult {
    let agent = AgentProcess::start(&["--kill-grace-ms", "300"])?;
    let client = agent.client().await?;
    let (execution, marker) = start_marked_sleep(&client).await?;
    // The handle stays alive: only the end of the session can stop the process.
    client.close().await;
    let err = execution.wait().await.expect_err("session is gone");
    assert!(err.should_reconnect(), "{err:?}");
    assert!(all_gone(&marker).await, "execution outlived its session");
    // The next call opens a new session on the same client.
    assert_eq!(client.status().await?.running_executions, 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_an_execution_stops_it() -> TestResult {
    let agent = AgentProcess::start(&["--kill-grace-ms", "300"])?;
    let client = agent.client().await?;
    let (execution, marker) = start_marked_sleep(&client).await?;
    drop(execution);
    assert!(all_gone(&marker).await);
    client.ping().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_that_leave_the_group_end_with_the_execution() -> TestResult {
    let agent = AgentProcess::start(&[])?;
    let client = agent.client().await?;
    // The agent contains whole trees where it finds a cgroup v2 hierarchy
    // it may use, as in the guest; the hosts these tests run on have one
    // (here at /sys/fs/cgroup/unified).
    let session = client.session().await.expect("session");
    assert!(
        session
            .capabilities
            .iter()
            .any(|c| c == paddock_proto::capability::CONTAIN_TREE),
        "the agent found no cgroup v2 hierarchy to use on this host: {:?}",
        session.capabilities
    );
    // A new session and process group, keeping the output pipe open (the
    // pause lets `setsid` leave the group before the leader exits).
    let marker = unique_marker();
    let out = client
        .exec_collect(Execute::shell(format!(
            "setsid sleep 100.{marker} & sleep 0.2; echo started"
        )))
        .await?;
    assert_eq!(out.stdout, b"started\n");
    assert!(
        all_gone(&marker).await,
        "`setsid sleep &` outlived its execution: {:?}",
        processes_matching(&marker)
    );

    // A double fork into a new session: the survivor's parent is gone
    // before the leader exits.
    let marker = unique_marker();
    let out = client
        .exec_collect(Execute::shell(format!(
            "( setsid sh -c 'sleep 100.{marker} & exit 0' </dev/null >/dev/null 2>&1 & ); sleep 0.2; echo started"
        )))
        .await?;
    assert_eq!(out.stdout, b"started\n");
    assert_eq!(out.result.exit_code, Some(0));
    assert!(
        all_gone(&marker).await,
        "a double-forked daemon outlived its execution: {:?}",
        processes_matching(&marker)
    );
    Ok(())
}

/// The agent binary steps into an execution's cgroup only for the length of
/// the spawn: the process runs in its own cgroup, and the agent is back in
/// its own one before, during and after the execution.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_execution_is_born_in_its_cgroup_and_the_agent_stays_in_its_own() -> TestResult {
    let agent = AgentProcess::start(&[])?;
    let client = agent.client().await?;
    let agent_cgroup = || std::fs::read_to_string(format!("/proc/{}/cgroup", agent.pid()));
    let before = agent_cgroup()?;
    for _ in 0..3 {
        let execution = client
            .exec(Execute::shell("cat /proc/self/cgroup; sleep 0.5"))
            .await?;
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(
            agent_cgroup()?,
            before,
            "the agent stayed in the execution's cgroup"
        );
        let out = execution.collect().await?;
        let own = String::from_utf8(out.stdout)?;
        let unified = |text: &str| {
            text.lines()
                .find_map(|line| line.strip_prefix("0::"))
                .map(str::to_owned)
        };
        let exec = unified(&own).expect("a cgroup v2 line");
        let home = unified(&before).expect("the agent's cgroup v2 line");
        assert!(
            exec.starts_with(&format!("{}/paddock-", home.trim_end_matches('/'))),
            "the execution runs in {exec}, not below the agent's {home}"
        );
        assert_eq!(agent_cgroup()?, before, "the agent left its own cgroup");
    }
    Ok(())
}
