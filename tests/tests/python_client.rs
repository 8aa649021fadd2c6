//! The Python client of the HTTP API (`tests/python/paddock_client.py`) and
//! its e2e script, checked offline against their fake daemon
//! (`tests/python/test_client_offline.py`), with the venv's Python that
//! `cargo xtask test` passes as `PADDOCK_PYTHON`. Skips without it.
#![cfg(test)]

use std::path::Path;
use std::process::Command;

#[test]
fn the_python_client_passes_its_offline_tests() -> anyhow::Result<()> {
    let test = "the_python_client_passes_its_offline_tests";
    let Some(python) = std::env::var_os("PADDOCK_PYTHON") else {
        eprintln!(
            "SKIPPED {test}: set PADDOCK_PYTHON to a python with httpx \
             (cargo xtask test does; cargo xtask api-test-tools makes one)"
        );
        return Ok(());
    };
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("python");
    // Run from the script's directory, so that it imports the client and
    // the fake next to it.
    let output = Command::new(&python)
        .args(["-m", "unittest", "-v", "test_client_offline.py"])
        .current_dir(&dir)
        // No __pycache__ in the source tree.
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "{} -m unittest test_client_offline.py (in {}) failed with {}:\n{stdout}\n{stderr}",
        Path::new(&python).display(),
        dir.display(),
        output.status
    );
    // unittest reports on stderr; it must have run the tests, not none.
    assert!(stderr.contains("\nOK"), "{stderr}");
    assert!(!stderr.contains("Ran 0 tests"), "{stderr}");
    Ok(())
}
