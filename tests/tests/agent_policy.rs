//! A request policy enforced by the host client against the real agent
//! (on this host, over a Unix socket, so what the agent did is visible in
//! the host's files): a denied request never reaches the agent, is a typed
//! error naming its rule and a `Denied` event; what passes runs with the
//! policy's limits filled in.
#![cfg(test)]

use std::sync::Arc;
use std::time::Duration;

use paddock_agent_client::{AgentClient, ClientConfig, ClientError, Execute, PolicyGate};
use paddock_events::EventKind;
use paddock_policy::{Policy, Rule};
use paddock_tests::{AgentProcess, EventRecorder, test_config};

type TestResult = anyhow::Result<()>;

/// A policy over the agent's directory `dir`: sh, echo, sleep and cat by
/// name, env `LANG`, work and files under `dir/work`, 10 bytes of output per
/// stream, a 5 s timeout, one execution at once, 1 KiB transfers, SIGTERM
/// only, no status.
fn policy(dir: &std::path::Path) -> anyhow::Result<Policy> {
    let work = dir.join("work");
    std::fs::create_dir_all(&work)?;
    let work = work.display();
    Ok(Policy::from_toml(&format!(
        r#"
schema = 1
name = "test-policy"
signals = ["TERM"]

[exec]
programs = ["echo", "sleep", "cat", "touch"]
env = ["LANG"]
cwd = ["{work}"]
stdin = true
max_timeout_ms = 5000
max_output_bytes = 10
max_concurrent = 1

[put]
paths = ["{work}"]
max_bytes = 1024

[get]
paths = ["{work}"]
max_bytes = 1024
"#
    ))?)
}

