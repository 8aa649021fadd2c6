//! The commands with more to them than one API call: `exec` (acquire,
//! stream, release, exit with the guest's status), `cp`, and the ones that
//! work on the host without the daemon: `audit`, `gc`, `doctor`.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use http_body_util::BodyExt as _;
use hyper::Method;
use paddock::observe::audit::{self, AuditRecord};
use paddock_server::wire::{ExecRequest, PutResult, StreamLine};

use crate::client::{self, Target};
use crate::{AuditCommand, Failure};

/// `paddock exec`: in lease `lease`, or a new one on `pool` released after.
pub async fn exec(
    target: &Target,
    pool: &str,
    lease: Option<&str>,
    request: &ExecRequest,
) -> Result<u8, Failure> {
    let (id, ours) = match lease {
        Some(id) => (id.to_owned(), false),
        None => (crate::acquire(target, pool, None).await?.id, true),
    };
    let result = run_streamed(target, &id, request).await;
    if ours {
        if let Err(err) = crate::release(target, &id).await {
            eprintln!("paddock: releasing {id}: {err}");
        }
    }
    result
}

/// Streams an execution's output to this process's stdout and stderr;
/// returns its exit status.
async fn run_streamed(target: &Target, id: &str, request: &ExecRequest) -> Result<u8, Failure> {
    let body = serde_json::to_vec(request).context("encoding the request")?;
    let response = target
        .send(
            Method::POST,
            &format!("/v1/leases/{id}/exec"),
            client::full(body),
            Some("application/json"),
        )
        .await?;
    let mut body = client::check(response).await?.into_body();
    let mut pending: Vec<u8> = Vec::new();
    let mut stdout = std::io::stdout();
    let mut stderr = std::io::stderr();
    while let Some(frame) = body.frame().await {
        let frame = frame.context("reading the output stream")?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        pending.extend_from_slice(&data);
        while let Some(end) = pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            let line: StreamLine =
                serde_json::from_slice(&line).context("a line of the output stream")?;
            match line {
                StreamLine::Stdout(text) => {
                    let _ = stdout.write_all(text.as_bytes());
                    let _ = stdout.flush();
                }
                StreamLine::Stderr(text) => {
                    let _ = stderr.write_all(text.as_bytes());
                }
                StreamLine::StdoutB64(_) | StreamLine::StderrB64(_) => {}
                StreamLine::Result(end) => {
                    return Ok(if end.timed_out {
                        124
                    } else if let Some(signal) = end.signal {
                        u8::try_from(128 + signal.clamp(0, 127)).unwrap_or(255)
                    } else {
                        end.exit_code
                            .and_then(|code| u8::try_from(code & 0xff).ok())
                            .unwrap_or(125)
                    });
                }
                StreamLine::Error(error) => {
                    return Err(Failure::from(anyhow::anyhow!(
                        "{}: {}",
                        error.code,
                        error.message
                    )));
                }
            }
        }
    }
    Err(Failure::from(anyhow::anyhow!(
        "the output stream ended without a result"
    )))
}

/// `LEASE:/path`, or a local path.
fn remote_path(text: &str) -> Option<(&str, &str)> {
    text.split_once(':')
        .filter(|(lease, path)| !lease.is_empty() && !lease.contains('/') && path.starts_with('/'))
}

