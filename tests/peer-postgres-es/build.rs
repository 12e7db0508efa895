//! Reads the resolved postgres-es version from this crate's Cargo.lock so the benchmark reports
//! the version it was actually built against (exported as `POSTGRES_ES_VERSION`).

use std::path::PathBuf;

fn main() {
    let dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default());
    let lock = dir.join("Cargo.lock");
    println!("cargo:rerun-if-changed={}", lock.display());
    let text = std::fs::read_to_string(&lock).unwrap_or_default();
    let version = locked_version(&text, "postgres-es").unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=POSTGRES_ES_VERSION={version}");
}

/// The `version` of the `[[package]]` entry named `name` in a Cargo.lock.
fn locked_version(lock: &str, name: &str) -> Option<String> {
    let wanted = format!("name = \"{name}\"");
    let mut lines = lock.lines().map(str::trim);
    while let Some(line) = lines.next() {
        if line == wanted {
            let next = lines.next()?;
            return next.strip_prefix("version = \"")?.strip_suffix('"').map(str::to_owned);
        }
    }
    None
}
