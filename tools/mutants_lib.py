"""What tools/kernel-mutants and tools/rust-mutants share: the copy of the tree a sweep mutates,
a mutation's edit, the test executables cargo builds, and the summary of its results (TSV: file,
place, old, new, verdict, seconds, the changed line)."""
import json
import os
import shutil
import subprocess


# The folders of dest that copy_tree keeps to root's tracked files (no build output lives there).
SOURCE_FOLDERS = ("src", "tests", "kernels", "examples", "tools")


def copy_tree(root, dest):
    """The files git tracks under root (as they are in the working tree) under dest; a file
    already there with the same bytes is left as it is (so an incremental build stays valid).
    A file of SOURCE_FOLDERS that git no longer tracks (moved or deleted since the last copy) is
    removed: src/gpu/model.rs beside src/gpu/model/mod.rs does not build."""
    files = subprocess.run(["git", "ls-files", "-z"], cwd=root, capture_output=True,
                           check=True).stdout.decode().split("\0")
    tracked = set(filter(None, files))
    for f in tracked:
        src, dst = os.path.join(root, f), os.path.join(dest, f)
        if os.path.isfile(src):
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            if not os.path.exists(dst) or open(src, "rb").read() != open(dst, "rb").read():
                shutil.copy2(src, dst)
    for folder in SOURCE_FOLDERS:
        for here, _, names in os.walk(os.path.join(dest, folder)):
            for name in names:
                rel = os.path.relpath(os.path.join(here, name), dest)
                if rel not in tracked and os.path.exists(os.path.join(dest, rel)):
                    os.remove(os.path.join(dest, rel))


def mutate(text, site):
    """The text with the mutation site = (line index, column, old, new) applied, and the changed
    line as shown: old == the whole line deletes it."""
    i, col, old, new = site
    lines = text.split("\n")
    if old == lines[i]:
        lines[i] = ""
        shown = "deleted: " + old.strip()
    else:
        assert lines[i][col:col + len(old)] == old, (site, lines[i])
        lines[i] = lines[i][:col] + new + lines[i][col + len(old):]
        shown = lines[i].strip()
    return "\n".join(lines), shown


def cargo_executables(args, cwd, env=None):
    """Runs `cargo test --no-run --message-format=json ARGS` in cwd: ({target name: executable},
    None), or (None, cargo's stderr) when it fails."""
    out = subprocess.run(["cargo", "test", "--no-run", "--message-format=json"] + args,
                         cwd=cwd, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        return None, out.stderr
    exes = {}
    for line in out.stdout.splitlines():
        msg = json.loads(line)
        if msg.get("reason") == "compiler-artifact" and msg.get("executable"):
            exes[msg["target"]["name"]] = msg["executable"]
    return exes, None


def summary(path, suffix=""):
    """Prints the caught, survived and unviable mutants of each file, then the survivors."""
    rows = [line.rstrip("\n").split("\t") for line in open(path)]
    by_file = {}
    for r in rows:
        c, s, u = by_file.get(r[0], (0, 0, 0))
        by_file[r[0]] = (c + r[4].startswith("CAUGHT"), s + (r[4] == "SURVIVED"),
                         u + (r[4] == "UNVIABLE"))
    print("\nfile | caught | survived | unviable")
    for f, (c, s, u) in sorted(by_file.items()):
        print(f"{f} | {c} | {s} | {u}")
    print("\nsurvivors:")
    for r in rows:
        if r[4] == "SURVIVED":
            print(f"  {r[0]}{suffix}:{r[1].split(':')[0]}: {r[6]}")
