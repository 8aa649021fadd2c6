//! The task runner must build on a new machine, where libvirt-dev is not
//! installed yet: installing it is one of its tasks. So xtask may link
//! nothing of libvirt (the `virt` crate's `virt-sys` build script needs
//! libvirt-dev) and nothing of the product, which links libvirt; the image
//! manifest crate, which links neither, is the one product crate it shares.
//! And the pure half of the libvirt layer must build without libvirt, so
//! that fuzzing, the render benchmark and the XML tests do.
#![cfg(test)]

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

/// The packages in `package`'s normal and build dependency tree.
fn dependency_tree(package: &str) -> BTreeSet<String> {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let output = Command::new(env!("CARGO"))
        .args(["tree", "--locked", "-p", package])
        .args(["-e", "normal,build", "--prefix", "none", "--format", "{p}"])
        .current_dir(workspace)
        .output()
        .expect("cargo runs");
    assert!(
        output.status.success(),
        "cargo tree -p {package} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

fn is_libvirt(name: &str) -> bool {
    matches!(name, "virt" | "virt-sys")
}

#[test]
fn xtask_links_neither_libvirt_nor_the_product() {
    let tree = dependency_tree("xtask");
    // The tree was read: the runner itself and the manifest crate are in it.
    assert!(
        tree.contains("xtask") && tree.contains("paddock-image"),
        "{tree:?}"
    );
    let forbidden: Vec<&String> = tree
        .iter()
        .filter(|name| {
            is_libvirt(name) || (name.starts_with("paddock") && *name != "paddock-image")
        })
        .collect();
    assert!(
        forbidden.is_empty(),
        "xtask depends on {forbidden:?}: it would not build before its own set-up installs \
         libvirt-dev (`cargo tree -p xtask -e normal,build -i virt-sys` shows the path)"
    );
}

#[test]
fn the_pure_half_of_the_libvirt_layer_links_no_libvirt() {
    let tree = dependency_tree("paddock-spec");
    assert!(tree.contains("quick-xml"), "{tree:?}");
    let linked: Vec<&String> = tree.iter().filter(|name| is_libvirt(name)).collect();
    assert!(
        linked.is_empty(),
        "paddock-spec depends on {linked:?}: fuzzing, the render benchmark and the XML tests \
         would need libvirt-dev"
    );
}
