//! A terminal in a real guest, reached from a pool's lease: busybox `sh -i`
//! typed at over the agent channel, its window resized, Ctrl-C to its
//! foreground job, its exit status.
#![cfg(test)]

use std::time::Duration;

use paddock::agent::{Execute, Tty};
use paddock::{PoolConfig, VmPoolSpec};
use paddock_tests::terminal::read_until;
use paddock_tests::vm::{enabled, test_paddock};
use paddock_tests::{test_config, unique_marker};

type TestResult = anyhow::Result<()>;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shell_on_a_guest_terminal_reads_lines_resizes_and_survives_ctrl_c() -> TestResult {
    if !enabled("a_shell_on_a_guest_terminal_reads_lines_resizes_and_survives_ctrl_c") {
        return Ok(());
    }
    let paddock = test_paddock().await?;
    let name = format!("tt{}", unique_marker());
    let mut spec = VmPoolSpec::new(&name);
    spec.client = test_config();
    let pool = paddock
        .create_pool(
            spec,
            PoolConfig {
                min_ready: 1,
                max_size: 1,
                acquire_timeout: Duration::from_secs(120),
                ..PoolConfig::default()
            },
        )
        .await?;
    let outcome = async {
        pool.wait_ready(Duration::from_secs(180)).await?;
        let lease = pool.acquire().await?;
        let session = lease.client().session().await;
        assert!(
            session.is_some_and(|s| s.capabilities.iter().any(|c| c == "tty")),
            "the guest's agent does not announce tty"
        );
        let mut shell = Execute::argv(["/bin/sh", "-i"]);
        shell.env.insert("PS1".into(), "guest$ ".into());
        shell.timeout_ms = Some(120_000);
        let mut terminal = lease
            .client()
            .terminal(shell, Tty::new("vt100", 24, 80))
            .await?;
        read_until(&mut terminal, "guest$ ").await?;

        terminal.write(b"echo hi-$((40+2))\n").await?;
        let out = read_until(&mut terminal, "hi-42\r\n").await?;
        assert!(out.contains("echo hi-$((40+2))\r\n"), "no echo in {out:?}");

        terminal.write(b"tty; echo TERM=$TERM\n").await?;
        let out = read_until(&mut terminal, "TERM=vt100\r\n").await?;
        assert!(out.contains("/dev/pts/"), "{out:?}");

        terminal.write(b"stty size\n").await?;
        read_until(&mut terminal, "24 80\r\n").await?;
        terminal.resize(50, 132)?;
        terminal.write(b"stty size\n").await?;
        read_until(&mut terminal, "50 132\r\n").await?;

        // Ctrl-C ends the foreground sleep; the shell reads on, and the
        // sleep is no longer in the guest's process list.
        terminal.write(b"sleep 1000.7\n").await?;
        // Wait until the sleep runs (as the guest sees it) before Ctrl-C.
        let probe = lease
            .client()
            .exec_collect(Execute::shell(
                "for i in $(seq 100); do ps | grep -q '[s]leep 1000' && exit 0; sleep 0.1; done; exit 1",
            ))
            .await?;
        assert_eq!(probe.result.exit_code, Some(0), "the sleep did not start");
        terminal.write(&[0x03]).await?;
        let gone = lease
            .client()
            .exec_collect(Execute::shell(
                "for i in $(seq 100); do ps | grep -q '[s]leep 1000' || exit 0; sleep 0.1; done; exit 1",
            ))
            .await?;
        assert_eq!(gone.result.exit_code, Some(0), "the sleep survived Ctrl-C");
        terminal.write(b"echo alive-$((6*7))\n").await?;
        read_until(&mut terminal, "alive-42\r\n").await?;

        terminal.write(b"exit 7\n").await?;
        while terminal.read().await?.is_some() {}
        let result = terminal.wait().await?;
        assert_eq!((result.exit_code, result.signal), (Some(7), None));
        lease.release();
        anyhow::Ok(())
    }
    .await;
    pool.shutdown().await;
    outcome
}
