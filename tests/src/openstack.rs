//! The real, unmodified `openstack` CLI (python-openstackclient), which
//! `cargo xtask setup` installs in a virtualenv at [`venv_dir`].

use std::path::{Path, PathBuf};

/// Where `cargo xtask setup` makes the virtualenv: `openstack-venv` in the
/// workspace's target directory (`CARGO_TARGET_DIR` if set, as cargo
/// does). A virtualenv works only where it was made; setup remakes it when
/// the workspace moves.
pub fn venv_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .parent()
                .map(|root| root.join("target"))
                .unwrap_or_else(|| PathBuf::from("target"))
        })
        .join("openstack-venv")
}

/// True when the CLI is installed. Outside CI a missing virtualenv skips
/// the test loudly; in CI (env `CI` set) it is a failure.
pub fn available(test: &str) -> bool {
    let openstack = venv_dir().join("bin/openstack");
    if openstack.exists() {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "{test}: {} is missing in CI: `cargo xtask setup` installs it",
        openstack.display()
    );
    eprintln!(
        "\n*** SKIPPED {test}: no {} (run `cargo xtask setup`) ***\n",
        openstack.display()
    );
    false
}
