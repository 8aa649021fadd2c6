//! The agent serves PING, STATUS and executions on one thread: in a guest
//! with one vCPU under TCG every hand-off between threads (a futex wake-up
//! and a context switch) costs more than the request's own work, so the
//! request path must not use a second thread.
#![cfg(test)]

use paddock_agent_client::Execute;
use paddock_tests::{AgentProcess, proc_status_kib};

type TestResult = anyhow::Result<()>;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_status_and_exec_are_served_on_one_thread() -> TestResult {
    let agent = AgentProcess::start(&["--log", "warn"])?;
    let client = agent.client().await?;
    for _ in 0..5 {
        client.ping().await?;
        let report = client.status().await?;
        assert!(report.mem_total_bytes > 0);
        let out = client.exec_collect(Execute::shell("echo hi")).await?;
        assert_eq!(out.result.exit_code, Some(0));
        assert_eq!(out.stdout, b"hi\n");
    }
    // A thread started for any of these (a runtime worker, the blocking
    // pool) would still be there: the blocking pool keeps idle threads for
    // 10 s.
    let threads = proc_status_kib(agent.pid(), "Threads").expect("the agent's /proc status");
    assert_eq!(threads, 1, "the agent runs {threads} threads");
    Ok(())
}