fn denied_rule(result: Result<impl std::fmt::Debug, ClientError>) -> Option<Rule> {
    match result {
        Err(ClientError::Denied(denial)) => {
            assert_eq!(&*denial.policy, "test-policy");
            Some(denial.rule)
        }
        other => panic!("not a denial: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denied_requests_never_reach_the_agent() -> TestResult {
    let agent = AgentProcess::start(&[])?;
    let policy = Arc::new(policy(agent.dir())?);
    let (_hub, recorder, events) = EventRecorder::start("policy", 0);
    let config = ClientConfig {
        events,
        gate: Some(Arc::new(PolicyGate::new(policy))),
        ..test_config()
    };
    let client = AgentClient::connect(agent.transport(), config).await?;
    let work = agent.dir().join("work");
    let outside = agent.dir().join("outside");

    // A shell, a program not listed, a variable not listed, a directory
    // outside: each would have made a file; none did.
    let marker = |name: &str| agent.dir().join(name);
    let touch =
        |name: &str| Execute::argv(["touch".to_owned(), marker(name).display().to_string()]);
    let shell = Execute::shell(format!("touch {}", marker("by-shell").display()));
    assert_eq!(denied_rule(client.exec(shell).await), Some(Rule::ExecShell));
    let mut mkdir = Execute::argv(["mkdir", "-p"]);
    if let paddock_proto::Command::Argv(argv) = &mut mkdir.command {
        argv.push(marker("by-mkdir").display().to_string());
    }
    assert_eq!(
        denied_rule(client.exec(mkdir).await),
        Some(Rule::ExecProgram)
    );
    let mut env = touch("by-env");
    env.env.insert("LD_PRELOAD".into(), "/x.so".into());
    assert_eq!(denied_rule(client.exec(env).await), Some(Rule::ExecEnv));
    let mut elsewhere = touch("by-cwd");
    elsewhere.cwd = Some(agent.dir().display().to_string());
    assert_eq!(
        denied_rule(client.exec(elsewhere).await),
        Some(Rule::ExecCwd)
    );
    let mut long = touch("by-timeout");
    long.timeout_ms = Some(60_000);
    assert_eq!(
        denied_rule(client.exec(long).await),
        Some(Rule::ExecTimeout)
    );
    for name in ["by-shell", "by-mkdir", "by-env", "by-cwd", "by-timeout"] {
        assert!(!marker(name).exists(), "{name} reached the agent");
    }

    // What passes runs, in the policy's directory, with its output cap.
    let out = client
        .exec_collect(Execute::argv(["echo", "0123456789abcdefghij"]))
        .await?;
    assert_eq!(out.stdout, b"0123456789");
    assert!(out.result.stdout_truncated, "{:?}", out.result);
    let out = client.exec_collect(touch("allowed")).await?;
    assert_eq!(out.result.exit_code, Some(0), "{out:?}");
    assert!(marker("allowed").exists());

    // One execution at once; a signal not listed is denied, one listed
    // passes; the place is free again once the first ended.
    let mut sleeping = client.exec(Execute::argv(["sleep", "30"])).await?;
    assert_eq!(
        denied_rule(client.exec(touch("second")).await),
        Some(Rule::ExecConcurrency)
    );
    assert_eq!(denied_rule(sleeping.signal(10)), Some(Rule::Signal));
    sleeping.signal(15)?;
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        let _ = sleeping.take_stdout();
        sleeping.wait().await
    })
    .await??;
    assert_eq!(ended.signal, Some(15), "{ended:?}");
    assert!(!marker("second").exists());
    client.exec_collect(touch("third")).await?;
    assert!(marker("third").exists());

    // Files: outside the paths, over the size (known up front, or learnt
    // while a reader is read), none of it is written; within, it is.
    let small = agent.dir().join("small.txt");
    std::fs::write(&small, b"hello")?;
    let big = agent.dir().join("big.bin");
    std::fs::write(&big, vec![7u8; 4096])?;
    let to = |dir: &std::path::Path, name: &str| dir.join(name).display().to_string();
    assert_eq!(
        denied_rule(client.put_file(&small, &to(&outside, "a")).await),
        Some(Rule::PutPath)
    );
    assert_eq!(
        denied_rule(client.put_file(&big, &to(&work, "big")).await),
        Some(Rule::PutSize)
    );
    let mut reader = &vec![7u8; 300_000][..];
    assert_eq!(
        denied_rule(
            client
                .put_reader(&mut reader, &to(&work, "streamed"), 0o644)
                .await
        ),
        Some(Rule::PutSize)
    );
    assert!(!outside.join("a").exists() && !work.join("big").exists());
    // The agent discards an upload the host ended early: nothing under the
    // name, and the session goes on.
    assert!(!work.join("streamed").exists());
    client.put_file(&small, &to(&work, "small")).await?;
    assert_eq!(std::fs::read(work.join("small"))?, b"hello");

    std::fs::write(work.join("large"), vec![1u8; 4096])?;
    let local = agent.dir().join("download");
    assert_eq!(
        denied_rule(client.get_file(&to(&work, "large"), &local).await),
        Some(Rule::GetSize)
    );
    assert!(!local.exists());
    assert_eq!(
        denied_rule(client.get_file(&to(agent.dir(), "small.txt"), &local).await),
        Some(Rule::GetPath)
    );
    client.get_file(&to(&work, "small"), &local).await?;
    assert_eq!(std::fs::read(&local)?, b"hello");
    assert_eq!(denied_rule(client.status().await), Some(Rule::Status));
    assert_eq!(
        denied_rule(client.stop_agent().await),
        Some(Rule::StopAgent)
    );
    client.ping().await?;

    // Every denial was an event naming its request and rule; no denied
    // execution has a start event.
    let denials: Vec<(&'static str, &'static str)> = recorder
        .take()
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::Denied {
                request,
                rule,
                policy,
                ..
            } => {
                assert_eq!(policy, "test-policy");
                Some((*request, *rule))
            }
            _ => None,
        })
        .collect();
    assert_eq!(
        denials,
        [
            ("exec", "exec.shell"),
            ("exec", "exec.program"),
            ("exec", "exec.env"),
            ("exec", "exec.cwd"),
            ("exec", "exec.timeout"),
            ("exec", "exec.concurrency"),
            ("signal", "signal"),
            ("put", "put.path"),
            ("put", "put.size"),
            ("put", "put.size"),
            ("get", "get.size"),
            ("get", "get.path"),
            ("status", "status"),
            ("stop_agent", "stop_agent"),
        ]
    );
    Ok(())
}
