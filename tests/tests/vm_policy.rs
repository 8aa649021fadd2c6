//! A pool held to the shipped `read-only` policy, on real VMs: a lease's
//! allowed requests run, its denied ones are typed errors, events, audit
//! records (stage `denied`) and metrics, and never reach the guest; the
//! pool's own requests (its rewarm `true`, its checks) are not held to the
//! policy, so resets go on; a policy set while the pool serves applies to
//! the next request.
#![cfg(test)]

use std::sync::Arc;
use std::time::Duration;

use paddock::agent::{ClientError, Execute};
use paddock::observe::Observability;
use paddock::observe::audit::{AuditConfig, AuditOptions, verify};
use paddock::policy::{Policy, Rule};
use paddock::{Paddock, PoolConfig, VmPoolSpec};
use paddock_tests::vm::{enabled, test_paddock};
use paddock_tests::{repo_root, test_config, unique_marker};

type TestResult = anyhow::Result<()>;

fn rule_of<T: std::fmt::Debug>(result: Result<T, ClientError>) -> anyhow::Result<Rule> {
    match result {
        Err(ClientError::Denied(denial)) => Ok(denial.rule),
        other => anyhow::bail!("not a denial: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_pool_runs_what_its_policy_allows_and_nothing_else() -> TestResult {
    if !enabled("a_read_only_pool_runs_what_its_policy_allows_and_nothing_else") {
        return Ok(());
    }
    let policy = Arc::new(Policy::load(repo_root().join("policies/read-only.toml"))?);
    let audit = tempfile::tempdir()?;
    let registry = prometheus::Registry::new();
    let observability = Observability::new(&registry)?.with_audit(
        audit.path(),
        AuditConfig::default(),
        AuditOptions::default(),
    )?;
    let base = test_paddock().await?;
    let paddock = Paddock::connect(base.config().clone().observe(&observability)).await?;
    let name = format!("po{}", unique_marker());
    let mut spec = VmPoolSpec::new(&name);
    spec.client = test_config();
    // The pool's rewarm runs `true`, which the policy does not allow.
    assert_eq!(spec.rewarm, ["true"]);
    let pool = paddock
        .create_pool(
            spec,
            PoolConfig {
                min_ready: 1,
                max_size: 1,
                acquire_timeout: Duration::from_secs(120),
                policy: Some(policy),
                ..PoolConfig::default()
            },
        )
        .await?;
    pool.wait_ready(Duration::from_secs(180)).await?;
    assert_eq!(
        pool.policy().map(|p| p.name().to_owned()).as_deref(),
        Some("read-only")
    );

    for round in 0..2 {
        let lease = pool.acquire().await?;
        let client = lease.client();
        let listed = client.exec_collect(Execute::argv(["ls", "/"])).await?;
        assert_eq!(
            listed.result.exit_code,
            Some(0),
            "round {round}: {listed:?}"
        );
        assert!(String::from_utf8_lossy(&listed.stdout).contains("proc"));
        // Filled in by the policy: its output cap and working directory.
        let status = client
            .exec_collect(Execute::argv(["cat", "/proc/self/status"]))
            .await?;
        assert_eq!(status.result.exit_code, Some(0), "{status:?}");

        let touch = Execute::argv(["touch", "/tmp/denied"]);
        assert_eq!(rule_of(client.exec(touch).await)?, Rule::ExecProgram);
        let shell = Execute::shell("echo pwned > /tmp/denied");
        assert_eq!(rule_of(client.exec(shell).await)?, Rule::ExecShell);
        let busybox = Execute::argv(["/bin/busybox", "rm", "-rf", "/tmp"]);
        assert_eq!(rule_of(client.exec(busybox).await)?, Rule::ExecShell);
        let mut reader = &b"data"[..];
        assert_eq!(
            rule_of(client.put_reader(&mut reader, "/tmp/denied", 0o644).await)?,
            Rule::Put
        );
        // Nothing of it reached the guest.
        let check = client
            .exec_collect(Execute::argv(["ls", "/tmp/denied"]))
            .await?;
        assert_ne!(check.result.exit_code, Some(0), "{check:?}");
        let mut hostname = Vec::new();
        client.get_writer("/etc/hostname", &mut hostname).await?;
        lease.release();
    }
    let stats = pool.stats();
    assert_eq!(stats.failed_resets, 0, "{stats:?}");

    // Another policy while the pool serves: the next lease is held to it.
    pool.set_policy(Some(Arc::new(Policy::deny_all())));
    let lease = pool.acquire().await?;
    assert_eq!(
        rule_of(lease.client().exec(Execute::argv(["ls"])).await)?,
        Rule::Exec
    );
    lease.release();
    pool.set_policy(None);
    let lease = pool.acquire().await?;
    let touched = lease
        .client()
        .exec_collect(Execute::argv(["touch", "/tmp/now-allowed"]))
        .await?;
    assert_eq!(touched.result.exit_code, Some(0), "{touched:?}");
    lease.release();

    let text = observability.render()?;
    for (rule, count) in [
        ("exec.program", 2),
        ("exec.shell", 4),
        ("put", 2),
        ("exec", 1),
    ] {
        let series =
            format!("paddock_policy_denials_total{{pool=\"{name}\",rule=\"{rule}\"}} {count}");
        assert!(text.contains(&series), "missing {series}");
    }
    pool.close().await?;
    observability.close()?;
    let report = verify(audit.path())?;
    assert!(report.is_intact(), "{report}");
    let log = std::fs::read_dir(audit.path())?
        .filter_map(Result::ok)
        .map(|entry| std::fs::read_to_string(entry.path()))
        .collect::<Result<String, _>>()?;
    let denied: Vec<&str> = log
        .lines()
        .filter(|line| line.contains("\"stage\":\"denied\""))
        .collect();
    assert_eq!(denied.len(), 9, "{denied:#?}");
    assert!(
        denied.iter().any(|l| l.contains("\"verb\":\"file_put\"")
            && l.contains("\"rule\":\"put\"")
            && l.contains("\"policy\":\"read-only\"")),
        "{denied:#?}"
    );
    Ok(())
}
