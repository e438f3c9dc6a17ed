//! Runs one of the project's Python tools the way a user does (`python3 tools/NAME ARGS`), for the
//! tests of its output and exit status (`mod python_tool;` in each).

use std::process::Command;

/// The crate root: `CARGO_MANIFEST_DIR` at run time (cargo, or .gpu/on-gpu.sh on the GPU machine,
/// where the compile-time path does not exist), else the one compiled in.
pub fn root() -> String {
    std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").into())
}

/// `python3 tools/<tool> args`: its exit status (-1 if a signal ended it) and its stdout followed
/// by its stderr.
pub fn run(tool: &str, args: &[&str]) -> (i32, String) {
    let out = Command::new("python3")
        .arg(format!("{}/tools/{tool}", root()))
        .args(args)
        .output()
        .expect("python3 runs");
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code().unwrap_or(-1), text)
}
