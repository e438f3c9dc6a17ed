//! tools/sass-stats (what ptxas makes of the kernels) on a hand-made cuobjdump listing: the
//! functions, their instruction counts and their loops (backward branches) with the counts of
//! the instructions that matter in a hot loop, computed by hand; bad arguments are exit status 2.
//! (Compiling the kernels needs cuobjdump, which is not among the pinned packages: not here.)

mod python_tool;

fn run(args: &[&str]) -> (i32, String) {
    python_tool::run("sass-stats", args)
}

/// One SASS line as cuobjdump -sass prints it (the encoding comment and its second line included).
fn line(addr: u32, text: &str) -> String {
    format!(
        "        /*{addr:04x}*/                   {text} ;    /* 0x0000000000000000 */\n\
         {:>100}\n",
        "/* 0x000fe20000000000 */"
    )
}

#[test]
fn counts_kernels_and_their_loops() {
    // k_mma: 12 instructions; the loop 0x0020..0x0090 (8 instructions: the branch at 0x0090 goes
    // back to 0x0020) holds 2 HMMA, 1 MUFU, 2 LDG of which 1 is 128-bit, 1 LDGSTS, 1 WARPSYNC and
    // its branch; the forward branch at 0x00a0 is no loop. k_copy: 4 instructions, a loop of 3.
    let mut sass = String::from("\n\tcode for sm_90\n\t.target\tsm_90\n\n\t\tFunction : k_mma\n");
    sass += "\t.headerflags\t@\"EF_CUDA_SM90 EF_CUDA_VIRTUAL_SM(EF_CUDA_SM80)\"\n";
    for (i, text) in [
        "LDC R1, c[0x0][0x28]",
        "S2R R0, SR_TID.X",
        "HMMA.16816.F32.BF16 R4, R8, R12, R4",
        "LDG.E.128 R8, desc[UR4][R2.64]",
        "LDG.E R9, desc[UR4][R2.64]",
        "MUFU.EX2 R2, R3",
        "WARPSYNC.ALL",
        "LDGSTS.E.BYPASS.128 [R1], desc[UR4][R2.64]",
        "HMMA.16816.F32.BF16 R4, R8, R12, R4",
        "@P0 BRA 0x20",
        "@!P1 BRA 0xb0",
        "EXIT",
    ]
    .iter()
    .enumerate()
    {
        sass += &line(16 * i as u32, text);
    }
    sass += "\t\t..........\n\n\n\t\tFunction : k_copy\n";
    for (i, text) in [
        "S2R R0, SR_TID.X",
        "STG.E.128 desc[UR4][R2.64], R4",
        "FADD R0, R0, 1",
        "BRA 0x10",
    ]
    .iter()
    .enumerate()
    {
        sass += &line(16 * i as u32, text);
    }
    let dir = std::env::temp_dir().join(format!("sass_stats_{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("listing.sass");
    std::fs::write(&file, sass).unwrap();
    let file = file.to_str().unwrap();

    let (rc, out) = run(&["--sass", file, "--min-loop", "3"]);
    assert_eq!(rc, 0, "{out}");
    let want = "k_copy (listing.sass, sm_90): 4 instructions\n  \
                loop 0x0010-0x0030: 3 instructions: HMMA 0, MUFU 0, LDG 0 (0 x128), STG 1 (1 x128), \
                LDGSTS 0, BRA 1, WARPSYNC 0\n\
                k_mma (listing.sass, sm_90): 12 instructions\n  \
                loop 0x0020-0x0090: 8 instructions: HMMA 2, MUFU 1, LDG 2 (1 x128), STG 0 (0 x128), \
                LDGSTS 1, BRA 1, WARPSYNC 1\n";
    assert_eq!(out, want);

    // --kernels filters, --min-loop hides the shorter loops
    let (rc, out) = run(&["--sass", file, "--kernels", "mma", "--min-loop", "9"]);
    assert_eq!(rc, 0, "{out}");
    assert_eq!(out, "k_mma (listing.sass, sm_90): 12 instructions\n");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn bad_arguments_are_usage_errors() {
    for (args, says) in [
        (
            &["--min-loop", "0"][..],
            "--min-loop 0: expected at least 1",
        ),
        (&["--arch", "sm90"][..], "--arch 'sm90': expected sm_NN"),
        (&["--kernels", "("][..], "--kernels '('"),
        (&["--sass", "/nonexistent/listing"][..], "--sass:"),
        (&["no_such_kernel"][..], "no kernel file 'no_such_kernel'"),
    ] {
        let (rc, out) = run(args);
        assert_eq!(rc, 2, "{args:?}: {out}");
        assert!(out.contains(says), "{args:?}: {out}");
    }
}
