//! The policies shipped in `policies/`: each loads, and each decides a
//! table of requests as its file says; no request at all escapes a deny-all
//! policy, and what a policy lets through obeys its limits.
#![cfg(test)]

use std::collections::BTreeMap;
use std::path::PathBuf;

use paddock_policy::{FsAccess, Policy, Request, Rule, Size};
use paddock_proto::{Command, Execute};
use proptest::prelude::*;

fn policies_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../policies")
}

fn shipped(name: &str) -> Policy {
    let path = policies_dir().join(format!("{name}.toml"));
    match Policy::load(&path) {
        Ok(policy) => policy,
        Err(err) => panic!("{}: {err:?}", path.display()),
    }
}

#[test]
fn every_file_in_policies_loads_and_is_named_after_its_file() {
    let mut seen = 0;
    for entry in std::fs::read_dir(policies_dir()).expect("policies/") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|ext| ext == "toml") {
            let policy = Policy::load(&path).unwrap_or_else(|err| panic!("{err:?}"));
            let stem = path.file_stem().and_then(|s| s.to_str()).expect("stem");
            assert_eq!(policy.name(), stem, "{}", path.display());
            assert!(!policy.description().is_empty(), "{}", path.display());
            seen += 1;
        }
    }
    assert!(seen >= 4, "only {seen} policies");
}

