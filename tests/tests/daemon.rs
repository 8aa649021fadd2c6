//! The daemon end to end, as an operator and tenants use it: `paddock
//! serve` as its own process on real VMs, driven by the `paddock` command
//! over the Unix socket (the operator) and TCP with tokens (two tenants).
#![cfg(test)]

use std::process::Output;
use std::time::{Duration, Instant};

use paddock_server::auth::token_digest;
use paddock_server::wire::{LeaseList, PoolList, SlotList};
use paddock_tests::daemon::{DaemonProcess, http_get};
use paddock_tests::unique_marker;
use paddock_tests::vm::{POOL_ROOT, enabled, image_manifest_path};

type TestResult = anyhow::Result<()>;

const ACME: &str = "acme-token-for-tests";
const ZED: &str = "zed-token-for-tests";

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn json<T: serde::de::DeserializeOwned>(output: &Output) -> anyhow::Result<T> {
    anyhow::ensure!(output.status.success(), "failed: {}", stderr(output));
    Ok(serde_json::from_slice(&output.stdout)?)
}

#[test]
fn the_daemon_serves_operators_and_tenants_and_drains_to_nothing() -> TestResult {
    if !enabled("the_daemon_serves_operators_and_tenants_and_drains_to_nothing") {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let pool = format!("d{}", unique_marker());
    let other = format!("{pool}-b");
    let audit_dir = dir.path().join("audit");
    let config = write_config(
        dir.path(),
        &format!(
            r#"audit_dir = "{audit}"
drain_grace_s = 5

[[tenant]]
name = "acme"
token_sha256 = "{acme}"

[[tenant]]
name = "zed"
token_sha256 = "{zed}"

[[pool]]
name = "{pool}"
min_ready = 1
max_size = 2
warmup = ["echo warm > /tmp/warm"]
acquire_timeout_ms = 120000

[[pool]]
name = "{other}"
min_ready = 1
max_size = 1
policy = "{read_only}"
"#,
            read_only = paddock_tests::repo_root()
                .join("policies/read-only.toml")
                .display(),
            audit = audit_dir.display(),
            acme = token_digest(ACME),
            zed = token_digest(ZED),
        ),
    )?;
    let daemon = DaemonProcess::start(&config, Duration::from_secs(300))?;

    // The operator sees the pool, and it fills.
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let pools: PoolList = json(&daemon.operator(&["--json", "pools"])?)?;
        let status = pools.pools.iter().find(|p| p.name == pool).cloned();
        anyhow::ensure!(status.is_some(), "{pools:?}");
        if status.is_some_and(|p| p.ready >= 1) {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "the pool never had a ready slot");
        std::thread::sleep(Duration::from_millis(500));
    }
    let table = daemon.operator(&["pools"])?;
    assert!(stdout(&table).starts_with("POOL"), "{}", stdout(&table));

    // `paddock exec` streams the command's output and exits with its status.
    let ran = daemon.operator(&[
        "exec",
        &pool,
        "--",
        "sh",
        "-c",
        "cat /tmp/warm; echo err >&2; exit 3",
    ])?;
    assert_eq!(ran.status.code(), Some(3), "{}", stderr(&ran));
    assert_eq!(stdout(&ran), "warm\n");
    assert!(stderr(&ran).contains("err"), "{}", stderr(&ran));
    let slow = daemon.operator(&["exec", "--timeout", "1", &pool, "--", "sleep", "30"])?;
    assert_eq!(slow.status.code(), Some(124), "a timeout is 124");
    let usage = daemon.operator(&["exec", &pool])?;
    assert_eq!(usage.status.code(), Some(2), "no command is bad usage");

    // A tenant's lease: invisible and unusable to another tenant.
    let acquired = daemon.tenant(ACME, &["acquire", &pool, "--wait", "120"])?;
    assert!(acquired.status.success(), "{}", stderr(&acquired));
    let lease = stdout(&acquired).trim().to_owned();
    assert!(lease.starts_with("l-"), "{lease}");
    let theirs: LeaseList = json(&daemon.tenant(ZED, &["--json", "leases"])?)?;
    assert!(theirs.leases.is_empty(), "{theirs:?}");
    let ours: LeaseList = json(&daemon.tenant(ACME, &["--json", "leases"])?)?;
    assert_eq!(ours.leases.len(), 1);
    let intruder = daemon.tenant(ZED, &["exec", "--lease", &lease, &pool, "--", "true"])?;
    assert_eq!(intruder.status.code(), Some(125));
    assert!(
        stderr(&intruder).contains("lease_not_found"),
        "{}",
        stderr(&intruder)
    );
    let released = daemon.tenant(ZED, &["release", &lease])?;
    assert!(
        stderr(&released).contains("lease_not_found"),
        "{}",
        stderr(&released)
    );

    // Files both ways, checked.
    let local = dir.path().join("up.bin");
    let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(&local, &data)?;
    let remote = format!("{lease}:/tmp/up.bin");
    let up = daemon.tenant(ACME, &["cp", &local.to_string_lossy(), &remote])?;
    assert!(up.status.success(), "{}", stderr(&up));
    let back = dir.path().join("back.bin");
    let down = daemon.tenant(ACME, &["cp", &remote, &back.to_string_lossy()])?;
    assert!(down.status.success(), "{}", stderr(&down));
    assert_eq!(std::fs::read(&back)?, data);
    let missing = daemon.tenant(
        ACME,
        &[
            "cp",
            &format!("{lease}:/no/such/file"),
            &back.to_string_lossy(),
        ],
    )?;
    assert_eq!(missing.status.code(), Some(125));
    assert!(
        stderr(&missing).contains("not_found"),
        "{}",
        stderr(&missing)
    );

    // The operator sees whose lease it is, and resets the slot under it.
    let slots: SlotList = json(&daemon.operator(&["--json", "slots", &pool])?)?;
    let leased = slots
        .slots
        .iter()
        .find(|s| s.lease.as_deref() == Some(lease.as_str()))
        .cloned()
        .ok_or_else(|| anyhow::anyhow!("{slots:?}"))?;
    assert_eq!(leased.tenant.as_deref(), Some("acme"));
    let tenant_view: SlotList = json(&daemon.tenant(ZED, &["--json", "slots", &pool])?)?;
    assert!(
        tenant_view
            .slots
            .iter()
            .all(|s| s.lease.is_none() && s.tenant.is_none())
    );
    let forbidden = daemon.tenant(ACME, &["reset", &format!("{pool}/{}", leased.index)])?;
    assert!(
        stderr(&forbidden).contains("forbidden"),
        "{}",
        stderr(&forbidden)
    );
    let reset = daemon.operator(&["reset", &format!("{pool}/{}", leased.index)])?;
    assert!(reset.status.success(), "{}", stderr(&reset));
    let ended = daemon.tenant(ACME, &["exec", "--lease", &lease, &pool, "--", "true"])?;
    assert_eq!(ended.status.code(), Some(125));
    assert!(
        stderr(&ended).contains("lease_ended") && stderr(&ended).contains("reset_by_operator"),
        "{}",
        stderr(&ended)
    );

    // No token, a wrong one: refused. Metrics and health need none.
    let anonymous = daemon.tenant("wrong", &["pools"])?;
    assert!(
        stderr(&anonymous).contains("unauthorized"),
        "{}",
        stderr(&anonymous)
    );
    let (code, health) = http_get(daemon.tcp, "/healthz")?;
    assert_eq!(code, 200, "{health}");
    let (code, metrics) = http_get(daemon.tcp, "/metrics")?;
    assert_eq!(code, 200);
    assert!(
        metrics.contains(&format!("paddock_slots{{pool=\"{pool}\",state=\"ready\"}}")),
        "{metrics}"
    );
    assert!(
        metrics
            .contains("paddock_http_requests_total{route=\"/v1/leases/{id}/exec\",status=\"200\"}"),
        "{metrics}"
    );
    let (code, _) = http_get(daemon.tcp, "/v1/nothing")?;
    assert_eq!(code, 404);

    // A real Prometheus server scrapes the daemon; its own API answers.
    if let Some(binary) =
        paddock_tests::prometheus_server::prometheus_binary("daemon: prometheus scrape")
    {
        let prometheus = paddock_tests::prometheus_server::PrometheusServer::start(
            &binary,
            &[daemon.tcp],
            Duration::from_secs(1),
        )?;
        let ready = prometheus.wait_for(
            &format!("paddock_slots{{pool=\"{pool}\",state=\"ready\"}}"),
            Duration::from_secs(60),
        )?;
        println!("prometheus: ready slots {ready}");
        let waits = prometheus.wait_for(
            &format!("paddock_acquire_wait_seconds_count{{pool=\"{pool}\"}}"),
            Duration::from_secs(60),
        )?;
        let count: f64 = waits[0]["value"][1]
            .as_str()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        assert!(count >= 3.0, "acquire waits counted: {waits}");
    }

    // A Python client from PyPI's httpx, not Paddock's, does a whole lease.
    if let Some(python) = std::env::var_os("PADDOCK_PYTHON") {
        let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("python/e2e.py");
        let e2e = std::process::Command::new(python)
            .arg(&script)
            .args(["--url", &format!("http://{}", daemon.tcp)])
            .args(["--token", ACME, "--other-token", ZED, "--pool", &pool])
            .args(["--read-only-pool", &other])
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .output()?;
        println!("python e2e: {}{}", stdout(&e2e), stderr(&e2e));
        assert!(e2e.status.success(), "{}{}", stdout(&e2e), stderr(&e2e));
    } else {
        eprintln!("SKIPPED the Python client against the daemon: set PADDOCK_PYTHON");
    }

    // The operator recycles a ready slot: it is destroyed, and the pool is
    // back at its min_ready (1), with a slot made anew if it needs one.
    let ready_index = wait_for_ready_slot(&daemon, &pool)?;
    let recycled = daemon.operator(&["recycle", &format!("{pool}/{ready_index}")])?;
    assert!(recycled.status.success(), "{}", stderr(&recycled));
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let slots: SlotList = json(&daemon.operator(&["--json", "slots", &pool])?)?;
        if slots.slots.iter().any(|s| s.state == "ready")
            && slots.slots.iter().all(|s| s.index != ready_index)
        {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "slot {ready_index} was not recycled: {slots:?}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let unknown = daemon.operator(&["recycle", &format!("{pool}/999")])?;
    assert!(
        stderr(&unknown).contains("slot_not_found"),
        "{}",
        stderr(&unknown)
    );

    // The second pool holds its leases to the shipped read-only policy:
    // the API says so, an allowed command runs, a denied one is refused
    // before it reaches the guest (403 policy_denied, naming the rule), and
    // the pool's own rewarm (`true`, not in the policy) still resets it.
    let pools: PoolList = json(&daemon.operator(&["--json", "pools"])?)?;
    let policy = pools
        .pools
        .iter()
        .find(|p| p.name == other)
        .and_then(|p| p.policy.clone());
    assert_eq!(policy.as_deref(), Some("read-only"), "{pools:?}");
    let table = stdout(&daemon.operator(&["pools"])?);
    assert!(
        table
            .lines()
            .any(|l| l.starts_with(other.as_str()) && l.contains("read-only")),
        "{table}"
    );
    let listed = daemon.operator(&["exec", &other, "--", "ls", "/"])?;
    assert_eq!(listed.status.code(), Some(0), "{}", stderr(&listed));
    assert!(stdout(&listed).contains("proc"), "{}", stdout(&listed));
    for (argv, rule) in [
        (&["rm", "-rf", "/tmp"][..], "exec.program"),
        (&["sh", "-c", "touch /tmp/x"][..], "exec.shell"),
    ] {
        let mut args = vec!["exec", other.as_str(), "--"];
        args.extend_from_slice(argv);
        let denied = daemon.operator(&args)?;
        assert_eq!(
            denied.status.code(),
            Some(125),
            "{argv:?}: {}",
            stderr(&denied)
        );
        assert!(
            stderr(&denied).contains("policy_denied") && stderr(&denied).contains(rule),
            "{argv:?}: {}",
            stderr(&denied)
        );
    }
    // Every `paddock exec` above was a lease of the pool's one slot: its
    // resets ran the pool's rewarm, which the policy does not allow.
    let after = daemon.operator(&["exec", &other, "--", "ls", "/"])?;
    assert_eq!(after.status.code(), Some(0), "{}", stderr(&after));

    // The operator drains the second pool: it goes, and nothing of it stays.
    let drained = daemon.operator(&["drain", &other])?;
    assert!(drained.status.success(), "{}", stderr(&drained));
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let pools: PoolList = json(&daemon.operator(&["--json", "pools"])?)?;
        if pools.pools.iter().all(|p| p.name != other) {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{other} was not drained: {pools:?}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_eq!(domains_of(&other)?, Vec::<String>::new());

    // A new golden with another warm-up replaces the slots while the pool
    // serves; the old golden's files go with its last slot.
    let before: PoolList = json(&daemon.operator(&["--json", "pools"])?)?;
    let old_golden = before
        .pools
        .iter()
        .find(|p| p.name == pool)
        .map(|p| p.golden_id.clone())
        .unwrap_or_default();
    let rebuilt = daemon.operator(&[
        "golden",
        "rebuild",
        &pool,
        "--warmup",
        "echo rebuilt > /tmp/warm",
        "--within",
        "300",
    ])?;
    assert!(rebuilt.status.success(), "{}", stderr(&rebuilt));
    let after: PoolList = json(&daemon.operator(&["--json", "pools"])?)?;
    let new_golden = after
        .pools
        .iter()
        .find(|p| p.name == pool)
        .map(|p| p.golden_id.clone())
        .unwrap_or_default();
    assert_ne!(new_golden, old_golden);
    let warm = daemon.operator(&["exec", &pool, "--", "cat", "/tmp/warm"])?;
    assert_eq!(stdout(&warm), "rebuilt\n", "{}", stderr(&warm));
    let golden_dirs: Vec<String> = std::fs::read_dir(std::path::Path::new(POOL_ROOT).join(&pool))?
        .flatten()
        .filter_map(|e| e.file_name().to_str().map(str::to_owned))
        .filter(|n| n.starts_with("golden-"))
        .collect();
    assert_eq!(
        golden_dirs.len(),
        1,
        "the old golden's files went: {golden_dirs:?}"
    );
    let refused = daemon.tenant(ACME, &["golden", "rebuild", &pool])?;
    assert!(
        stderr(&refused).contains("forbidden"),
        "{}",
        stderr(&refused)
    );

    // SIGHUP reloads the file: the pool grows, zed's token is rotated, and
    // the pool gets an exec rate per lease.
    let text = std::fs::read_to_string(&config)?
        .replacen(
            "min_ready = 1\nmax_size = 2",
            "min_ready = 2\nmax_size = 2",
            1,
        )
        .replacen(
            "acquire_timeout_ms = 120000\n",
            "acquire_timeout_ms = 120000\n[pool.limits]\nlease_execs_per_second = 1\n",
            1,
        )
        .replacen(&token_digest(ZED), &token_digest("zed-new-token"), 1);
    std::fs::write(&config, text)?;
    daemon.hang_up()?;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let pools: PoolList = json(&daemon.operator(&["--json", "pools"])?)?;
        if pools
            .pools
            .iter()
            .any(|p| p.name == pool && p.min_ready == 2 && p.ready == 2)
        {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the reload did not grow the pool: {pools:?}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let rotated = daemon.tenant(ZED, &["pools"])?;
    assert!(
        stderr(&rotated).contains("unauthorized"),
        "{}",
        stderr(&rotated)
    );
    let renewed = daemon.tenant("zed-new-token", &["pools"])?;
    assert!(renewed.status.success(), "{}", stderr(&renewed));
    let limited = daemon.tenant(ACME, &["acquire", &pool])?;
    let limited = stdout(&limited).trim().to_owned();
    let mut refused = false;
    for _ in 0..3 {
        let ran = daemon.tenant(ACME, &["exec", "--lease", &limited, &pool, "--", "true"])?;
        refused |= stderr(&ran).contains("rate_limited");
    }
    assert!(
        refused,
        "three execs in a row pass a limit of one per second"
    );
    let _ = daemon.tenant(ACME, &["release", &limited])?;

    // SIGTERM drains: exit 0, nothing of the pool left.
    let status = daemon.stop(Duration::from_secs(180))?;
    assert!(status.success(), "{status:?}");
    assert!(!dir.path().join("paddock.sock").exists());
    assert_eq!(domains_of(&pool)?, Vec::<String>::new());
    assert!(!std::path::Path::new(POOL_ROOT).join(&pool).exists());

    // Every API call was audited, with the tenant as actor; the chain holds.
    let verified = std::process::Command::new(paddock_tests::daemon::paddock_binary()?)
        .args(["audit", "verify"])
        .arg(&audit_dir)
        .output()?;
    assert!(
        verified.status.success(),
        "{}{}",
        stdout(&verified),
        stderr(&verified)
    );
    assert!(
        stdout(&verified).starts_with("verified"),
        "{}",
        stdout(&verified)
    );
    let log: String = std::fs::read_dir(&audit_dir)?
        .flatten()
        .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
        .collect();
    let api_by_acme = log
        .lines()
        .filter(|l| l.contains("\"verb\":\"api\"") && l.contains("\"name\":\"acme\""))
        .count();
    assert!(api_by_acme >= 5, "{api_by_acme} API records by acme");
    assert!(
        log.contains("\"kind\":\"token\""),
        "the wrong token's refusal is audited"
    );
    let denials: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("\"stage\":\"denied\"") && l.contains("\"kind\":\"policy\""))
        .collect();
    // Two by the operator's `paddock exec`, two more by the Python client.
    let by_python = if std::env::var_os("PADDOCK_PYTHON").is_some() {
        2
    } else {
        0
    };
    assert_eq!(denials.len(), 2 + by_python, "{denials:?}");
    assert!(
        denials
            .iter()
            .any(|l| l.contains("\"rule\":\"exec.program\"")
                && l.contains("\"policy\":\"read-only\"")
                && l.contains("\"verb\":\"exec\"")),
        "{denials:?}"
    );
    let tail = std::process::Command::new(paddock_tests::daemon::paddock_binary()?)
        .args(["audit", "tail", "-n", "3"])
        .arg(&audit_dir)
        .output()?;
    assert!(tail.status.success(), "{}", stderr(&tail));
    assert_eq!(stdout(&tail).lines().count(), 3, "{}", stdout(&tail));
    Ok(())
}

/// Writes `dir/paddock.toml`: a `[server]` on the test image and pool root,
/// its socket in `dir` and TCP on a loopback port the kernel picks, then
/// `rest` (more server keys first, then tenants and pools).
fn write_config(dir: &std::path::Path, rest: &str) -> anyhow::Result<std::path::PathBuf> {
    let config = dir.join("paddock.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nimage = \"{}\"\nsocket = \"{}\"\ntcp = \"127.0.0.1:0\"\nstate_root = \"{POOL_ROOT}\"\n{rest}",
            image_manifest_path().display(),
            dir.join("paddock.sock").display(),
        ),
    )?;
    Ok(config)
}

/// The number of a ready slot of `pool`, once there is one.
fn wait_for_ready_slot(daemon: &DaemonProcess, pool: &str) -> anyhow::Result<u32> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let slots: SlotList = json(&daemon.operator(&["--json", "slots", pool])?)?;
        if let Some(slot) = slots.slots.iter().find(|s| s.state == "ready") {
            return Ok(slot.index);
        }
        anyhow::ensure!(Instant::now() < deadline, "no ready slot: {slots:?}");
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// The names of `pool`'s libvirt domains.
fn domains_of(pool: &str) -> anyhow::Result<Vec<String>> {
    tokio::runtime::Runtime::new()?.block_on(async {
        let libvirt = paddock::libvirt::Libvirt::open(paddock_tests::vm::SYSTEM_URI).await?;
        let names: Vec<String> = libvirt
            .paddock_domains()
            .await?
            .into_iter()
            .filter(|(_, meta)| meta.pool == pool)
            .map(|(vm, _)| vm.name().to_owned())
            .collect();
        anyhow::Ok(names)
    })
}

/// `paddock gc` never turns a bad pool name into a path: `--pool` is
/// refused naming the rule, and a directory in the state root whose name
/// breaks it is skipped, its contents left alone. No VM: libvirt's test
/// driver stands in.
#[test]
fn gc_refuses_and_skips_bad_pool_names() -> TestResult {
    let dir = tempfile::tempdir()?;
    let root = dir.path().join("state");
    // What gc would remove under a pool's directory, under a bad name.
    let kept = root.join("Bad Name").join("slot-0");
    std::fs::create_dir_all(&kept)?;
    let socket = dir.path().join("no-daemon.sock");
    let binary = paddock_tests::daemon::paddock_binary()?;
    let gc = |extra: &[&str]| {
        std::process::Command::new(&binary)
            .args(["--socket", &socket.to_string_lossy(), "gc"])
            .args(["--libvirt-uri", "test:///default", "--state-root"])
            .arg(&root)
            .args(extra)
            .output()
    };
    for bad in ["../state", "a/b", "", "Bad Name"] {
        let refused = gc(&["--pool", bad])?;
        assert_eq!(
            refused.status.code(),
            Some(2),
            "{bad:?}: {}",
            stderr(&refused)
        );
        assert!(
            stderr(&refused).contains("--pool") && stderr(&refused).contains("pool name"),
            "{bad:?}: {}",
            stderr(&refused)
        );
    }
    let swept = gc(&[])?;
    assert!(
        swept.status.success(),
        "{}{}",
        stdout(&swept),
        stderr(&swept)
    );
    assert!(
        stderr(&swept).contains("skipping \"Bad Name\""),
        "{}",
        stderr(&swept)
    );
    assert!(kept.exists(), "a bad name's directory was left alone");
    Ok(())
}

#[test]
fn gc_removes_what_a_killed_daemon_left_and_doctor_checks_the_host() -> TestResult {
    if !enabled("gc_removes_what_a_killed_daemon_left_and_doctor_checks_the_host") {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let pool = format!("g{}", unique_marker());
    let socket = dir.path().join("paddock.sock");
    let config = write_config(
        dir.path(),
        &format!("[[pool]]\nname = \"{pool}\"\nmin_ready = 1\nmax_size = 1\n"),
    )?;
    let daemon = DaemonProcess::start(&config, Duration::from_secs(300))?;
    wait_for_ready_slot(&daemon, &pool)?;
    daemon.kill()?;
    assert!(
        !domains_of(&pool)?.is_empty(),
        "a killed daemon leaves its domains"
    );
    let binary = paddock_tests::daemon::paddock_binary()?;
    let gc = std::process::Command::new(&binary)
        .args(["--socket", &socket.to_string_lossy(), "gc", "--pool", &pool])
        .args(["--state-root", POOL_ROOT])
        .output()?;
    assert!(gc.status.success(), "{}{}", stdout(&gc), stderr(&gc));
    assert!(stdout(&gc).starts_with("removed "), "{}", stdout(&gc));
    assert_eq!(domains_of(&pool)?, Vec::<String>::new());
    assert!(!std::path::Path::new(POOL_ROOT).join(&pool).exists());

    let doctor = std::process::Command::new(&binary)
        .args(["doctor", "--image"])
        .arg(image_manifest_path())
        .args(["--state-root", POOL_ROOT])
        .output()?;
    println!("{}", stdout(&doctor));
    assert!(
        doctor.status.success(),
        "{}{}",
        stdout(&doctor),
        stderr(&doctor)
    );
    assert!(
        stdout(&doctor).contains("ok    libvirtd answers"),
        "{}",
        stdout(&doctor)
    );
    assert!(
        stdout(&doctor).contains("ok    the image loads"),
        "{}",
        stdout(&doctor)
    );
    assert!(
        stdout(&doctor).contains("ok    QEMU's group libvirt-qemu exists"),
        "{}",
        stdout(&doctor)
    );
    let broken = std::process::Command::new(&binary)
        .args(["doctor", "--image", "/nonexistent/manifest.json"])
        .output()?;
    assert_eq!(broken.status.code(), Some(1), "{}", stdout(&broken));
    assert!(
        stdout(&broken).contains("FIX   the image loads"),
        "{}",
        stdout(&broken)
    );
    Ok(())
}
