//! `paddock-agent probe` in real guests: the floors' raw channels work end
//! to end (a probe port over virtio-serial, a second vsock port behind the
//! hybrid-vsock multiplexer), move exactly what they are asked to, and a
//! guest without a probe port says so instead of waiting.
#![cfg(test)]

use paddock::ChannelConfig;
use paddock::agent::Execute;
use paddock_tests::probe::{
    AGENT_IN_GUEST, PROBE_VSOCK_PORT, ProbeChannel, ProbeMode, RunningProbe, guest_spawn,
};
use paddock_tests::vm::{TestSandbox, TestSandboxOptions, enabled, hybrid_vsock_backend};

type TestResult = anyhow::Result<()>;

const BULK: u64 = 3 << 20;

async fn probe_round(sandbox: &TestSandbox, channel: &ProbeChannel) -> TestResult {
    let client = sandbox.client();
    let mut echo = RunningProbe::start(client, ProbeMode::Echo, channel).await?;
    // `echo_rtt` checks every echo against what it sent.
    let times = echo.echo_rtt(4096, 2, 20).await?;
    assert_eq!(times.len(), 20);
    let report = echo.finish().await?;
    assert_eq!(report["bytes"], 4096 * 22);

    let mut stream = RunningProbe::start(client, ProbeMode::Stream, channel).await?;
    stream.to_guest(BULK).await?;
    stream.from_guest(BULK + 1).await?;
    let report = stream.finish().await?;
    assert_eq!(report["sunk"], BULK);
    assert_eq!(report["sent"], BULK + 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_echo_and_stream_over_the_probe_port_and_time_spawns() -> TestResult {
    if !enabled("probes_echo_and_stream_over_the_probe_port_and_time_spawns") {
        return Ok(());
    }
    let sandbox = TestSandbox::boot(TestSandboxOptions {
        probe_port: true,
        ..TestSandboxOptions::default()
    })
    .await?;
    let outcome = async {
        let socket = sandbox.probe_socket().expect("a probe port");
        probe_round(&sandbox, &ProbeChannel::Serial(socket)).await?;
        let spawns = guest_spawn(sandbox.client(), "/bin/true", 7).await?;
        assert_eq!(spawns.len(), 7);
        anyhow::Ok(())
    }
    .await;
    sandbox.destroy().await?;
    outcome
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_stream_over_a_second_vsock_port_behind_the_multiplexer() -> TestResult {
    if !enabled("probes_stream_over_a_second_vsock_port_behind_the_multiplexer") {
        return Ok(());
    }
    let sandbox = TestSandbox::boot(TestSandboxOptions {
        channel: ChannelConfig::HybridVsock {
            backend: hybrid_vsock_backend()?,
        },
        ..TestSandboxOptions::default()
    })
    .await?;
    let outcome = probe_round(
        &sandbox,
        &ProbeChannel::HybridVsock {
            socket: sandbox.dir().join("agent.sock"),
            port: PROBE_VSOCK_PORT,
        },
    )
    .await;
    sandbox.destroy().await?;
    outcome
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_without_a_probe_port_refuses_the_probe_at_once() -> TestResult {
    if !enabled("a_guest_without_a_probe_port_refuses_the_probe_at_once") {
        return Ok(());
    }
    let sandbox = TestSandbox::boot(TestSandboxOptions::default()).await?;
    let outcome = async {
        assert_eq!(sandbox.probe_socket(), None);
        let output = sandbox
            .client()
            .exec_collect(Execute::argv([
                AGENT_IN_GUEST,
                "probe",
                "echo",
                "--serial",
                paddock::vm::PROBE_PORT_NAME,
            ]))
            .await?;
        assert_ne!(output.result.exit_code, Some(0));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains(paddock::vm::PROBE_PORT_NAME),
            "stderr names the missing port: {stderr}"
        );
        // A spawn probe of a missing program fails with its name.
        let output = sandbox
            .client()
            .exec_collect(Execute::argv([
                AGENT_IN_GUEST,
                "probe",
                "spawn",
                "/no/such/program",
            ]))
            .await?;
        assert_ne!(output.result.exit_code, Some(0));
        assert!(String::from_utf8_lossy(&output.stderr).contains("/no/such/program"));
        anyhow::Ok(())
    }
    .await;
    sandbox.destroy().await?;
    outcome
}
