//! `paddock policy check`: the shipped policies pass and say what they
//! allow; a bad file is refused naming its key, with exit status 1.
#![cfg(test)]

use std::path::Path;
use std::process::Command;

fn check(files: &[&Path], json: bool) -> anyhow::Result<(i32, String)> {
    let mut command = Command::new(env!("CARGO_BIN_EXE_paddock"));
    if json {
        command.arg("--json");
    }
    let output = command.args(["policy", "check"]).args(files).output()?;
    let status = output.status.code().unwrap_or(-1);
    Ok((status, String::from_utf8_lossy(&output.stdout).into_owned()))
}

#[test]
fn shipped_policies_pass_and_a_bad_one_is_named() -> anyhow::Result<()> {
    let policies = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../policies");
    let python = policies.join("python-interpreter.toml");
    let deny = policies.join("deny-all.toml");
    let (status, out) = check(&[&python, &deny], false)?;
    assert_eq!(status, 0, "{out}");
    assert!(
        out.contains("python-interpreter allows exec (no shell"),
        "{out}"
    );
    assert!(out.contains("deny-all allows nothing"), "{out}");
    // Every kind of request a policy can allow is in its summary.
    let ci = policies.join("ci-runner.toml");
    let read_only = policies.join("read-only.toml");
    let (status, out) = check(&[&ci, &read_only], false)?;
    assert_eq!(status, 0, "{out}");
    let ci_line = out
        .lines()
        .find(|l| l.contains("ci-runner allows"))
        .unwrap_or_default();
    for part in [
        "exec (shell, terminal,",
        "put (files and trees) under [\"/work\", \"/tmp\"]",
        "fs reads under",
        "status",
        "signals INT KILL TERM",
    ] {
        assert!(ci_line.contains(part), "{part}: {out}");
    }
    let read_only_line = out
        .lines()
        .find(|l| l.contains("read-only allows"))
        .unwrap_or_default();
    assert!(read_only_line.contains("no terminal"), "{out}");
    assert!(
        read_only_line.contains("fs reads under [\"/\"], no changes"),
        "{out}"
    );
    assert!(!read_only_line.contains("put"), "{out}");

    let dir = tempfile::tempdir()?;
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "schema = 1\nname = \"bad\"\n[put]\npaths = [\"tmp\"]\n",
    )?;
    let (status, out) = check(&[&python, &bad], false)?;
    assert_eq!(status, 1, "{out}");
    assert!(
        out.contains("bad.toml: refused") && out.contains("put.paths[0]"),
        "{out}"
    );

    let (status, out) = check(&[&bad], true)?;
    assert_eq!(status, 1);
    let verdict: serde_json::Value = serde_json::from_str(out.trim())?;
    assert_eq!(verdict["ok"], false);
    assert!(
        verdict["error"]
            .as_str()
            .is_some_and(|e| e.contains("is not absolute")),
        "{verdict}"
    );
    Ok(())
}