/// `paddock cp`: one side is `LEASE:/abs/path`, the other local.
pub async fn cp(target: &Target, from: &str, to: &str) -> Result<(), Failure> {
    let usage = || Failure {
        status: 2,
        error: anyhow::anyhow!("give one side as LEASE:/absolute/path and the other local"),
    };
    match (remote_path(from), remote_path(to)) {
        (None, Some((lease, path))) => {
            use std::os::unix::fs::PermissionsExt as _;
            let file = tokio::fs::File::open(from)
                .await
                .with_context(|| format!("opening {from}"))?;
            let mode = file
                .metadata()
                .await
                .with_context(|| format!("reading {from}"))?
                .permissions()
                .mode()
                & 0o7777;
            let response = target
                .send(
                    Method::PUT,
                    &format!(
                        "/v1/leases/{lease}/files?path={}&mode={mode:o}",
                        encode(path)
                    ),
                    client::stream(file),
                    Some("application/octet-stream"),
                )
                .await?;
            let bytes = client::check(response)
                .await?
                .into_body()
                .collect()
                .await
                .context("reading the answer")?
                .to_bytes();
            let done: PutResult =
                serde_json::from_slice(&bytes).context("the answer is not the expected JSON")?;
            eprintln!("{} bytes to {lease}:{}", done.size, done.path);
            Ok(())
        }
        (Some((lease, path)), None) => {
            let response = target
                .send(
                    Method::GET,
                    &format!("/v1/leases/{lease}/files?path={}", encode(path)),
                    client::full(Vec::new()),
                    None,
                )
                .await?;
            let response = client::check(response).await?;
            let expected: Option<u32> = response
                .headers()
                .get("x-paddock-crc32")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok());
            let mut body = response.into_body();
            let partial = PathBuf::from(format!("{to}.paddock-partial"));
            let mut file = std::fs::File::create(&partial)
                .with_context(|| format!("creating {}", partial.display()))?;
            let mut crc = crc32fast::Hasher::new();
            let mut size = 0u64;
            while let Some(frame) = body.frame().await {
                let frame = frame.context("reading the file")?;
                if let Ok(data) = frame.into_data() {
                    crc.update(&data);
                    size += data.len() as u64;
                    file.write_all(&data)
                        .with_context(|| format!("writing {}", partial.display()))?;
                }
            }
            let crc = crc.finalize();
            if expected != Some(crc) {
                let _ = std::fs::remove_file(&partial);
                return Err(Failure::from(anyhow::anyhow!(
                    "the download's CRC-32 {crc} does not match the daemon's {expected:?}"
                )));
            }
            std::fs::rename(&partial, to).with_context(|| format!("renaming to {to}"))?;
            eprintln!("{size} bytes from {lease}:{path}");
            Ok(())
        }
        _ => Err(usage()),
    }
}

/// A blocking writer into an async one, for the packer's thread.
struct BlockingWriter(tokio::runtime::Handle, tokio::io::DuplexStream);

impl std::io::Write for BlockingWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        use tokio::io::AsyncWriteExt as _;
        self.0.block_on(self.1.write(buf))
    }

    fn flush(&mut self) -> std::io::Result<()> {
        use tokio::io::AsyncWriteExt as _;
        self.0.block_on(self.1.flush())
    }
}

/// A blocking reader of an async one, for the unpacker's thread.
struct BlockingReader(tokio::runtime::Handle, tokio::io::DuplexStream);

impl std::io::Read for BlockingReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        use tokio::io::AsyncReadExt as _;
        self.0.block_on(self.1.read(buf))
    }
}

/// `paddock cp -r`: a directory into or out of a lease, as one tar stream
/// (`/v1/leases/{id}/tree`). The local side is packed without following a
/// symlink, and what the guest sends is unpacked by the agent client's
/// unpacker, which refuses any entry that would land outside `to`.
pub async fn cp_tree(target: &Target, from: &str, to: &str) -> Result<(), Failure> {
    use paddock::agent::{TreeTally, pack_tree, unpack_tree};
    let usage = || Failure {
        status: 2,
        error: anyhow::anyhow!("give one side as LEASE:/absolute/dir and the other a local dir"),
    };
    let handle = tokio::runtime::Handle::current();
    match (remote_path(from), remote_path(to)) {
        (None, Some((lease, path))) => {
            let (writer, reader) = tokio::io::duplex(256 * 1024);
            let local = PathBuf::from(from);
            let packer = tokio::task::spawn_blocking(move || {
                let writer = BlockingWriter(handle, writer);
                pack_tree(&local, writer, u64::MAX, &TreeTally::default())
            });
            let response = target
                .send(
                    Method::PUT,
                    &format!("/v1/leases/{lease}/tree?path={}", encode(path)),
                    client::stream(reader),
                    Some("application/x-tar"),
                )
                .await;
            let packed = packer.await.context("the packer stopped")?;
            let response = response?;
            packed.with_context(|| format!("packing {from}"))?;
            let bytes = client::check(response)
                .await?
                .into_body()
                .collect()
                .await
                .context("reading the answer")?
                .to_bytes();
            let done: paddock_server::http::TreeResult =
                serde_json::from_slice(&bytes).context("the answer is not the expected JSON")?;
            eprintln!(
                "{} files, {} directories, {} symlinks ({} bytes) to {lease}:{}",
                done.files, done.dirs, done.symlinks, done.bytes, done.path
            );
            Ok(())
        }
        (Some((lease, path)), None) => {
            let response = target
                .send(
                    Method::GET,
                    &format!("/v1/leases/{lease}/tree?path={}", encode(path)),
                    client::full(Vec::new()),
                    None,
                )
                .await?;
            let response = client::check(response).await?;
            let expected: Option<u32> = response
                .headers()
                .get("x-paddock-crc32")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok());
            let (mut writer, reader) = tokio::io::duplex(256 * 1024);
            let dest = PathBuf::from(to);
            let unpacker = tokio::task::spawn_blocking(move || {
                paddock::agent::check_tree_root(&dest, true)?;
                unpack_tree(
                    BlockingReader(handle, reader),
                    &dest,
                    false,
                    &TreeTally::default(),
                )
            });
            let mut body = response.into_body();
            let mut crc = crc32fast::Hasher::new();
            let mut received = Ok(());
            while let Some(frame) = body.frame().await {
                let frame = match frame {
                    Ok(frame) => frame,
                    Err(err) => {
                        received = Err(anyhow::Error::new(err).context("reading the tree"));
                        break;
                    }
                };
                if let Ok(data) = frame.into_data() {
                    crc.update(&data);
                    use tokio::io::AsyncWriteExt as _;
                    // A closed pipe: the unpacker stopped, and says why.
                    if writer.write_all(&data).await.is_err() {
                        break;
                    }
                }
            }
            drop(writer);
            let done = unpacker
                .await
                .context("the unpacker stopped")?
                .with_context(|| format!("unpacking into {to}"))?;
            received?;
            let crc = crc.finalize();
            if expected != Some(crc) {
                return Err(Failure::from(anyhow::anyhow!(
                    "the tree's CRC-32 {crc} does not match the daemon's {expected:?}"
                )));
            }
            eprintln!(
                "{} files, {} directories, {} symlinks ({} bytes) from {lease}:{path}",
                done.files, done.dirs, done.symlinks, done.bytes
            );
            Ok(())
        }
        _ => Err(usage()),
    }
}

