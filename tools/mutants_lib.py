"""What tools/kernel-mutants and tools/rust-mutants share: the copy of the tree a sweep mutates,
and the summary of its results (TSV: file, place, old, new, verdict, seconds, the changed line)."""
import os
import shutil
import subprocess


def copy_tree(root, dest):
    """The files git tracks under root (as they are in the working tree) under dest; a file
    already there with the same bytes is left as it is (so an incremental build stays valid)."""
    files = subprocess.run(["git", "ls-files", "-z"], cwd=root, capture_output=True,
                           check=True).stdout.decode().split("\0")
    for f in filter(None, files):
        src, dst = os.path.join(root, f), os.path.join(dest, f)
        if os.path.isfile(src):
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            if not os.path.exists(dst) or open(src, "rb").read() != open(dst, "rb").read():
                shutil.copy2(src, dst)


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
