//! What a request policy costs per request: the check the agent client's
//! gate runs before every execution and transfer of a lease whose pool
//! names a policy (`policies/`). Pure: builds without libvirt
//! (`cargo bench -p paddock-benches --no-default-features --bench policy`).
//!
//! Cases: an allowed execution under each shipped policy (the common path:
//! every rule is checked, limits are filled in), a denied one (the first
//! rule refuses), and an allowed upload path check.

// `criterion_group!` and `criterion_main!` generate public items without docs.
#![allow(missing_docs)]

use std::collections::BTreeMap;
use std::hint::black_box;
use std::path::PathBuf;

use criterion::{Criterion, criterion_group, criterion_main};
use paddock_policy::{Policy, Request, Size};
use paddock_proto::Execute;

fn shipped(name: &str) -> Policy {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../policies")
        .join(format!("{name}.toml"));
    Policy::load(&path).unwrap_or_else(|err| panic!("{}: {err}", path.display()))
}

fn check_exec(policy: &Policy, template: &Execute) -> bool {
    // A fresh request each time, as the client sends: the check may fill
    // limits in.
    let mut exec = template.clone();
    policy
        .check(&mut Request::Exec {
            request: &mut exec,
            timeout_defaulted: true,
            running: 0,
        })
        .is_ok()
}

fn policy(c: &mut Criterion) {
    let mut group = c.benchmark_group("policy");
    let ci = shipped("ci-runner");
    let python = shipped("python-interpreter");
    let read_only = shipped("read-only");

    let mut make = Execute::argv(["/usr/bin/make", "-j2", "test"]);
    make.env = BTreeMap::from([
        ("CI".to_owned(), "1".to_owned()),
        ("CARGO_TERM_COLOR".to_owned(), "never".to_owned()),
        ("LANG".to_owned(), "C.UTF-8".to_owned()),
    ]);
    make.cwd = Some("/work/repo".to_owned());
    make.timeout_ms = Some(600_000);
    assert!(check_exec(&ci, &make));
    group.bench_function("exec_allowed/ci-runner", |b| {
        b.iter(|| check_exec(black_box(&ci), black_box(&make)));
    });

    let mut run = Execute::argv(["python3", "/sandbox/main.py"]);
    run.env = BTreeMap::from([("PYTHONUNBUFFERED".to_owned(), "1".to_owned())]);
    run.timeout_ms = Some(600_000);
    assert!(check_exec(&python, &run));
    group.bench_function("exec_allowed/python-interpreter", |b| {
        b.iter(|| check_exec(black_box(&python), black_box(&run)));
    });

    let list = Execute::argv(["ls", "-la", "/var/log"]);
    assert!(check_exec(&read_only, &list));
    group.bench_function("exec_allowed/read-only", |b| {
        b.iter(|| check_exec(black_box(&read_only), black_box(&list)));
    });

    let remove = Execute::argv(["/bin/rm", "-rf", "/"]);
    assert!(!check_exec(&read_only, &remove));
    group.bench_function("exec_denied/read-only", |b| {
        b.iter(|| check_exec(black_box(&read_only), black_box(&remove)));
    });

    group.bench_function("put_allowed/ci-runner", |b| {
        b.iter(|| {
            ci.check(&mut Request::Put {
                path: black_box("/work/repo/target/report.xml"),
                size: Size::Known(black_box(1 << 20)),
            })
            .is_ok()
        });
    });
    group.finish();
}

criterion_group!(benches, policy);
criterion_main!(benches);
