//! What the fuzz properties share (proptest, run by `cargo test`).

use proptest::test_runner::Config;

/// Cases per property: `ALCOR_FUZZ_CASES`, 2048 by default.
pub fn config() -> Config {
    let cases = std::env::var("ALCOR_FUZZ_CASES")
        .ok()
        .and_then(|cases| cases.parse().ok())
        .unwrap_or(2048);
    Config {
        cases,
        ..Config::default()
    }
}
