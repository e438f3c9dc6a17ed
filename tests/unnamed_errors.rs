//! tools/unnamed-errors (which error messages no test names) on a hand-made tree: which of its
//! messages count as named, by which rule, and which are left; a bad --root is exit status 2.

mod python_tool;

use std::path::Path;

fn run(args: &[&str]) -> (i32, String) {
    python_tool::run("unnamed-errors", args)
}

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

#[test]
fn names_the_messages_no_test_names() {
    let dir = std::env::temp_dir().join(format!("unnamed_errors_{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    // line by line: which rule names each message, or why it is left
    write(
        &dir.join("src/a.rs"),
        r#"fn f(x: u32) -> Result<()> {
    if x == 0 { bail!("the value {x} is far too small for it"); } // a test's 13-character literal in it
    if x == 1 { bail!("a message that no test names at all"); } // left
    ensure!(x != 2, "ensure names {x}: a second unnamed one"); // left (after ensure!'s condition)
    let e = anyhow!("short {x}"); // no piece of 8 characters: not counted
    if x == 3 { bail!("a wholly named message, every word"); } // named whole, in the test module
    if x == 4 { bail!("split across \
                       a line continuation, unnamed"); } // left, the two lines joined
    if x == 5 { bail!("the prefix of all things {x}") } // a 16-character run of it in a comment
    Ok(())
}

#[cfg(test)]
mod tests {
    fn t() {
        bail!("inside a test module, never counted");
        assert!(e.contains("a wholly named message, every word"));
    }
}
"#,
    );
    write(
        &dir.join("src/gpu/launch.rs"),
        "fn g() { bail!(\"a launcher's failure that nothing names\"); }\n",
    );
    write(
        &dir.join("tests/t.rs"),
        "// the prefix of all tensors\nfn t() { assert!(e.contains(\"far too small\")); }\n",
    );
    let root = dir.to_str().unwrap();

    let (rc, out) = run(&["--root", root]);
    assert_eq!(rc, 0, "{out}");
    let want = "src/a.rs:3: 'a message that no test names at all'\n\
                src/a.rs:4: 'ensure names {x}: a second unnamed one'\n\
                src/a.rs:7: 'split across a line continuation, unnamed'\n\
                3 of 6 messages named by no test\n";
    assert_eq!(out, want);
    // --all: the GPU launchers too
    let (rc, out) = run(&["--root", root, "--all"]);
    assert_eq!(rc, 0, "{out}");
    let want = "src/a.rs:3: 'a message that no test names at all'\n\
                src/a.rs:4: 'ensure names {x}: a second unnamed one'\n\
                src/a.rs:7: 'split across a line continuation, unnamed'\n\
                src/gpu/launch.rs:1: \"a launcher's failure that nothing names\"\n\
                4 of 7 messages named by no test\n";
    assert_eq!(out, want);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn a_root_without_sources_is_a_usage_error() {
    let (rc, out) = run(&["--root", "/nonexistent/tree"]);
    assert_eq!(rc, 2, "{out}");
    assert!(
        out.contains("--root /nonexistent/tree: no src/ folder there"),
        "{out}"
    );
}
