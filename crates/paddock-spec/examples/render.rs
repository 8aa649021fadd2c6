//! Prints the domain XML of a sample sandbox, e.g.
//! `cargo run -p paddock-spec --example render -- --network isolated --channel vsock`,
//! so a rendering can be checked with `virt-xml-validate`.

#[path = "../tests/common/sample.rs"]
mod sample;

use clap::Parser;

/// Print a sample Paddock domain's XML.
#[derive(Debug, Parser)]
struct Args {
    /// Network mode.
    #[arg(long, value_enum, default_value = "nat-filtered")]
    network: sample::Net,
    /// Agent channel.
    #[arg(long, value_enum, default_value = "virtio-serial")]
    channel: sample::Chan,
}

fn main() -> Result<(), paddock_spec::XmlError> {
    let args = Args::parse();
    print!(
        "{}",
        paddock_spec::render_domain(&sample::domain(args.network, args.channel))?
    );
    Ok(())
}