/// Percent-encodes a guest path for a query string.
fn encode(path: &str) -> String {
    path.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'/' | b'-' | b'_' | b'.' | b'~' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The audit files of `paths`: the files given, or a directory's
/// `audit-*.jsonl` in order.
fn audit_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>, Failure> {
    if let [dir] = paths {
        if dir.is_dir() {
            let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
                .with_context(|| format!("reading {}", dir.display()))?
                .flatten()
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with("audit-") && n.ends_with(".jsonl"))
                })
                .collect();
            files.sort();
            return Ok(files);
        }
    }
    Ok(paths.to_vec())
}

/// `paddock policy check`: each file's verdict on a line (or a JSON
/// object per file with `--json`); 1 if any file is refused.
pub fn check_policies(files: &[PathBuf], json: bool) -> u8 {
    let mut status = 0;
    for file in files {
        match paddock::policy::Policy::load(file) {
            Ok(policy) => {
                let summary = policy_summary(&policy);
                if json {
                    println!(
                        "{}",
                        serde_json::json!({
                            "file": file,
                            "ok": true,
                            "name": policy.name(),
                            "allows": summary,
                        })
                    );
                } else {
                    println!(
                        "{}: ok: {} allows {}",
                        file.display(),
                        policy.name(),
                        summary.join(", ")
                    );
                }
            }
            Err(err) => {
                status = 1;
                let mut message = err.to_string();
                let mut source = std::error::Error::source(&err);
                while let Some(cause) = source {
                    message.push_str(": ");
                    message.push_str(&cause.to_string());
                    source = cause.source();
                }
                if json {
                    println!(
                        "{}",
                        serde_json::json!({"file": file, "ok": false, "error": message})
                    );
                } else {
                    println!("{}: refused: {message}", file.display());
                }
            }
        }
    }
    status
}