/// One request of a table, and what the policy must say.
enum Case {
    Exec(Execute, Option<Rule>),
    ExecRunning(Execute, usize, Option<Rule>),
    Put(&'static str, u64, Option<Rule>),
    PutStreamed(&'static str, u64, Option<Rule>),
    Get(&'static str, Option<Rule>),
    GetSized(&'static str, u64, Option<Rule>),
    Status(Option<Rule>),
    Signal(i32, Option<Rule>),
    StopAgent(Option<Rule>),
    /// A file system operation that only reads, on one path.
    FsRead(&'static str, Option<Rule>),
    /// One that changes the file system, on its paths (two for a rename).
    FsWrite(&'static [&'static str], Option<Rule>),
}

fn argv(args: &[&str]) -> Execute {
    Execute::argv(args.iter().copied())
}

/// Runs the execution on a terminal.
fn on_a_terminal(request: &mut Execute) {
    request.tty = Some(paddock_proto::Tty::new("xterm", 24, 80));
}

fn with(mut request: Execute, change: impl FnOnce(&mut Execute)) -> Execute {
    change(&mut request);
    request
}

fn run_table(policy: &Policy, cases: Vec<Case>) {
    for (index, case) in cases.into_iter().enumerate() {
        let (outcome, expected, what) = match case {
            Case::Exec(mut exec, expected) => {
                let what = format!("{exec:?}");
                let mut request = Request::Exec {
                    request: &mut exec,
                    timeout_defaulted: false,
                    running: 0,
                };
                (policy.check(&mut request), expected, what)
            }
            Case::ExecRunning(mut exec, running, expected) => {
                let what = format!("{exec:?} with {running} running");
                let mut request = Request::Exec {
                    request: &mut exec,
                    timeout_defaulted: false,
                    running,
                };
                (policy.check(&mut request), expected, what)
            }
            Case::Put(path, bytes, expected) => (
                policy.check(&mut Request::Put {
                    path,
                    size: Size::Known(bytes),
                }),
                expected,
                format!("put {path} {bytes}"),
            ),
            Case::PutStreamed(path, bytes, expected) => (
                policy.check(&mut Request::Put {
                    path,
                    size: Size::AtLeast(bytes),
                }),
                expected,
                format!("put {path} streamed {bytes}"),
            ),
            Case::Get(path, expected) => (
                policy.check(&mut Request::Get {
                    path,
                    size: Size::Unknown,
                }),
                expected,
                format!("get {path}"),
            ),
            Case::GetSized(path, bytes, expected) => (
                policy.check(&mut Request::Get {
                    path,
                    size: Size::Known(bytes),
                }),
                expected,
                format!("get {path} of {bytes}"),
            ),
            Case::Status(expected) => (
                policy.check(&mut Request::Status),
                expected,
                "status".to_owned(),
            ),
            Case::Signal(signal, expected) => (
                policy.check(&mut Request::Signal { signal }),
                expected,
                format!("signal {signal}"),
            ),
            Case::StopAgent(expected) => (
                policy.check(&mut Request::StopAgent),
                expected,
                "stop agent".to_owned(),
            ),
            Case::FsRead(path, expected) => (
                policy.check(&mut Request::Fs {
                    op: "read_dir",
                    access: FsAccess::Read,
                    paths: &[path],
                }),
                expected,
                format!("fs read {path}"),
            ),
            Case::FsWrite(paths, expected) => (
                policy.check(&mut Request::Fs {
                    op: "rename",
                    access: FsAccess::Write,
                    paths,
                }),
                expected,
                format!("fs write {paths:?}"),
            ),
        };
        let got = outcome.as_ref().err().map(|denial| denial.rule);
        assert_eq!(
            got,
            expected,
            "{} case {index}: {what}: {outcome:?}",
            policy.name()
        );
        if let Err(denial) = outcome {
            assert_eq!(&*denial.policy, policy.name());
            assert!(!denial.detail.is_empty());
        }
    }
}

const GIB: u64 = 1 << 30;
const MIB: u64 = 1 << 20;

#[test]
fn ci_runner_decides_its_table() {
    use Case::*;
    let policy = shipped("ci-runner");
    let env = |name: &str| {
        with(argv(&["make", "test"]), |e| {
            e.env = BTreeMap::from([(name.to_owned(), "x".to_owned())]);
        })
    };
    run_table(
        &policy,
        vec![
            Exec(argv(&["make", "-j2"]), None),
            Exec(argv(&["/usr/bin/git", "status"]), None),
            Exec(argv(&["/bin/ls", "-l"]), None),
            Exec(Execute::shell("cargo test 2>&1 | tail"), None),
            Exec(argv(&["sh", "-c", "true"]), None),
            Exec(argv(&["/opt/tool/bin/run"]), Some(Rule::ExecProgram)),
            Exec(argv(&["/usr/bin/sub/dir/x"]), Some(Rule::ExecProgram)),
            Exec(argv(&["./configure"]), Some(Rule::ExecProgram)),
            Exec(argv(&["/usr/bin/../../tmp/x"]), Some(Rule::ExecProgram)),
            Exec(argv(&["perl"]), Some(Rule::ExecProgram)),
            Exec(env("CI"), None),
            Exec(env("CARGO_HOME"), None),
            Exec(env("LC_ALL"), None),
            Exec(env("PATH"), Some(Rule::ExecEnv)),
            Exec(env("LD_PRELOAD"), Some(Rule::ExecEnv)),
            Exec(
                with(argv(&["make"]), |e| e.cwd = Some("/work/repo".into())),
                None,
            ),
            Exec(with(argv(&["make"]), |e| e.cwd = Some("/tmp".into())), None),
            Exec(
                with(argv(&["make"]), |e| e.cwd = Some("/workshop".into())),
                Some(Rule::ExecCwd),
            ),
            Exec(
                with(argv(&["make"]), |e| e.cwd = Some("/work/../etc".into())),
                Some(Rule::ExecCwd),
            ),
            Exec(
                with(argv(&["make"]), |e| e.cwd = Some("work".into())),
                Some(Rule::ExecCwd),
            ),
            Exec(
                with(argv(&["make"]), |e| e.timeout_ms = Some(3_600_000)),
                None,
            ),
            Exec(
                with(argv(&["make"]), |e| e.timeout_ms = Some(3_600_001)),
                Some(Rule::ExecTimeout),
            ),
            Exec(
                with(argv(&["make"]), |e| e.stdout_cap = Some(64 * MIB)),
                None,
            ),
            Exec(
                with(argv(&["make"]), |e| e.stderr_cap = Some(64 * MIB + 1)),
                Some(Rule::ExecOutputCap),
            ),
            Exec(with(argv(&["make"]), |e| e.stdin = true), None),
            Exec(with(argv(&["bash", "-i"]), on_a_terminal), None),
            Exec(
                with(argv(&["/opt/tool/bin/run"]), on_a_terminal),
                Some(Rule::ExecProgram),
            ),
            ExecRunning(argv(&["make"]), 7, None),
            ExecRunning(argv(&["make"]), 8, Some(Rule::ExecConcurrency)),
            Put("/work/src.tar", GIB, None),
            Put("/work/src.tar", GIB + 1, Some(Rule::PutSize)),
            PutStreamed("/tmp/x", GIB + 1, Some(Rule::PutSize)),
            Put("/etc/passwd", 10, Some(Rule::PutPath)),
            Put("/work/../etc/passwd", 10, Some(Rule::PutPath)),
            Get("/work/target/report.xml", None),
            Get("/root/.ssh/id_rsa", Some(Rule::GetPath)),
            GetSized("/tmp/log", GIB + 1, Some(Rule::GetSize)),
            Status(None),
            Signal(15, None),
            Signal(2, None),
            Signal(9, None),
            Signal(19, Some(Rule::Signal)),
            StopAgent(Some(Rule::StopAgent)),
            FsRead("/work/target", None),
            FsRead("/tmp", None),
            FsRead("/etc", Some(Rule::FsReadPath)),
            FsRead("/work/../etc", Some(Rule::FsReadPath)),
            FsRead("work", Some(Rule::FsReadPath)),
            FsWrite(&["/work/a", "/work/b"], None),
            FsWrite(&["/tmp/x"], None),
            FsWrite(&["/work/a", "/etc/passwd"], Some(Rule::FsWritePath)),
            FsWrite(&["/workshop"], Some(Rule::FsWritePath)),
            FsWrite(&["/"], Some(Rule::FsWritePath)),
        ],
    );
}

#[test]
fn python_interpreter_decides_its_table() {
    use Case::*;
    let policy = shipped("python-interpreter");
    let in_sandbox = |e: &mut Execute| e.cwd = Some("/sandbox".into());
    run_table(
        &policy,
        vec![
            Exec(argv(&["python3", "/sandbox/main.py"]), None),
            Exec(argv(&["/usr/bin/python3", "-c", "print(1)"]), None),
            Exec(argv(&["/usr/bin/python3.11", "-V"]), None),
            Exec(with(argv(&["python3", "-"]), |e| e.stdin = true), None),
            Exec(with(argv(&["python3"]), on_a_terminal), Some(Rule::ExecTty)),
            Exec(Execute::shell("python3 main.py"), Some(Rule::ExecShell)),
            Exec(argv(&["sh", "-c", "python3"]), Some(Rule::ExecShell)),
            Exec(argv(&["/bin/busybox", "sh"]), Some(Rule::ExecShell)),
            Exec(argv(&["/usr/bin/env", "python3"]), Some(Rule::ExecShell)),
            Exec(argv(&["pip", "install", "x"]), Some(Rule::ExecProgram)),
            Exec(argv(&["/usr/local/bin/python3"]), Some(Rule::ExecProgram)),
            Exec(argv(&["/tmp/python3"]), Some(Rule::ExecProgram)),
            Exec(
                with(argv(&["python3"]), |e| {
                    e.env = BTreeMap::from([("PYTHONPATH".to_owned(), "/tmp".to_owned())]);
                }),
                Some(Rule::ExecEnv),
            ),
            Exec(
                with(argv(&["python3"]), |e| {
                    e.env = BTreeMap::from([("PYTHONUNBUFFERED".to_owned(), "1".to_owned())]);
                }),
                None,
            ),
            Exec(with(argv(&["python3"]), in_sandbox), None),
            Exec(
                with(argv(&["python3"]), |e| e.cwd = Some("/".into())),
                Some(Rule::ExecCwd),
            ),
            Exec(
                with(argv(&["python3"]), |e| e.timeout_ms = Some(300_001)),
                Some(Rule::ExecTimeout),
            ),
            Exec(
                with(argv(&["python3"]), |e| e.stdout_cap = Some(9 * MIB)),
                Some(Rule::ExecOutputCap),
            ),
            ExecRunning(argv(&["python3"]), 1, None),
            ExecRunning(argv(&["python3"]), 2, Some(Rule::ExecConcurrency)),
            Put("/sandbox/main.py", 1000, None),
            Put("/sandbox/data.bin", 64 * MIB + 1, Some(Rule::PutSize)),
            Put("/tmp/main.py", 10, Some(Rule::PutPath)),
            Get("/sandbox/out.png", None),
            Get("/etc/shadow", Some(Rule::GetPath)),
            Status(None),
            Signal(2, None),
            Signal(1, Some(Rule::Signal)),
            StopAgent(Some(Rule::StopAgent)),
            FsRead("/sandbox", None),
            FsRead("/etc", Some(Rule::FsReadPath)),
            FsWrite(&["/sandbox/out"], None),
            FsWrite(&["/sandbox/a", "/tmp/a"], Some(Rule::FsWritePath)),
        ],
    );
}

#[test]
fn read_only_decides_its_table() {
    use Case::*;
    let policy = shipped("read-only");
    run_table(
        &policy,
        vec![
            Exec(argv(&["ls", "-la", "/"]), None),
            Exec(argv(&["/bin/cat", "/etc/os-release"]), None),
            Exec(argv(&["/usr/bin/sha256sum", "/bin/busybox"]), None),
            Exec(argv(&["ps"]), None),
            Exec(argv(&["rm", "-rf", "/"]), Some(Rule::ExecProgram)),
            Exec(argv(&["/bin/rm", "/x"]), Some(Rule::ExecProgram)),
            Exec(argv(&["find", "/", "-delete"]), Some(Rule::ExecProgram)),
            Exec(argv(&["date", "-s", "2000-01-01"]), Some(Rule::ExecProgram)),
            Exec(argv(&["/bin/sh"]), Some(Rule::ExecShell)),
            Exec(Execute::shell("ls"), Some(Rule::ExecShell)),
            Exec(
                with(argv(&["cat"]), |e| e.stdin = true),
                Some(Rule::ExecStdin),
            ),
            Exec(with(argv(&["ls"]), on_a_terminal), Some(Rule::ExecTty)),
            Exec(
                with(argv(&["ls"]), |e| {
                    e.env = BTreeMap::from([("LANG".to_owned(), "C".to_owned())]);
                }),
                Some(Rule::ExecEnv),
            ),
            Exec(
                with(argv(&["ls"]), |e| e.cwd = Some("/var/log".into())),
                None,
            ),
            Put("/tmp/x", 1, Some(Rule::Put)),
            Get("/var/log/messages", None),
            GetSized("/var/log/big", 64 * MIB + 1, Some(Rule::GetSize)),
            Status(None),
            Signal(15, None),
            Signal(2, Some(Rule::Signal)),
            StopAgent(Some(Rule::StopAgent)),
            FsRead("/", None),
            FsRead("/var/log", None),
            FsRead("/var/../etc", Some(Rule::FsReadPath)),
            FsWrite(&["/tmp/x"], Some(Rule::FsWritePath)),
            FsWrite(&["/"], Some(Rule::FsWritePath)),
        ],
    );
}

#[test]
fn deny_all_file_and_builtin_deny_everything_in_the_table() {
    use Case::*;
    for policy in [shipped("deny-all"), Policy::deny_all()] {
        run_table(
            &policy,
            vec![
                Exec(argv(&["true"]), Some(Rule::Exec)),
                Exec(Execute::shell("true"), Some(Rule::Exec)),
                Put("/tmp/x", 0, Some(Rule::Put)),
                Get("/tmp/x", Some(Rule::Get)),
                Status(Some(Rule::Status)),
                Signal(9, Some(Rule::Signal)),
                StopAgent(Some(Rule::StopAgent)),
                FsRead("/", Some(Rule::Fs)),
                FsRead("/tmp/x", Some(Rule::Fs)),
                FsWrite(&["/tmp/x"], Some(Rule::Fs)),
            ],
        );
    }
}

#[test]
fn limits_left_out_are_filled_in_and_a_default_timeout_is_lowered() {
    let policy = shipped("python-interpreter");
    let mut exec = argv(&["python3"]);
    exec.timeout_ms = Some(600_000);
    policy
        .check(&mut Request::Exec {
            request: &mut exec,
            timeout_defaulted: true,
            running: 0,
        })
        .expect("a default timeout is lowered, not denied");
    assert_eq!(exec.timeout_ms, Some(300_000));
    assert_eq!(exec.stdout_cap, Some(8 * MIB));
    assert_eq!(exec.stderr_cap, Some(8 * MIB));
    assert_eq!(exec.cwd.as_deref(), Some("/sandbox"));

    // What the caller set within the limits is kept.
    let mut exec = argv(&["python3"]);
    exec.timeout_ms = Some(1_000);
    exec.stdout_cap = Some(10);
    exec.cwd = Some("/sandbox/run".into());
    policy
        .check(&mut Request::Exec {
            request: &mut exec,
            timeout_defaulted: false,
            running: 0,
        })
        .expect("allowed");
    assert_eq!(exec.timeout_ms, Some(1_000));
    assert_eq!(exec.stdout_cap, Some(10));
    assert_eq!(exec.stderr_cap, Some(8 * MIB));
    assert_eq!(exec.cwd.as_deref(), Some("/sandbox/run"));
}

fn any_text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-zA-Z0-9_./-]{0,24}",
        Just("/bin/sh".to_owned()),
        Just("/".to_owned()),
        Just("python3".to_owned()),
        Just("/sandbox/../etc".to_owned()),
        any::<String>(),
    ]
}

fn any_execute() -> impl Strategy<Value = Execute> {
    (
        prop_oneof![
            proptest::collection::vec(any_text(), 0..4).prop_map(Command::Argv),
            any_text().prop_map(Command::Shell),
        ],
        proptest::collection::btree_map(any_text(), any_text(), 0..3),
        any::<bool>(),
        proptest::option::of(any_text()),
        proptest::option::of(any::<u64>()),
        proptest::option::of(any::<u64>()),
        proptest::option::of(any::<u64>()),
        (any::<bool>(), any::<bool>()),
    )
        .prop_map(
            |(command, env, clear_env, cwd, timeout_ms, stdout_cap, stderr_cap, (stdin, tty))| {
                let mut exec = match command {
                    Command::Argv(argv) => Execute::argv(argv),
                    Command::Shell(line) => Execute::shell(line),
                };
                exec.env = env;
                exec.clear_env = clear_env;
                exec.cwd = cwd;
                exec.timeout_ms = timeout_ms;
                exec.stdout_cap = stdout_cap;
                exec.stderr_cap = stderr_cap;
                exec.stdin = stdin;
                exec.tty = tty.then(|| paddock_proto::Tty::new("xterm", 24, 80));
                exec
            },
        )
}

fn any_size() -> impl Strategy<Value = Size> {
    prop_oneof![
        any::<u64>().prop_map(Size::Known),
        any::<u64>().prop_map(Size::AtLeast),
        Just(Size::Unknown),
    ]
}

/// The kinds of request, as owned values to draw.
#[derive(Debug, Clone)]
enum AnyRequest {
    Exec(Execute, bool, usize),
    Put(String, Size),
    Get(String, Size),
    PutTree(String, Size),
    GetTree(String, Size),
    Status,
    Signal(i32),
    StopAgent,
    Fs(bool, Vec<String>),
}

fn any_request() -> impl Strategy<Value = AnyRequest> {
    prop_oneof![
        (any_execute(), any::<bool>(), any::<usize>())
            .prop_map(|(e, d, r)| AnyRequest::Exec(e, d, r)),
        (any_text(), any_size()).prop_map(|(p, s)| AnyRequest::Put(p, s)),
        (any_text(), any_size()).prop_map(|(p, s)| AnyRequest::Get(p, s)),
        (any_text(), any_size()).prop_map(|(p, s)| AnyRequest::PutTree(p, s)),
        (any_text(), any_size()).prop_map(|(p, s)| AnyRequest::GetTree(p, s)),
        Just(AnyRequest::Status),
        any::<i32>().prop_map(AnyRequest::Signal),
        Just(AnyRequest::StopAgent),
        (any::<bool>(), proptest::collection::vec(any_text(), 0..3))
            .prop_map(|(write, paths)| AnyRequest::Fs(write, paths)),
    ]
}

fn check(policy: &Policy, request: &mut AnyRequest) -> Result<(), paddock_policy::Denial> {
    match request {
        AnyRequest::Exec(exec, defaulted, running) => policy.check(&mut Request::Exec {
            request: exec,
            timeout_defaulted: *defaulted,
            running: *running,
        }),
        AnyRequest::Put(path, size) => policy.check(&mut Request::Put { path, size: *size }),
        AnyRequest::Get(path, size) => policy.check(&mut Request::Get { path, size: *size }),
        AnyRequest::PutTree(path, size) => {
            policy.check(&mut Request::PutTree { path, size: *size })
        }
        AnyRequest::GetTree(path, size) => {
            policy.check(&mut Request::GetTree { path, size: *size })
        }
        AnyRequest::Status => policy.check(&mut Request::Status),
        AnyRequest::Signal(signal) => policy.check(&mut Request::Signal { signal: *signal }),
        AnyRequest::StopAgent => policy.check(&mut Request::StopAgent),
        AnyRequest::Fs(write, paths) => {
            let paths: Vec<&str> = paths.iter().map(String::as_str).collect();
            policy.check(&mut Request::Fs {
                op: "any",
                access: if *write {
                    FsAccess::Write
                } else {
                    FsAccess::Read
                },
                paths: &paths,
            })
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// No request of any kind, with any content, passes a deny-all policy.
    #[test]
    fn nothing_escapes_deny_all(mut request in any_request()) {
        for policy in [Policy::deny_all(), shipped("deny-all")] {
            prop_assert!(check(&policy, &mut request).is_err(), "{request:?} passed");
        }
    }

    /// Whatever a shipped policy lets through obeys it: the program is not
    /// a shell when shells are off, the working directory and paths are
    /// under its prefixes, and timeouts, caps and sizes are within its
    /// limits (filled in where the request left them out).
    #[test]
    fn what_passes_a_shipped_policy_obeys_it(request in any_request()) {
        for name in ["ci-runner", "python-interpreter", "read-only"] {
            let policy = shipped(name);
            let mut drawn = request.clone();
            if check(&policy, &mut drawn).is_err() {
                continue;
            }
            match &drawn {
                AnyRequest::Exec(exec, _, running) => {
                    let rules = policy.exec().expect("an exec passed");
                    if !rules.shell() {
                        prop_assert!(matches!(exec.command, Command::Argv(_)));
                    }
                    if let Some(max) = rules.max_timeout_ms() {
                        prop_assert!(exec.timeout_ms.is_some_and(|t| t <= max));
                    }
                    if let Some(max) = rules.max_output_bytes() {
                        prop_assert!(exec.stdout_cap.is_some_and(|c| c <= max));
                        prop_assert!(exec.stderr_cap.is_some_and(|c| c <= max));
                    }
                    if let Some(max) = rules.max_concurrent() {
                        prop_assert!(*running < max);
                    }
                    let cwd = exec.cwd.as_deref().expect("a cwd is filled in");
                    let cwd = paddock_policy::normalize(cwd).expect("a checked cwd");
                    prop_assert!(!cwd.contains("/../"));
                }
                AnyRequest::Put(path, size)
                | AnyRequest::Get(path, size)
                | AnyRequest::PutTree(path, size)
                | AnyRequest::GetTree(path, size) => {
                    let rules = match drawn {
                        AnyRequest::Put(..) | AnyRequest::PutTree(..) => policy.put(),
                        _ => policy.get(),
                    }.expect("a transfer passed");
                    if matches!(drawn, AnyRequest::PutTree(..) | AnyRequest::GetTree(..)) {
                        prop_assert!(rules.trees(), "a tree passed without `trees = true`");
                    }
                    let path = paddock_policy::normalize(path).expect("a checked path");
                    let under = rules.paths().iter().any(|prefix| {
                        prefix == "/" || path == *prefix || path.starts_with(&format!("{prefix}/"))
                    });
                    prop_assert!(under, "{} is outside {:?}", path, rules.paths());
                    if let (Some(max), Size::Known(n) | Size::AtLeast(n)) = (rules.max_bytes(), size) {
                        prop_assert!(n <= &max);
                    }
                }
                AnyRequest::Signal(signal) => prop_assert!((1..=64).contains(signal)),
                AnyRequest::Status => {}
                AnyRequest::StopAgent => prop_assert!(false, "stop_agent passed"),
                AnyRequest::Fs(write, paths) => {
                    let rules = policy.fs().expect("an fs operation passed");
                    let allowed: Vec<&String> = if *write {
                        rules.write_paths().iter().collect()
                    } else {
                        rules.read_paths().iter().chain(rules.write_paths()).collect()
                    };
                    for path in paths {
                        let path = paddock_policy::normalize(path).expect("a checked path");
                        let under = allowed.iter().any(|prefix| {
                            *prefix == "/" || path == **prefix || path.starts_with(&format!("{prefix}/"))
                        });
                        prop_assert!(under, "{} is outside {:?}", path, allowed);
                    }
                }
            }
        }
    }
}

/// Directories move under the file rules of their direction, and only
/// where the policy says `trees = true`.
#[test]
fn trees_need_their_key_and_obey_the_transfer_rules() {
    let rule = |policy: &Policy, request: &mut Request<'_>| {
        policy.check(request).map_err(|denial| denial.rule.as_str())
    };
    let ci = shipped("ci-runner");
    let known = Size::AtLeast(1024);
    assert_eq!(
        rule(
            &ci,
            &mut Request::PutTree {
                path: "/work/src",
                size: known
            }
        ),
        Ok(())
    );
    assert_eq!(
        rule(
            &ci,
            &mut Request::GetTree {
                path: "/tmp/out",
                size: Size::Unknown
            }
        ),
        Ok(())
    );
    assert_eq!(
        rule(
            &ci,
            &mut Request::PutTree {
                path: "/etc",
                size: known
            }
        ),
        Err("put.path")
    );
    assert_eq!(
        rule(
            &ci,
            &mut Request::GetTree {
                path: "/work",
                size: Size::AtLeast(1 << 40)
            }
        ),
        Err("get.size")
    );
    let read_only = shipped("read-only");
    assert_eq!(
        rule(
            &read_only,
            &mut Request::GetTree {
                path: "/var/log",
                size: known
            }
        ),
        Ok(())
    );
    assert_eq!(
        rule(
            &read_only,
            &mut Request::PutTree {
                path: "/tmp",
                size: known
            }
        ),
        Err("put")
    );
    let without = Policy::from_toml(
        "schema = 1\nname = \"files-only\"\n[put]\npaths = [\"/work\"]\n[get]\npaths = [\"/work\"]\n",
    )
    .expect("a policy");
    assert_eq!(
        rule(
            &without,
            &mut Request::PutTree {
                path: "/work",
                size: known
            }
        ),
        Err("put.trees")
    );
    assert_eq!(
        rule(
            &without,
            &mut Request::GetTree {
                path: "/work",
                size: known
            }
        ),
        Err("get.trees")
    );
    assert_eq!(
        rule(
            &without,
            &mut Request::Put {
                path: "/work/a",
                size: known
            }
        ),
        Ok(())
    );
    for policy in [Policy::deny_all(), shipped("deny-all")] {
        assert_eq!(
            rule(
                &policy,
                &mut Request::PutTree {
                    path: "/work",
                    size: known
                }
            ),
            Err("put")
        );
        assert_eq!(
            rule(
                &policy,
                &mut Request::GetTree {
                    path: "/work",
                    size: known
                }
            ),
            Err("get")
        );
    }
}
