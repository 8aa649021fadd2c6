//! Paddock: real virtual machines as sandboxes for untrusted code.
//!
//! This is the crate an orchestrator depends on. Today it offers a single
//! [`Sandbox`]: a VM booted from Paddock's [`GuestImage`] through libvirt,
//! with the guest agent connected, that can be snapshotted and reverted. The
//! pre-warmed pool builds on it.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use paddock::{GuestImage, Sandbox, SandboxConfig};
//! use paddock::agent::Execute;
//!
//! let libvirt = paddock::libvirt::Libvirt::open("qemu:///system").await?;
//! let image = GuestImage::load("target/paddock-image/current.json".as_ref())?;
//! let sandbox = Sandbox::boot(&libvirt, &image, SandboxConfig::new("my-sandbox")).await?;
//! let out = sandbox.client().exec_collect(Execute::argv(["uname", "-r"])).await?;
//! println!("{}", String::from_utf8_lossy(&out.stdout));
//! sandbox.destroy().await?;
//! # Ok(())
//! # }
//! ```

pub mod image;
pub mod sandbox;

pub use image::{GuestImage, ImageError};
pub use sandbox::{ChannelConfig, DEFAULT_STATE_ROOT, Sandbox, SandboxConfig, SandboxError};

/// The host agent client, re-exported.
pub use paddock_agent_client as agent;
/// The libvirt layer, re-exported.
pub use paddock_libvirt as libvirt;