/// What a policy allows, in a few words per request kind.
fn policy_summary(policy: &paddock::policy::Policy) -> Vec<String> {
    let mut allows = Vec::new();
    if let Some(exec) = policy.exec() {
        allows.push(format!(
            "exec ({}shell, {}terminal, timeout {}, {} at once)",
            if exec.shell() { "" } else { "no " },
            if exec.tty() { "" } else { "no " },
            exec.max_timeout_ms()
                .map_or_else(|| "unbounded".to_owned(), |ms| format!("<= {ms} ms")),
            exec.max_concurrent()
                .map_or_else(|| "any".to_owned(), |n| n.to_string())
        ));
    }
    for (kind, rules) in [("put", policy.put()), ("get", policy.get())] {
        if let Some(rules) = rules {
            allows.push(format!(
                "{kind}{} under {:?}",
                if rules.trees() {
                    " (files and trees)"
                } else {
                    ""
                },
                rules.paths()
            ));
        }
    }
    if let Some(fs) = policy.fs() {
        let reads = [fs.read_paths(), fs.write_paths()].concat();
        allows.push(if fs.write_paths().is_empty() {
            format!("fs reads under {reads:?}, no changes")
        } else {
            format!(
                "fs reads under {reads:?}, changes under {:?}",
                fs.write_paths()
            )
        });
    }
    if policy.status() {
        allows.push("status".to_owned());
    }
    let signals = policy.signals();
    if !signals.is_empty() {
        let names: Vec<String> = signals
            .into_iter()
            .map(paddock::policy::signal_name)
            .collect();
        allows.push(format!("signals {}", names.join(" ")));
    }
    if allows.is_empty() {
        allows.push("nothing".to_owned());
    }
    allows
}

/// `paddock audit verify|tail`.
pub fn audit(command: &AuditCommand, json: bool) -> Result<u8, Failure> {
    match command {
        AuditCommand::Verify { files } => {
            let files = audit_files(files)?;
            let report = audit::verify_files(&files).map_err(|err| Failure {
                status: 1,
                error: err.into(),
            })?;
            println!("{report}");
            Ok(if report.is_intact() { 0 } else { 1 })
        }
        AuditCommand::Tail { files, lines } => {
            let mut records: std::collections::VecDeque<String> = std::collections::VecDeque::new();
            for file in audit_files(files)? {
                let text =
                    std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
                for line in text.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
                    let shown = if json {
                        String::from_utf8_lossy(line).into_owned()
                    } else {
                        match AuditRecord::from_line(line) {
                            Ok(_) => summary(line),
                            Err(err) => format!("(unreadable line: {err})"),
                        }
                    };
                    if records.len() == *lines {
                        records.pop_front();
                    }
                    records.push_back(shown);
                }
            }
            for record in records {
                println!("{record}");
            }
            Ok(0)
        }
    }
}

/// One audit record (a valid line) on one line, for people: seq, time,
/// stage, actor, verb, target and outcome.
fn summary(line: &[u8]) -> String {
    let value: serde_json::Value = serde_json::from_slice(line).unwrap_or_default();
    let text = |key: &str| {
        value.get(key).map_or_else(
            || "-".to_owned(),
            |v| v.as_str().map_or_else(|| v.to_string(), str::to_owned),
        )
    };
    let actor = value
        .get("actor")
        .and_then(|a| a.get("name"))
        .and_then(serde_json::Value::as_str)
        .unwrap_or("-")
        .to_owned();
    let outcome = value
        .get("response")
        .and_then(|r| r.get("outcome"))
        .and_then(serde_json::Value::as_str)
        .unwrap_or("-")
        .to_owned();
    format!(
        "{} {} {} {actor} {} {} {outcome}",
        text("seq"),
        text("stage_at"),
        text("stage"),
        text("verb"),
        text("target"),
    )
}

/// `paddock gc`: removes every Paddock domain and pool directory (or only
/// `only`'s), when no daemon answers on `socket`. A pool name that breaks
/// the naming rule ([`paddock::names`]) is refused for `only`, and skipped
/// (with a warning) when a domain's metadata or a directory gives it: it
/// must never become a path.
pub async fn gc(
    only: Option<&str>,
    uri: &str,
    state_root: &Path,
    socket: &Path,
) -> Result<u8, Failure> {
    if let Some(only) = only {
        paddock::names::check_pool_name(only).map_err(|err| Failure {
            status: 2,
            error: anyhow::Error::new(err).context("--pool"),
        })?;
    }
    if std::os::unix::net::UnixStream::connect(socket).is_ok() {
        return Err(Failure {
            status: 1,
            error: anyhow::anyhow!(
                "a daemon answers on {}: stop it first (its pools are not leftovers)",
                socket.display()
            ),
        });
    }
    let libvirt = paddock::libvirt::Libvirt::open(uri)
        .await
        .with_context(|| format!("connecting to {uri}"))?;
    let mut pools: std::collections::BTreeSet<String> = libvirt
        .paddock_domains()
        .await
        .context("listing domains")?
        .into_iter()
        .map(|(_, meta)| meta.pool)
        .collect();
    if let Ok(entries) = std::fs::read_dir(state_root) {
        pools.extend(
            entries
                .flatten()
                .filter(|e| e.path().is_dir())
                .filter_map(|e| e.file_name().to_str().map(str::to_owned)),
        );
    }
    if let Some(only) = only {
        pools.retain(|pool| pool == only);
    }
    pools.retain(|pool| match paddock::names::check_pool_name(pool) {
        Ok(()) => true,
        Err(err) => {
            eprintln!("skipping {pool:?}: not a pool's name ({err})");
            false
        }
    });
    let mut removed = 0;
    for pool in &pools {
        let dir = state_root.join(pool);
        removed += paddock::vm::recover_pool(&libvirt, pool, &dir)
            .await
            .with_context(|| format!("removing what pool `{pool}` left"))?;
        // Empty now, unless something that is not Paddock's is in it.
        let _ = std::fs::remove_dir(&dir);
    }
    println!("removed {removed} domains of {} pools", pools.len());
    Ok(0)
}

/// One check of `paddock doctor`.
struct Check {
    what: String,
    problem: Option<String>,
}

/// `paddock doctor`: what works on this host, and what to fix.
pub async fn doctor(image: Option<&Path>, uri: &str, state_root: &Path) -> Result<u8, Failure> {
    let mut checks = Vec::new();
    let libvirt = match paddock::libvirt::Libvirt::open(uri).await {
        Ok(libvirt) => {
            checks.push(Check {
                what: "libvirtd answers".into(),
                problem: None,
            });
            Some(libvirt)
        }
        Err(err) => {
            checks.push(Check {
                what: "libvirtd answers".into(),
                problem: Some(format!(
                    "{err}: start libvirtd (and virtlogd); `cargo xtask demo` shows how"
                )),
            });
            None
        }
    };
    let kvm = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    checks.push(Check {
        what: if kvm {
            "KVM is usable".into()
        } else {
            "no KVM: guests run under TCG (slower, works)".into()
        },
        problem: None,
    });
    if let Some(libvirt) = &libvirt {
        let filters = libvirt.nwfilter_names().await.unwrap_or_default();
        let missing: Vec<String> = paddock::libvirt::builtin_filters()
            .into_iter()
            .map(|f| f.name)
            .filter(|name| !filters.contains(name))
            .collect();
        // Informational: a NAT-filtered pool defines them when it starts.
        let note = if missing.is_empty() {
            "Paddock's nwfilters are defined".to_owned()
        } else {
            format!(
                "Paddock's nwfilters {} are not defined yet (a NAT-filtered pool defines them)",
                missing.join(", ")
            )
        };
        checks.push(Check {
            what: note,
            problem: None,
        });
    }
    if let Some(image) = image {
        checks.push(Check {
            what: "the image loads".into(),
            problem: paddock::GuestImage::load(image)
                .err()
                .map(|err| format!("{err}: build it with `cargo xtask image`")),
        });
    }
    // Sandbox files belong to QEMU's group and no one else's.
    checks.push(Check {
        what: format!("QEMU's group {} exists", paddock::vm::DEFAULT_QEMU_GROUP),
        problem: paddock::vm::QemuGroup::resolve(paddock::vm::DEFAULT_QEMU_GROUP)
            .err()
            .map(|err| format!("{err}: install libvirt-daemon-system")),
    });
    let free = free_bytes(state_root.parent().unwrap_or(state_root));
    checks.push(Check {
        what: "free disk for pools".into(),
        problem: match free {
            Some(bytes) if bytes < 2 << 30 => Some(format!(
                "only {} MiB free under {}: each slot needs its overlay and memory image",
                bytes >> 20,
                state_root.display()
            )),
            None => Some(format!(
                "could not read the free space of {}",
                state_root.display()
            )),
            Some(_) => None,
        },
    });
    let root = is_root();
    checks.push(Check {
        what: "running as root".into(),
        problem: (!root).then(|| "libvirt's system URI and the daemon's socket need root".into()),
    });
    let mut problems = 0;
    for check in &checks {
        match &check.problem {
            None => println!("ok    {}", check.what),
            Some(problem) => {
                problems += 1;
                println!("FIX   {}: {problem}", check.what);
            }
        }
    }
    Ok(u8::from(problems > 0))
}

/// Free bytes of the file system holding `path`, if it can be read.
fn free_bytes(path: &Path) -> Option<u64> {
    let output = std::process::Command::new("df")
        .args(["--output=avail", "-B1"])
        .arg(path)
        .output()
        .ok()?;
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .nth(1)?
        .trim()
        .parse()
        .ok()
}

/// Whether this process runs as root.
fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}
